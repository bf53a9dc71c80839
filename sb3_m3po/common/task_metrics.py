"""Per-task episode statistics and logger keys of multi-task runs."""

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.logger import Logger


def record_task_metric(logger: Logger, prefix: str, task: str, metric: str, value: float) -> None:
    """
    Record ``<prefix>/<task>/<metric>`` for the machine-readable outputs only (tensorboard, CSV, JSON).

    SB3's console table cuts keys at 36 characters, so two metrics of a long task name
    (``button-press-topdown-wall-v3``) would end in the same cut key and make ``logger.dump`` raise;
    and 50 tasks would bury the table. The console keeps the means over tasks.

    :param logger: the logger to record into
    :param prefix: the section, e.g. ``eval``
    :param task: the task's name
    :param metric: the metric's name
    :param value: its value
    """
    logger.record(f"{prefix}/{task}/{metric}", value, exclude="stdout")


class TaskEpisodeStats:
    """
    The last ``window`` episode returns and successes of every task, from the infos of a multi-task VecEnv.

    An episode counts when its final info holds ``"episode"`` (SB3's ``Monitor``) and ``"task"``
    (:class:`~sb3_m3po.envs.multitask.MultiTaskEnv`); its success is the final ``is_success``.

    :param task_names: name of every task
    :param window: episodes kept per task
    """

    def __init__(self, task_names: Sequence[str], window: int = 100) -> None:
        self.task_names = tuple(task_names)
        self.returns: list[deque[float]] = [deque(maxlen=window) for _ in self.task_names]
        self.successes: list[deque[float]] = [deque(maxlen=window) for _ in self.task_names]

    def update(self, infos: Sequence[dict[str, Any]], dones: np.ndarray) -> None:
        """Add the episodes that ended at this step (only the finished envs are visited)."""
        for i in np.flatnonzero(dones):
            info = infos[int(i)]
            task, episode = info.get("task"), info.get("episode")
            if task is None or episode is None:
                continue
            self.returns[task].append(float(episode["r"]))
            success = info.get("is_success")
            if success is not None:
                self.successes[task].append(float(success))

    def record(self, logger: Logger, prefix: str = "rollout") -> None:
        """Record ``<prefix>/<task>/ep_rew_mean``, ``<prefix>/<task>/success_rate`` and the means over tasks with data."""
        means, rates = [], []
        for name, returns, successes in zip(self.task_names, self.returns, self.successes):
            if returns:
                means.append(float(np.mean(returns)))
                record_task_metric(logger, prefix, name, "ep_rew_mean", means[-1])
            if successes:
                rates.append(float(np.mean(successes)))
                record_task_metric(logger, prefix, name, "success_rate", rates[-1])
        if means:
            logger.record(f"{prefix}/task_mean/ep_rew_mean", float(np.mean(means)))
        if rates:
            logger.record(f"{prefix}/task_mean/success_rate", float(np.mean(rates)))
