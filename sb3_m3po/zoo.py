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
    Optuna search space of M3PO: planner size, horizon and action choice, bonus, world-model lr, PPO clip/epochs/n_steps.

    :return: constructor kwargs (see :func:`convert_m3po_params`)
    """
    trial.suggest_int("horizon", 1, 5)
    trial.suggest_int("num_samples_pow", 5, 9)
    trial.suggest_categorical("elite_fraction", [0.0625, 0.125, 0.25])
    trial.suggest_int("mppi_iterations", 1, 6)
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
    trial.suggest_categorical("action_choice", ["mean", "elite"])  # last: earlier draws of a seed stay the same
    return convert_m3po_params(trial.params)


def convert_m3po_params(sampled: dict[str, Any]) -> dict[str, Any]:
    """Turn sampled values (powers, fractions) into M3PO constructor arguments."""
    params = dict(sampled)
    num_samples = 2 ** params.pop("num_samples_pow")
    params["num_samples"] = num_samples
    params["num_elites"] = max(2, int(num_samples * params.pop("elite_fraction")))
    params["num_prior_trajectories"] = max(1, num_samples // 16)
    params["n_steps"] = 2 ** params.pop("n_steps_pow")
    params["batch_size"] = min(64, params["n_steps"])
    return params


def register() -> None:
    """Register ``m3po`` with rl-zoo3 (algorithm, sampler, converter) and our env ids with gymnasium."""
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
