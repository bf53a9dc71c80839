"""
The world-model update of M3PO: TD-MPC2's losses on replayed subsequences, each gradient step
followed by a Q-guided step on the policy prior's mean.
"""

from typing import Any, NamedTuple

import torch as th
from stable_baselines3.common.vec_env import VecNormalize

from sb3_m3po.common.buffers import EpisodicReplayBuffer, ReplaySamples
from sb3_m3po.common.math import masked_mean_squared_error
from sb3_m3po.common.utils import NonFiniteError
from sb3_m3po.m3po.config import WorldModelTrainingConfig
from sb3_m3po.m3po.policies import M3POPolicy
from sb3_m3po.m3po.world_model import WorldModel


class WorldModelStats(NamedTuple):
    """Means over one update's gradient steps, for the logger."""

    consistency_loss: float
    reward_loss: float
    value_loss: float
    termination_loss: float
    grad_norm: float
    gradient_steps: int
    q_scale: float
    prior_saturation: float  # share of the prior mean's components at |mu| > 0.99 on the last batch's latents


def world_model_optimizer(world_model: WorldModel, config: WorldModelTrainingConfig, **kwargs: Any) -> th.optim.Adam:
    """
    Adam over the world model (encoder at ``enc_lr_scale`` of the rate; the target Q ensemble excluded), the
    termination head in a group of its own, as :func:`add_termination_head` adds it to a running optimizer.
    """
    encoder = list(world_model.encoder.parameters())
    others = [
        p
        for name, p in world_model.named_parameters()
        if p.requires_grad and not name.startswith(("encoder.", "target_q_ensemble.", "termination_head."))
    ]
    groups: list[dict[str, Any]] = [{"params": encoder, "lr": config.learning_rate * config.enc_lr_scale}, {"params": others}]
    if world_model.termination_head is not None:
        groups.append({"params": list(world_model.termination_head.parameters())})
    return th.optim.Adam(groups, lr=config.learning_rate, **kwargs)


def add_termination_head(world_model: WorldModel, optimizer: th.optim.Optimizer) -> None:
    """Give a world model without one its termination head, trained by ``optimizer`` from now on."""
    assert world_model.termination_head is None, "the world model already has a termination head"
    head = world_model.add_termination_head()
    optimizer.add_param_group({"params": list(head.parameters())})


@th.no_grad()
def world_model_targets(
    policy: M3POPolicy, batch: ReplaySamples, task: th.Tensor | None, gamma: float
) -> tuple[th.Tensor, th.Tensor]:
    """
    Consistency targets ``sg(h(s_{t+1}))`` and TD targets ``r + gamma (1 - term) min Q_target(z', a')``, ``a'``
    the prior's target action (its mean, or a sample: ``prior_kwargs['target_action']``).

    Both carry no gradient: the stop-gradient is on the target side of the consistency loss,
    so the encoder learns only through the predicted (online) latents.

    :raises NonFiniteError: if the TD targets are not finite
    """
    wm = policy.world_model
    target_z = wm.encode(batch.next_observations, task)
    next_q = wm.q_value(target_z, policy.target_action(target_z, task), task, target=True, reduce="min")
    td_targets = batch.rewards + gamma * (1.0 - batch.terminated) * next_q
    if not th.isfinite(td_targets).all():
        raise NonFiniteError(
            "M3PO world-model loss became non-finite: the TD targets (reward + gamma * target Q) contain NaN/inf. "
            "Parameters were not updated with them; lower world_model_kwargs['learning_rate'] or check the rewards."
        )
    return target_z, td_targets


def q_guided_prior_step(
    policy: M3POPolicy,
    latents: th.Tensor,
    task: th.Tensor | None,
    config: WorldModelTrainingConfig,
    max_grad_norm: float,
    q_scale: float | th.Tensor,
    mask: th.Tensor | None = None,
    actions: th.Tensor | None = None,
) -> th.Tensor:
    """
    One step of the prior up the Q ensemble, on the latents of a world-model batch (``prior_kwargs['objective']``).

    ``"mean"``: the loss is ``-prior_q_coef * rho^t Q(z_t, mu(z_t)) / max(scale, 1)``, TD-MPC2's policy loss
    on the mean, with ``scale`` a running mean of ``|Q|`` so the step does not depend on the reward scale. It
    uses the PPO optimizer of the prior: both updates move the same parameters, and with one Adam each step is
    normalised by the gradient scale of both, so the few PPO epochs of a rollout are not inflated relative to
    the many Q steps (or the reverse).
    ``"sample"``: TD-MPC2's policy loss, ``-prior_q_coef * rho^t (Q(z_t, a_t) / scale + entropy_coef * H_t)`` with
    ``a_t`` a reparameterised squashed sample, ``H_t`` its scaled entropy and ``scale`` a running 5-95
    percentile range of Q (at least 1), stepped by the prior's own Adam.

    :param latents: ``(H, B, L)`` latents of the batch (detached here)
    :param q_scale: the running Q scale (a tensor on the policy's device stays there: no host sync per step)
    :param mask: ``(H, B, 1)`` 0 on latents after a termination (imagined from the next episode's actions)
    :param actions: ``(H, B, A)`` the replayed actions at the latents (needed when ``prior_kwargs['bc_coef'] > 0``)
    :return: the updated running Q scale, a 0-dim tensor
    """
    wm, prior = policy.world_model, policy.prior_config
    latents = latents.detach()
    sample = prior.objective == "sample"
    head = policy.prior_head(latents, task)  # one actor pass serves the action and the mean_reg term
    wm.q_ensemble.requires_grad_(False)
    try:
        if sample:
            action, entropy = policy.squashed_sample(latents, task, head=head)
        else:
            action, entropy = policy.prior_mean_std(latents, task, head=head)[0], th.zeros(())
        q = wm.q_value(latents, action, task)  # (H, B, 1)
    finally:
        wm.q_ensemble.requires_grad_(True)
    if sample:
        spread = th.quantile(q[0].detach().flatten(), q.new_tensor([0.05, 0.95])).diff()[0].clamp(min=1.0)
    else:
        spread = q.detach().abs().mean()
    q_scale = 0.99 * th.as_tensor(q_scale, dtype=q.dtype, device=q.device) + 0.01 * spread
    horizon = latents.shape[0]
    weights = config.rho ** th.arange(horizon, device=q.device, dtype=q.dtype).view(horizon, 1, 1)
    if mask is not None:
        weights = weights * mask
    objective = q / q_scale.clamp(min=1.0) + prior.entropy_coef * entropy
    loss = -config.prior_q_coef * (objective * weights).mean()
    if prior.mean_reg > 0:
        loss = loss + prior.mean_reg * head[0].pow(2).mean()
    if prior.bc_coef > 0:
        assert actions is not None, "prior_kwargs['bc_coef'] > 0 needs the replayed actions"
        mean = policy.prior_mean_std(latents, task, head=head)[0] if sample else action  # "mean": the action is the mean
        gap = masked_mean_squared_error(mean, actions, policy.action_mask(task))
        loss = loss + prior.bc_coef * (gap * weights).mean()
    optimizer = policy.prior_optimizer if sample else policy.optimizer
    assert optimizer is not None, "the 'sample' prior objective needs the policy's prior_optimizer"
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # TD-MPC2 clips its policy's gradient at the world model's norm; the "mean" step shares PPO's optimizer and clip
    clip = config.max_grad_norm if sample else max_grad_norm
    th.nn.utils.clip_grad_norm_(policy.actor.parameters(), clip, foreach=True)
    optimizer.step()
    return q_scale


def update_world_model(
    policy: M3POPolicy,
    optimizer: th.optim.Optimizer,
    replay: EpisodicReplayBuffer,
    config: WorldModelTrainingConfig,
    *,
    steps: int,
    gamma: float,
    prior_max_grad_norm: float,
    q_scale: float,
    vec_normalize: VecNormalize | None = None,
) -> WorldModelStats:
    """
    ``steps`` world-model gradient steps on ``planner horizon``-step subsequences, each followed by
    a Polyak update of the target Q ensemble and (``prior_q_coef > 0``) a Q-guided prior step.

    :param optimizer: the world model's optimizer (:func:`world_model_optimizer`)
    :param replay: where the subsequences come from
    :param steps: number of gradient steps
    :param gamma: discount of the TD targets
    :param prior_max_grad_norm: gradient clip of the prior step (PPO's ``max_grad_norm``)
    :param q_scale: running ``|Q|`` scale of the prior step before the update
    :param vec_normalize: statistics that normalise the replayed observations and rewards
    :raises NonFiniteError: if a loss or target is not finite (the parameters are not updated with it)
    """
    horizon = policy.planner_config.horizon
    wm = policy.world_model
    params = [p for group in optimizer.param_groups for p in group["params"]]
    totals = th.zeros(5, device=policy.device)
    scale = th.as_tensor(q_scale, dtype=th.float32, device=policy.device)
    for _ in range(steps):
        batch = replay.sample(config.batch_size, horizon, vec_normalize, config.sample_across_terminations)
        task = policy.task_ids(batch.observations)
        target_z, td_targets = world_model_targets(policy, batch, task, gamma)
        losses = policy.world_model_losses(
            batch.observations, batch.actions, batch.rewards, target_z, td_targets, task, config, batch.terminated, batch.mask
        )
        if not th.isfinite(losses.total):
            parts = {k: float(v) for k, v in losses._asdict().items() if k != "latents"}
            raise NonFiniteError(
                f"M3PO world-model loss became non-finite: {parts}. Parameters were not updated with it; "
                "lower world_model_kwargs['learning_rate'] or check the rewards and observations."
            )
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        grad_norm = th.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
        optimizer.step()
        wm.soft_update_target(config.tau)
        if config.prior_q_coef > 0:
            scale = q_guided_prior_step(
                policy, losses.latents, task, config, prior_max_grad_norm, scale, batch.mask, batch.actions
            )
        step_stats = (losses.consistency, losses.reward, losses.value, losses.termination, grad_norm)
        totals += th.stack([part.detach() for part in step_stats])
    consistency, reward, value, termination, grad_norm = (totals / max(steps, 1)).tolist()
    saturation = prior_saturation(policy, losses.latents[0], task) if steps else 0.0
    return WorldModelStats(consistency, reward, value, termination, grad_norm, steps, float(scale), saturation)


@th.no_grad()
def prior_saturation(policy: M3POPolicy, latents: th.Tensor, task: th.Tensor | None, bound: float = 0.99) -> float:
    """
    Share of the prior mean's valid action components with ``|mu| > bound``: a tanh-squashed mean that sits at
    the action bounds gets almost no gradient from either update, and Q's targets read a bang-bang action there.
    """
    mean = policy.prior_mean(latents, task).abs() > bound
    mask = policy.action_mask(task)
    if mask is None:
        return float(mean.float().mean())
    return float((mean * mask).sum() / mask.sum().clamp(min=1))
