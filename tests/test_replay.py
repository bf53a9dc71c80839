"""``benchmarks/replay.py``: a saved model replayed with other planner budgets on the same episodes."""

import dataclasses
import os
import sys

import numpy as np
import pandas as pd
import pytest
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_m3po import M3PO
from sb3_m3po.envs import make_env
from sb3_m3po.m3po.config import PlannerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import replay  # noqa: E402  (a script of benchmarks/)


def test_budget_names_scale_samples_elites_and_prior_trajectories():
    own = PlannerConfig()
    assert replay.budget("own", own) is own
    assert replay.budget("128x3", own) == own, "128x3 is the shipped planner"
    paper = replay.budget("512x6", own)
    assert (paper.num_samples, paper.num_elites, paper.num_prior_trajectories, paper.iterations) == (512, 64, 24, 6)
    assert paper.horizon == own.horizon and paper.temperature == own.temperature
    with pytest.raises(SystemExit, match="budget '512' is neither"):
        replay.budget("512", own)


def test_own_budget_replays_the_models_evaluation_and_rows_accumulate(tiny, tmp_path):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny).learn(64)
    model.save(tmp_path / "model.zip")
    argv = ["Pendulum-v1", str(tmp_path / "model.zip"), "--episodes", "2", "--out", str(tmp_path / "out")]
    replay.main([*argv, "--budgets", "own", "32x2"])
    replay.main([*argv, "--budgets", "own"])
    table = pd.read_csv(tmp_path / "out" / "replay.csv")
    assert table.budget.tolist() == ["own", "32x2", "own"], "each call appends one row per budget"
    assert table.samples.tolist() == [model.policy.planner_config.num_samples, 32, model.policy.planner_config.num_samples]
    assert table.returns[0] == table.returns[2], "the same episodes give the same returns"
    env = DummyVecEnv([lambda i=i: make_env("Pendulum-v1", seed=100 + i) for i in range(2)])
    loaded = M3PO.load(tmp_path / "model.zip", env=env)
    env.seed(100)  # after load: loading seeds the env with the model's seed
    returns, _ = evaluate_policy(loaded, env, 2, True, return_episode_rewards=True)
    assert table.mean_return[0] == pytest.approx(np.mean(returns), rel=1e-3), "'own' is the model's own evaluation"
    assert "| 32x2" in (tmp_path / "out" / "summary.md").read_text()


def test_a_run_folder_without_a_final_model_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no final model under"):
        replay.main(["Pendulum-v1", str(tmp_path)])


def test_set_planner_swaps_the_budget_and_refuses_another_horizon(tiny):
    policy = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny).policy
    bigger = replay.budget("32x2", policy.planner_config)
    policy.set_planner(bigger)
    assert policy.planner.config is bigger and policy.planner_config is bigger
    with pytest.raises(AssertionError, match="horizon is fixed at 3"):
        policy.set_planner(dataclasses.replace(bigger, horizon=5))
