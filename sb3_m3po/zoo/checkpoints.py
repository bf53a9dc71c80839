"""
Resumable checkpoints: model, replay buffer and VecNormalize statistics saved together, latest only.

rl-zoo3's ``--save-freq`` keeps every model and no replay buffer, so a long run that is cut off
restarts its world model (or SAC critic) from an empty replay. A resumable checkpoint is a folder
``<checkpoints>/step_<num_timesteps>/`` holding what rl-zoo3's ``-i`` loads when resuming:
``model.zip``, ``replay_buffer.pkl`` next to it (off-policy algorithms and M3PO) and
``<env name>/vecnormalize.pkl`` (when the env is normalised). ``complete`` is written last, so a
folder without it (the process was killed while saving) is never resumed from, and older folders
are deleted only once a newer one is complete. As with SB3's ``CheckpointCallback``, callbacks run
before the step's transitions are stored, so a resumed run's replay lacks the last step of every env.
"""

import os
import re
import shutil

from stable_baselines3.common.callbacks import CheckpointCallback

from sb3_m3po.common.signals import deferred_keyboard_interrupt

COMPLETE = "complete"
_STEP_FOLDER = re.compile(r"^step_(\d+)$")


def latest_checkpoint(checkpoints: str) -> tuple[int, str] | None:
    """
    Newest complete checkpoint under ``checkpoints``.

    :param checkpoints: the folder the callback writes to
    :return: ``(num_timesteps, path of its model.zip)``, or None if there is none
    """
    if not os.path.isdir(checkpoints):
        return None
    found = []
    for name in os.listdir(checkpoints):
        match = _STEP_FOLDER.match(name)
        if match and os.path.exists(os.path.join(checkpoints, name, COMPLETE)):
            found.append((int(match.group(1)), os.path.join(checkpoints, name, "model.zip")))
    return max(found) if found else None


class ResumeCheckpointCallback(CheckpointCallback):
    """
    SB3's ``CheckpointCallback`` (model, replay buffer and VecNormalize statistics) laid out as rl-zoo3's
    ``-i`` reads it, one folder per checkpoint, marked complete and keeping only the latest.

    Put it after the evaluation callback: a checkpoint at step ``N`` then exists only once the
    evaluation at ``N`` is in ``evaluations.npz``, so a resumed run's curve has no gap.

    :param save_freq: calls between checkpoints (one call is one step of all envs)
    :param save_path: folder of the ``step_<N>`` checkpoints
    :param env_name: sub-folder of the VecNormalize statistics (rl-zoo3's ``-i`` looks in ``<env name>/``)
    :param verbose: 1: print where each checkpoint went
    """

    def __init__(self, save_freq: int, save_path: str, env_name: str, verbose: int = 0) -> None:
        assert save_freq > 0, f"save_freq must be a positive number of calls, got {save_freq}"
        super().__init__(save_freq, save_path, save_replay_buffer=True, save_vecnormalize=True, verbose=verbose)
        self.env_name = env_name

    @property
    def folder(self) -> str:
        """The checkpoint folder of the current step."""
        return os.path.join(self.save_path, f"step_{self.num_timesteps}")

    def _checkpoint_path(self, checkpoint_type: str = "", extension: str = "") -> str:
        names = {"": "model.zip", "replay_buffer_": "replay_buffer.pkl"}
        if checkpoint_type == "vecnormalize_":
            os.makedirs(os.path.join(self.folder, self.env_name), exist_ok=True)
            return os.path.join(self.folder, self.env_name, "vecnormalize.pkl")
        return os.path.join(self.folder, names[checkpoint_type])

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            with deferred_keyboard_interrupt():  # Ctrl-C held until the checkpoint is complete
                self._save()
        return True

    def _save(self) -> None:
        folder = self.folder
        if os.path.exists(folder):  # an incomplete attempt at this step
            shutil.rmtree(folder)
        os.makedirs(folder)
        super()._on_step()
        with open(os.path.join(folder, COMPLETE), "w") as f:
            f.write(f"{self.num_timesteps}\n")
        for name in os.listdir(self.save_path):
            match = _STEP_FOLDER.match(name)
            if match and int(match.group(1)) != self.num_timesteps:
                shutil.rmtree(os.path.join(self.save_path, name), ignore_errors=True)
        if self.verbose >= 1:
            print(f"Resumable checkpoint at {self.num_timesteps} steps: {folder}")
