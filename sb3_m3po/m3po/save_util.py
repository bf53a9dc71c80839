"""Checks on an M3PO checkpoint before SB3 loads it, so that a wrong file gets an error that names the problem."""

import io
import pathlib
import pickle
import zipfile
from typing import Any

from stable_baselines3.common.save_util import load_from_zip_file

# Settings of sb3-m3po 0.1 that moved into the component settings (or were removed with the
# experiment switches whose comparisons found no gain), and where they live now
RENAMED_SETTINGS: dict[str, str] = {
    "horizon": "planner_kwargs['horizon']",
    "num_samples": "planner_kwargs['num_samples']",
    "num_elites": "planner_kwargs['num_elites']",
    "num_prior_trajectories": "planner_kwargs['num_prior_trajectories']",
    "mppi_iterations": "planner_kwargs['iterations']",
    "temperature": "planner_kwargs['temperature']",
    "min_std": "planner_kwargs['min_std']",
    "max_std": "planner_kwargs['max_std']",
    "wm_learning_rate": "world_model_kwargs['learning_rate']",
    "wm_batch_size": "world_model_kwargs['batch_size']",
    "wm_gradient_steps": "world_model_kwargs['gradient_steps']",
    "wm_update_ratio": "world_model_kwargs['update_ratio']",
    "wm_max_grad_norm": "world_model_kwargs['max_grad_norm']",
    "learning_starts": "world_model_kwargs['learning_starts']",
    "buffer_size": "world_model_kwargs['buffer_size']",
    "rho": "world_model_kwargs['rho']",
    "consistency_coef": "world_model_kwargs['consistency_coef']",
    "reward_coef": "world_model_kwargs['reward_coef']",
    "value_coef": "world_model_kwargs['value_coef']",
    "tau": "world_model_kwargs['tau']",
    "prior_q_coef": "world_model_kwargs['prior_q_coef']",
    "balanced_replay": "world_model_kwargs['balanced_replay']",
    "bonus_coef": "bonus_kwargs['coef']",
    "bonus_clip": "bonus_kwargs['clip']",
    "bonus_anneal_fraction": "bonus_kwargs['anneal_fraction']",
    "bonus_per_task": "bonus_kwargs['per_task']",
    "kl_estimate": "removed (target_kl bounds PPO's sample estimate)",
    "value_target": "removed (V-trace targets)",
    "action_choice": "removed (the MPPI mean)",
    "rho_bar": "removed (1)",
    "c_bar": "removed (1)",
}


def check_m3po_checkpoint(
    path: str | pathlib.Path | io.BufferedIOBase, policy_base: type, custom_objects: dict[str, Any] | None = None
) -> None:
    """
    :param path: the checkpoint
    :param policy_base: the policy class M3PO checkpoints hold (or a subclass of it)
    :raises ValueError: if the file is not a readable SB3 zip, holds another algorithm's model, or was
        saved with settings that have been renamed (the message lists each and its new home)
    """
    try:
        data, _, _ = load_from_zip_file(path, device="cpu", custom_objects=custom_objects, load_data=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(f"Cannot load M3PO checkpoint {path!s}: it is corrupt or not an SB3 zip ({error})") from error
    finally:
        if isinstance(path, io.BufferedIOBase):
            path.seek(0)
    policy_class = (data or {}).get("policy_class")
    if not (isinstance(policy_class, type) and issubclass(policy_class, policy_base)):
        raise ValueError(
            f"Checkpoint {path!s} was not saved by M3PO (its policy class is {policy_class!r}); "
            "load it with the algorithm that saved it"
        )
    old = [name for name in RENAMED_SETTINGS if name in (data or {})]
    if old:
        moves = "; ".join(f"{name} -> {RENAMED_SETTINGS[name]}" for name in old)
        raise ValueError(
            f"Checkpoint {path!s} was saved by sb3-m3po 0.1, whose settings have since been renamed, so it "
            f"cannot be loaded by this version: {moves}. Retrain with the new names, or load it with sb3-m3po 0.1"
        )
