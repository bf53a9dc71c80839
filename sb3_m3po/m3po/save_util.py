"""Checks on an M3PO checkpoint before SB3 loads it, so that a wrong file gets an error that names the problem."""

import io
import pathlib
import pickle
import zipfile
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import torch as th
from stable_baselines3.common.save_util import load_from_zip_file, save_to_pkl
from stable_baselines3.common.type_aliases import GymEnv

from sb3_m3po.common.buffers import EpisodicReplayBuffer
from sb3_m3po.common.signals import deferred_keyboard_interrupt

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


def migrate_settings(params: dict[str, Any]) -> dict[str, Any]:
    """
    M3PO keyword arguments of sb3-m3po 0.1 under their current names (``{"bonus_coef": 0}`` becomes
    ``{"bonus_kwargs": {"coef": 0}}``); removed settings and current names are kept as they are.
    """
    migrated: dict[str, Any] = {}
    for name, value in params.items():
        home = RENAMED_SETTINGS.get(name)
        if home is None or home.startswith("removed"):
            migrated[name] = value
            continue
        group, key = home.split("[")
        migrated.setdefault(group, {})[key.strip("'] ")] = value
    return migrated


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


SelfSaveLoad = TypeVar("SelfSaveLoad", bound="M3POSaveLoad")


class M3POSaveLoad:
    """
    Save and load of M3PO (mixed into the algorithm before SB3's ``BaseAlgorithm``): files are checked
    before SB3 reads them, Ctrl-C waits until a file is complete, and the world model's replay
    buffer is saved and loaded as SAC's is.
    """

    # provided by the algorithm this is mixed into
    policy: Any
    replay_buffer: EpisodicReplayBuffer
    world_model_config: Any
    policy_aliases: ClassVar[dict[str, type]]
    verbose: int
    n_envs: int
    device: th.device

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """Save the model as SB3 does, with Ctrl-C held until the file is complete."""
        with deferred_keyboard_interrupt():
            super().save(path, exclude, include)  # type: ignore[misc]

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfSaveLoad],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfSaveLoad:
        """
        Load an M3PO model saved with :meth:`save`; see SB3's ``BaseAlgorithm.load``.

        :raises ValueError: if the file is not a readable SB3 checkpoint, was saved by another
            algorithm, or by an sb3-m3po version whose settings have since been renamed
        """
        check_m3po_checkpoint(path, cls.policy_aliases["MlpPolicy"], custom_objects)
        return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)  # type: ignore[misc]

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """
        Save the world model's replay buffer as a pickle (not part of :meth:`save`, as in SB3's SAC), so a
        resumed run (``load`` then ``load_replay_buffer``) trains its world model on the same data.
        """
        assert self.replay_buffer is not None, "The replay buffer is not defined"
        save_to_pkl(path, self.replay_buffer, self.verbose)

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        """
        Load a replay buffer saved with :meth:`save_replay_buffer`.

        :param truncate_last_traj: treat every env's last stored episode as finished (True, the right
            choice after ``load()``, since the envs are reset before training continues)
        :raises ValueError: if the file is unreadable, holds something else, or was made for another
            observation/action size, ``n_envs`` or number of tasks
        """
        policy = self.policy
        buffer = EpisodicReplayBuffer.load(path, policy.obs_dim, policy.action_dim, self.n_envs, policy.num_tasks)
        if truncate_last_traj:
            buffer.truncate_last_trajectory()
        buffer.device = self.device
        buffer.balanced = self.world_model_config.balanced_replay and buffer.num_tasks > 1
        self.replay_buffer = buffer
