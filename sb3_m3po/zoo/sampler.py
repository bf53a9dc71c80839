"""Optuna search space of M3PO for rl-zoo3's ``-optimize``."""

from typing import Any

import optuna


def sample_m3po_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Optuna search space of M3PO: planner size and horizon, bonus, world-model lr and update ratio,
    Q guidance, PPO's lr, clip, epochs and n_steps.

    rl-zoo3 updates the env's hyperparameters with the returned dict, so a sampled ``planner_kwargs``,
    ``world_model_kwargs`` or ``bonus_kwargs`` replaces the one of the yml entry as a whole.

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
