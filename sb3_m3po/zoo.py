"""
rl-zoo3 integration: register M3PO, its Optuna sampler and our env ids, and locate the shipped hyperparameters.

Registration must happen before rl-zoo3 parses argv (its ``--algo`` choices are read from
``rl_zoo3.utils.ALGOS`` at parse time), which is why ``sb3_m3po.train`` calls
:func:`register` first instead of relying on ``--gym-packages``.
"""

import os
import tempfile
from typing import Any

import optuna
import yaml

from sb3_m3po import M3PO
from sb3_m3po.common.envs import register_envs


def hyperparams_dir() -> str:
    """Folder of the shipped rl-zoo3 yml files (``hyperparams/`` at the repository root)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "hyperparams"), os.path.join(os.path.dirname(here), "hyperparams")):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError("sb3-m3po's hyperparams/ folder is missing: install the package from its repository")


def sample_m3po_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Optuna search space of M3PO: planner size and horizon, bonus, world-model lr and update ratio,
    Q guidance, PPO's lr, clip, epochs and n_steps.

    :return: constructor kwargs (see :func:`convert_m3po_params`)
    """
    trial.suggest_int("horizon", 1, 5)
    trial.suggest_int("num_samples_pow", 5, 9)
    trial.suggest_categorical("elite_fraction", [0.0625, 0.125, 0.25])
    trial.suggest_int("iterations", 1, 6)
    trial.suggest_float("temperature", 0.1, 2.0, log=True)
    trial.suggest_float("bonus_coef", 0.0, 0.5)
    trial.suggest_float("bonus_anneal_fraction", 0.1, 1.0)
    trial.suggest_float("wm_learning_rate", 1e-4, 1e-3, log=True)
    trial.suggest_categorical("wm_update_ratio", [0.125, 0.25, 0.5, 1.0])
    trial.suggest_float("prior_q_coef", 0.0, 2.0)
    trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
    trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3])
    trial.suggest_categorical("n_epochs", [5, 10, 20])
    trial.suggest_int("n_steps_pow", 5, 9)
    return convert_m3po_params(trial.params)


def convert_m3po_params(sampled: dict[str, Any]) -> dict[str, Any]:
    """Turn sampled values (powers, fractions, flat names) into M3PO constructor arguments."""
    num_samples = 2 ** sampled["num_samples_pow"]
    n_steps = 2 ** sampled["n_steps_pow"]
    return {
        "learning_rate": sampled["learning_rate"],
        "clip_range": sampled["clip_range"],
        "n_epochs": sampled["n_epochs"],
        "n_steps": n_steps,
        "batch_size": min(64, n_steps),
        "planner_kwargs": {
            "horizon": sampled["horizon"],
            "num_samples": num_samples,
            "num_elites": max(2, int(num_samples * sampled["elite_fraction"])),
            "num_prior_trajectories": max(1, num_samples // 16),
            "iterations": sampled["iterations"],
            "temperature": sampled["temperature"],
        },
        "world_model_kwargs": {
            "learning_rate": sampled["wm_learning_rate"],
            "update_ratio": sampled["wm_update_ratio"],
            "prior_q_coef": sampled["prior_q_coef"],
        },
        "bonus_kwargs": {"coef": sampled["bonus_coef"], "anneal_fraction": sampled["bonus_anneal_fraction"]},
    }


def headless_rendering() -> None:
    """
    Without a display and without ``MUJOCO_GL``, pick MuJoCo's EGL backend (or none when EGL is missing).

    dm_control otherwise tries GLFW first, which prints ``GLFWError: X11: The DISPLAY environment
    variable is missing`` at every start on a headless machine, the normal case for training.
    """
    if "MUJOCO_GL" in os.environ or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    import ctypes.util

    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "off"


def register() -> None:
    """Register ``m3po`` with rl-zoo3 (algorithm, sampler, converter) and our env ids with gymnasium."""
    headless_rendering()
    from rl_zoo3 import hyperparams_opt, utils

    utils.ALGOS["m3po"] = M3PO
    hyperparams_opt.HYPERPARAMS_SAMPLER["m3po"] = sample_m3po_params
    hyperparams_opt.HYPERPARAMS_CONVERTER["m3po"] = convert_m3po_params  # type: ignore[assignment]  # same call, named args differ
    register_envs()


def shipped_config(algo: str, env_id: str) -> str | None:
    """
    Path of a yml holding our hyperparameters for ``(algo, env_id)``, or None if we ship none.

    For M3PO an env id without its own entry gets the ``default`` entry (written to a
    temporary yml, since rl-zoo3 looks hyperparameters up by env id).
    """
    path = os.path.join(hyperparams_dir(), f"{algo}.yml")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        table = yaml.safe_load(f)
    if env_id in table:
        return path
    if algo != "m3po":
        return None
    handle, tmp_path = tempfile.mkstemp(prefix=f"m3po-{env_id.replace('/', '_')}-", suffix=".yml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump({env_id: table["default"]}, f)
    return tmp_path
