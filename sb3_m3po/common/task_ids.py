"""
The multi-task observation convention, in one place.

A multi-task observation is the task's own flat observation, zero-padded to the largest size of
the task set, followed by the one-hot id of the task (the **last** ``num_tasks`` entries). The
env writes it (:meth:`TaskIdCodec.encode`); the policy, the world model and the replay buffer read
it (:meth:`TaskIdCodec.decode`, :meth:`TaskIdCodec.strip`). The argmax of the one-hot is unchanged
by ``VecNormalize``, which maps every entry with an increasing affine function, so ids read from
normalised observations are right too.
"""

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch as th

ArrayT = TypeVar("ArrayT", np.ndarray, th.Tensor)


@dataclass(frozen=True)
class TaskIdCodec:
    """
    Write and read the one-hot task id at the end of multi-task observations.

    :param num_tasks: number of tasks; 1 means single task, where observations carry no id
    """

    num_tasks: int = 1

    def __post_init__(self) -> None:
        assert self.num_tasks >= 1, f"num_tasks must be >= 1, got {self.num_tasks}"

    @property
    def width(self) -> int:
        """Entries the id takes at the end of an observation (0 for a single task)."""
        return self.num_tasks if self.num_tasks > 1 else 0

    def encode(self, padded_obs: np.ndarray, task: int) -> np.ndarray:
        """Append the one-hot of ``task`` to one padded observation (float32)."""
        one_hot = np.zeros(self.width, dtype=np.float32)
        if self.width:
            one_hot[task] = 1.0
        return np.concatenate([np.asarray(padded_obs, dtype=np.float32), one_hot])

    def decode(self, obs: ArrayT) -> ArrayT | None:
        """Task ids ``(...)`` of observations ``(..., obs_size)``; None for a single task."""
        if not self.width:
            return None
        return obs[..., -self.width :].argmax(-1)

    def strip(self, obs: ArrayT) -> ArrayT:
        """The observations without the id (the task embedding carries it into the networks)."""
        return obs[..., : obs.shape[-1] - self.width] if self.width else obs
