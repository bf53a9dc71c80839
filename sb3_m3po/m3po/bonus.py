"""
The hybrid exploration bonus: the gap between a model-based and a model-free one-step value
of every transition of a rollout, in one batched pass.
"""

from typing import NamedTuple

import torch as th
from stable_baselines3.common.logger import Logger

from sb3_m3po.common.buffers import M3PORolloutBuffer
from sb3_m3po.common.math import exploration_bonus, group_mean_std
from sb3_m3po.common.task_metrics import record_task_metric
from sb3_m3po.m3po.config import BonusConfig
from sb3_m3po.m3po.policies import M3POPolicy


class RolloutValues(NamedTuple):
    """One-step values of every transition of a rollout, flat ``(n_steps * n_envs,)``, step-major."""

    next_value: th.Tensor  # V(h(s')) of the real next observation
    q_mb: th.Tensor  # R(z, a) + gamma * (1 - P_term(d(z, a))) * V(d(z, a)): model reward, termination, next latent
    q_mf: th.Tensor  # r + gamma * (1 - terminated) * V(h(s')): real reward and real next observation
    bonus: th.Tensor  # |q_mb - q_mf|
    bonus_normalised: th.Tensor  # clip(zscore(bonus), 0, clip)
    task: th.Tensor | None  # task ids (multi-task)


@th.inference_mode()
def rollout_values(policy: M3POPolicy, buffer: M3PORolloutBuffer, gamma: float, config: BonusConfig) -> RolloutValues:
    """
    ``V(s')``, ``Q_MB``, ``Q_MF`` and the bonus for the whole rollout buffer.

    A high gap marks transitions the model does not yet predict well. Multi-task rollouts are
    z-scored per task with ``config.per_task``.
    """

    def flat(x):  # type: ignore[no-untyped-def]
        return th.as_tensor(x.reshape(-1, *x.shape[2:]), device=policy.device)

    obs, next_obs = flat(buffer.observations), flat(buffer.next_observations)
    actions = flat(buffer.actions).clamp(-1.0, 1.0)
    task = policy.task_ids(obs)
    wm = policy.world_model
    z = wm.encode(obs, task)
    next_value = policy.value(wm.encode(next_obs, task), task).squeeze(-1)
    model_next = wm.next(z, actions, task)
    model_next_value = policy.value(model_next, task).squeeze(-1)
    terminal = wm.termination(model_next, task)
    if terminal is not None:
        model_next_value = (1.0 - terminal.squeeze(-1)) * model_next_value
    q_mb = wm.reward(z, actions, task).squeeze(-1) + gamma * model_next_value
    q_mf = flat(buffer.rewards) + gamma * (1.0 - flat(buffer.terminated)) * next_value
    per_task = config.per_task and task is not None
    eps, eps_norm = exploration_bonus(q_mb, q_mf, config.clip, task if per_task else None, policy.num_tasks)
    return RolloutValues(next_value, q_mb, q_mf, eps, eps_norm, task)


def record_bonus(logger: Logger, values: RolloutValues, coef: float, task_names: tuple[str, ...] | None) -> None:
    """Log the bonus terms (``train/...``) and, multi-task, every task's bonus scale (``train/<task>/...``)."""
    logger.record("train/bonus_mean", float(values.bonus.mean()))
    logger.record("train/bonus_normalised_mean", float(values.bonus_normalised.mean()))
    logger.record("train/bonus_coef", coef)
    logger.record("train/q_mb_mean", float(values.q_mb.mean()))
    logger.record("train/q_mf_mean", float(values.q_mf.mean()))
    if values.task is None or task_names is None:
        return
    # each task's raw scale shows whether one task would swamp a rollout-wide z-score
    num_tasks = len(task_names)
    means, stds = group_mean_std(values.bonus, values.task, num_tasks)
    normalised, _ = group_mean_std(values.bonus_normalised, values.task, num_tasks)
    present = th.bincount(values.task, minlength=num_tasks) > 0
    for k in present.nonzero().flatten().tolist():
        for metric, table in (("bonus_mean", means), ("bonus_std", stds), ("bonus_normalised_mean", normalised)):
            record_task_metric(logger, "train", task_names[k], metric, float(table[k]))
