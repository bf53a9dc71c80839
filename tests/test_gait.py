"""``benchmarks/gait.py``: replayed HalfCheetah episodes are reported per model, with paths free of the machine."""

import json
import os
import sys

from stable_baselines3 import SAC

from sb3_m3po import M3PO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import gait  # noqa: E402  (a script of benchmarks/)


def test_model_paths_lose_the_machine_prefix():
    text = "--models m3po=/some/where/worktree/benchmarks/runs/mujoco/a.zip sac=benchmarks/runs/b.zip"
    assert gait.from_repository(text) == "--models m3po=benchmarks/runs/mujoco/a.zip sac=benchmarks/runs/b.zip"


def test_each_model_gets_one_row_per_episode_with_its_gait_and_values(tmp_path):
    paths = {}
    for name, model in {
        "m3po": M3PO("MlpPolicy", "HalfCheetah-v5", n_steps=8, seed=0, device="cpu"),
        "sac": SAC("MlpPolicy", "HalfCheetah-v5", seed=0, device="cpu"),
    }.items():
        model.save(tmp_path / name)
        paths[name] = str(tmp_path / f"{name}.zip")
    out = tmp_path / "out"
    assert gait.main(["--models", *(f"{k}={v}" for k, v in paths.items()), "--episodes", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "gait.json").read_text())["rows"]
    assert [(r["model"], r["env_seed"]) for r in rows] == [("m3po", 100), ("sac", 100)]
    for row in rows:
        assert 0.0 <= row["flipped_share"] <= 1.0
        assert (row["first_flipped_step"] is None) == (row["flipped_share"] == 0.0)
        assert all(abs(row[k]) < 1e4 for k in ("return", "mean_x_velocity", "q_mean", "discounted_return_mean"))
    assert "| m3po" in (out / "gait.md").read_text()
