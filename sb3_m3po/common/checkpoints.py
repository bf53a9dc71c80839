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

from stable_baselines3.common.callbacks import BaseCallback

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


class ResumeCheckpointCallback(BaseCallback):
    """
    Every ``save_freq`` calls, save a resumable checkpoint and delete the older ones.

    Put it after the evaluation callback: a checkpoint at step ``N`` then exists only once the
    evaluation at ``N`` is in ``evaluations.npz``, so a resumed run's curve has no gap.

    :param save_freq: calls between checkpoints (one call is one step of all envs)
    :param save_path: folder of the ``step_<N>`` checkpoints
    :param env_name: sub-folder of the VecNormalize statistics (rl-zoo3's ``-i`` looks in ``<env name>/``)
    :param verbose: 1: print where each checkpoint went
    """

    def __init__(self, save_freq: int, save_path: str, env_name: str, verbose: int = 0) -> None:
        super().__init__(verbose)
        assert save_freq > 0, f"save_freq must be a positive number of calls, got {save_freq}"
        self.save_freq = save_freq
        self.save_path = save_path
        self.env_name = env_name

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            self.save()
        return True

    def save(self) -> str:
        """Write the checkpoint of the current step (Ctrl-C held until it is complete); return its folder."""
        with deferred_keyboard_interrupt():
            return self._save()

    def _save(self) -> str:
        folder = os.path.join(self.save_path, f"step_{self.num_timesteps}")
        if os.path.exists(folder):  # an incomplete attempt at this step
            shutil.rmtree(folder)
        os.makedirs(folder)
        self.model.save(os.path.join(folder, "model.zip"))
        if getattr(self.model, "replay_buffer", None) is not None and hasattr(self.model, "save_replay_buffer"):
            self.model.save_replay_buffer(os.path.join(folder, "replay_buffer.pkl"))
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None:
            os.makedirs(os.path.join(folder, self.env_name), exist_ok=True)
            vec_normalize.save(os.path.join(folder, self.env_name, "vecnormalize.pkl"))
        with open(os.path.join(folder, COMPLETE), "w") as f:
            f.write(f"{self.num_timesteps}\n")
        for name in os.listdir(self.save_path):
            match = _STEP_FOLDER.match(name)
            if match and int(match.group(1)) != self.num_timesteps:
                shutil.rmtree(os.path.join(self.save_path, name), ignore_errors=True)
        if self.verbose >= 1:
            print(f"Resumable checkpoint at {self.num_timesteps} steps: {folder}")
        return folder
