"""rl-zoo3 entry points end to end on tiny budgets (real envs, real files)."""

import glob
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import yaml

from sb3_m3po.common.hyperparams import shipped_entry
from sb3_m3po.zoo.train import with_shipped_config

TINY_PARAMS = [
    "-params",
    "n_envs:2",  # the shipped configuration runs 8; 2 keeps the vectorised path and the budgets small
    "n_steps:16",
    "batch_size:16",
    "n_epochs:2",
    "planner_kwargs:dict(num_samples=16, num_elites=4, num_prior_trajectories=2, iterations=2)",
    "world_model_kwargs:dict(batch_size=8, gradient_steps=4, learning_starts=32)",
]


def run_module(module: str, *args: str, cwd: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", **env_vars}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_shipped_hyperparameters_cover_the_benchmark_ids_and_families(capsys):
    for algo in ["m3po", "ppo", "sac"]:
        for env_id in ["Pendulum-v1", "dm_control/cartpole-swingup-v0", "metaworld/reach-v3", "Hopper-v5"]:
            assert shipped_entry(algo, env_id) is not None, (algo, env_id)
    for algo in ["tqc", "crossq"]:
        assert shipped_entry(algo, "Walker2d-v5")[0] == "Walker2d-v5"
        assert shipped_entry(algo, "Pendulum-v1") is None  # rl-zoo3's own file applies
    name, entry = shipped_entry("sac", "dm_control/acrobot-swingup-v0")
    assert name == "dm_control/*" and "DMCWrapper" in str(entry["env_wrapper"])
    assert shipped_entry("m3po", "MountainCarContinuous-v0")[0] == "default"
    assert shipped_entry("ppo", "MountainCarContinuous-v0") is None  # rl-zoo3's own file applies
    args, temporary = with_shipped_config(["--algo", "m3po", "--env", "Pendulum-v1"])
    assert "--conf-file" in args and temporary is None  # the shipped file itself, nothing to delete
    args, temporary = with_shipped_config(["--algo", "m3po", "--env", "dm_control/acrobot-swingup-v0"])
    assert args[-1] == temporary and os.path.isfile(temporary)
    with open(temporary) as f:
        assert list(yaml.safe_load(f)) == ["dm_control/acrobot-swingup-v0"]
    os.remove(temporary)
    assert "using its 'dm_control/*' entry" in capsys.readouterr().out
    assert with_shipped_config(["--algo", "m3po", "-conf", "mine.yml"]) == (["--algo", "m3po", "-conf", "mine.yml"], None)


def test_make_env_takes_the_action_repeat_of_the_shipped_entry():
    from sb3_m3po.envs import ActionRepeat, make_env

    def repeats(env):
        while isinstance(env, gym.Wrapper):
            if isinstance(env, ActionRepeat):
                return env.repeat
            env = env.env
        return 1

    assert repeats(make_env("dm_control/acrobot-swingup-v0")) == 2  # the dm_control/* entry's DMCWrapper
    assert repeats(make_env("dm_control/acrobot-swingup-v0", action_repeat=1)) == 1
    assert repeats(make_env("Hopper-v5")) == 1


def test_converter_gives_valid_constructor_arguments(tiny):
    import optuna

    from sb3_m3po import M3PO
    from sb3_m3po.zoo import sample_m3po_params

    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = sample_m3po_params(trial, n_actions=1, n_envs=1, additional_args={})
    planner = params["planner_kwargs"]
    assert planner["num_samples"] == 2 ** trial.params["num_samples_pow"]
    assert 2 <= planner["num_elites"] <= planner["num_samples"] and params["n_steps"] == 2 ** trial.params["n_steps_pow"]
    assert params["bonus_kwargs"]["coef"] == trial.params["bonus_coef"]
    # the sampled arguments build a model (the configs check their own ranges)
    model = M3PO("MlpPolicy", "Pendulum-v1", policy_kwargs=tiny["policy_kwargs"], **params)
    assert model.planner_config.num_samples == planner["num_samples"]


@pytest.mark.slow
def test_train_enjoy_and_resume_m3po_on_pendulum(tmp_path):
    log = str(tmp_path / "logs")
    out = run_module(
        "sb3_m3po.zoo.train",
        "--algo",
        "m3po",
        "--env",
        "Pendulum-v1",
        "-n",
        "96",
        "-f",
        log,
        "--eval-freq",
        "64",
        "--eval-episodes",
        "1",
        "--seed",
        "0",
        "--save-replay-buffer",
        *TINY_PARAMS,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = os.path.join(log, "m3po", "Pendulum-v1_1")
    assert os.path.exists(os.path.join(run_dir, "Pendulum-v1.zip"))
    assert os.path.exists(os.path.join(run_dir, "evaluations.npz"))
    assert os.path.exists(os.path.join(run_dir, "Pendulum-v1", "config.yml"))
    assert os.path.getsize(os.path.join(run_dir, "learning_curve.png")) > 0
    enjoy = run_module(
        "sb3_m3po.zoo.enjoy", "--algo", "m3po", "--env", "Pendulum-v1", "-f", log, "-n", "20", "--no-render", cwd=str(tmp_path)
    )
    assert enjoy.returncode == 0, enjoy.stderr[-3000:]
    resumed = run_module(
        "sb3_m3po.zoo.train",
        "--algo",
        "m3po",
        "--env",
        "Pendulum-v1",
        "-n",
        "64",
        "-f",
        log,
        "-i",
        os.path.join(run_dir, "Pendulum-v1.zip"),
        "--save-replay-buffer",
        *TINY_PARAMS,
        cwd=str(tmp_path),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from sb3_m3po import M3PO

    resumed_dir = os.path.join(log, "m3po", "Pendulum-v1_2")
    model = M3PO.load(os.path.join(resumed_dir, "Pendulum-v1.zip"))
    assert model.num_timesteps == 96 + 64, "resuming with -i continues the step count"
    # -i found the first run's replay_buffer.pkl, so the world model's replay holds both runs' steps
    model.load_replay_buffer(os.path.join(resumed_dir, "replay_buffer.pkl"))
    assert model.replay_buffer.size() == 96 + 64
    assert np.isfinite(model.policy.log_std.detach().numpy()).all()


@pytest.mark.slow
def test_train_m3po_on_an_unlisted_dm_control_id_uses_the_family_entry(tmp_path):
    log, scratch = str(tmp_path / "logs"), tmp_path / "tmp"
    scratch.mkdir()
    out = run_module(
        "sb3_m3po.zoo.train",
        "--algo",
        "m3po",
        "--env",
        "dm_control/acrobot-swingup-v0",
        "-n",
        "64",
        "-f",
        log,
        "--eval-freq",
        "-1",
        *TINY_PARAMS,
        cwd=str(tmp_path),
        TMPDIR=str(scratch),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no entry for dm_control/acrobot-swingup-v0; using its 'dm_control/*' entry" in out.stdout
    models = glob.glob(os.path.join(log, "m3po", "**", "*.zip"), recursive=True)
    assert len(models) == 1 and "acrobot-swingup" in models[0]
    with open(glob.glob(os.path.join(log, "m3po", "**", "config.yml"), recursive=True)[0]) as f:
        assert "DMCWrapper" in f.read(), "the family's action-repeat wrapper was used"
    assert not list(scratch.glob("*.yml")), "the temporary hyperparameter file was left behind"


@pytest.mark.slow
def test_train_m3po_on_a_gymnasium_mujoco_id_gets_the_seed_phase_and_bc_weight_of_its_entry(tmp_path):
    from sb3_m3po import M3PO

    log = str(tmp_path / "logs")
    # TINY_PARAMS without its world_model_kwargs, which would replace the entry's whole dict
    params = [p for p in TINY_PARAMS if not p.startswith("world_model_kwargs:")]
    out = run_module(
        "sb3_m3po.zoo.train", "--algo", "m3po", "--env", "Hopper-v5", "-n", "64", "-f", log, "--eval-freq", "-1", *params,
        cwd=str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(glob.glob(os.path.join(log, "m3po", "**", "config.yml"), recursive=True)[0]) as f:
        assert "seed_steps" in f.read(), "the saved configuration names the entry's seed phase"
    model = M3PO.load(glob.glob(os.path.join(log, "m3po", "**", "Hopper-v5.zip"), recursive=True)[0])
    assert model.world_model_config.seed_steps == 5000
    assert model.prior_config.bc_coef == 0.4, "Hopper-v5's entry ships TD3+BC's constraint"


@pytest.mark.slow
def test_resumable_checkpoints_keep_the_latest_and_resume_with_its_replay(tmp_path):
    from sb3_m3po import M3PO
    from sb3_m3po.zoo.checkpoints import latest_checkpoint

    log = str(tmp_path / "logs")
    common = ["--algo", "m3po", "--env", "Pendulum-v1", "-f", log, "--eval-freq", "64", "--eval-episodes", "1"]
    first = run_module("sb3_m3po.zoo.train", *common, "-n", "128", "--checkpoint-freq", "64", *TINY_PARAMS, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = os.path.join(log, "m3po", "Pendulum-v1_1", "checkpoints")
    assert sorted(os.listdir(checkpoints)) == ["step_128"], "only the latest checkpoint is kept"
    os.makedirs(os.path.join(checkpoints, "step_192"))  # a save cut off before it completed
    steps, model_path = latest_checkpoint(checkpoints)
    assert steps == 128 and model_path == os.path.join(checkpoints, "step_128", "model.zip")
    resumed = run_module(
        "sb3_m3po.zoo.train", *common, "-n", "64", "-i", model_path, "--save-replay-buffer", *TINY_PARAMS, cwd=str(tmp_path)
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_dir = os.path.join(log, "m3po", "Pendulum-v1_2")
    model = M3PO.load(os.path.join(resumed_dir, "Pendulum-v1.zip"))
    model.load_replay_buffer(os.path.join(resumed_dir, "replay_buffer.pkl"))
    # callbacks run before the step's transition is stored (as in SB3), so the checkpoint at 128 held 126
    assert model.num_timesteps == 192 and model.replay_buffer.size() == 192 - 2
    assert np.load(os.path.join(resumed_dir, "evaluations.npz"))["timesteps"].tolist() == [192]


@pytest.mark.slow
def test_checkpoint_freq_must_be_positive(tmp_path):
    out = run_module(
        "sb3_m3po.zoo.train", "--algo", "m3po", "--env", "Pendulum-v1", "--checkpoint-freq", "0", cwd=str(tmp_path)
    )
    assert out.returncode == 2 and "--checkpoint-freq needs a positive number of steps, got '0'" in out.stderr
