"""MPPI planning in latent space, batched over environments and samples."""

from typing import NamedTuple, Protocol

import torch as th

from sb3_m3po.common.math import masked_gaussian_log_prob, mppi_refit
from sb3_m3po.m3po.config import PlannerConfig


class LatentModel(Protocol):
    """What the planner needs from a model (the world model + prior, or a toy model in tests)."""

    def next(self, z: th.Tensor, action: th.Tensor, task: th.Tensor | None) -> th.Tensor: ...

    def reward(self, z: th.Tensor, action: th.Tensor, task: th.Tensor | None) -> th.Tensor: ...

    def terminal_value(self, z: th.Tensor, task: th.Tensor | None, generator: th.Generator | None) -> th.Tensor: ...

    def prior_sample(self, z: th.Tensor, task: th.Tensor | None, generator: th.Generator | None) -> th.Tensor: ...

    def termination(self, z: th.Tensor, task: th.Tensor | None) -> th.Tensor | None: ...


class PlanResult(NamedTuple):
    action: th.Tensor  # (B, A) executed action (unclipped sample, or its centre when deterministic)
    mean: th.Tensor  # (B, A) refitted mean of the first action
    std: th.Tensor  # (B, A) refitted std of the first action (the noise of a sampled action)
    plan: th.Tensor  # (B, H, A) refitted mean sequence, for warm-starting the next step
    log_prob: th.Tensor  # (B,) log-density of ``action`` under the distribution it was drawn from


def shift_plan(plan: th.Tensor, reset: th.Tensor | None = None) -> th.Tensor:
    """
    Warm start: drop the executed first step, append zeros, and zero rows that start a new episode.

    :param plan: ``(B, H, A)`` last refitted means
    :param reset: optional ``(B,)`` bool, True where an episode starts
    """
    shifted = th.cat([plan[:, 1:], th.zeros_like(plan[:, :1])], dim=1)
    if reset is not None:
        shifted = shifted * (~reset).to(plan.dtype)[:, None, None]
    return shifted


def rollout_returns(
    model: LatentModel,
    z: th.Tensor,
    actions: th.Tensor,
    task: th.Tensor | None,
    gamma: float,
    generator: th.Generator | None = None,
) -> th.Tensor:
    """
    ``sum_t gamma^t alive_t R(z_t, a_t) + gamma^H alive_H V(z_H)`` for every candidate, ``alive_t`` the predicted
    probability that no latent up to ``z_t`` is terminal (1 for a model without termination).

    :param z: ``(B, N, L)`` start latents, one copy per candidate
    :param actions: ``(B, N, H, A)``
    :return: ``(B, N)``
    """
    ret = z.new_zeros(z.shape[:-1])
    alive = z.new_ones(z.shape[:-1])
    discount = 1.0
    task_n = None if task is None else task[:, None].expand(z.shape[:2])
    for t in range(actions.shape[2]):
        a = actions[:, :, t]
        ret = ret + discount * alive * model.reward(z, a, task_n).squeeze(-1)
        z = model.next(z, a, task_n)
        terminal = model.termination(z, task_n)
        if terminal is not None:
            alive = alive * (1.0 - terminal.squeeze(-1))
        discount *= gamma
    return ret + discount * alive * model.terminal_value(z, task_n, generator).squeeze(-1)


def prior_trajectories(
    model: LatentModel,
    z: th.Tensor,
    task: th.Tensor | None,
    horizon: int,
    num_trajectories: int,
    generator: th.Generator | None = None,
) -> th.Tensor:
    """
    Sequences proposed by rolling the prior through the model.

    :param z: ``(B, L)`` current latents
    :return: ``(B, num_trajectories, horizon, A)``
    """
    zp = z[:, None].expand(-1, num_trajectories, -1)
    task_n = None if task is None else task[:, None].expand(zp.shape[:2])
    steps = []
    for _ in range(horizon):
        a = model.prior_sample(zp, task_n, generator).clamp(-1.0, 1.0)
        steps.append(a)
        zp = model.next(zp, a, task_n)
    return th.stack(steps, dim=2)


class MPPIPlanner:
    """
    Model-predictive path integral control guided by a policy prior.

    All environments and samples are planned in one tensor program: the only Python
    loops are over MPPI iterations and horizon steps.

    :param config: the planner settings
    :param gamma: discount of the planning return
    :param compile: run the model rollouts (:func:`rollout_returns`, :func:`prior_trajectories`)
        as ``torch.compile`` graphs. On a CPU most of a rollout's time goes to the LayerNorm,
        SiLU and softmax passes between small matmuls; a whole-rollout graph fuses them (needs a
        C++ compiler; compiles once per batch shape)
    """

    def __init__(self, config: PlannerConfig, gamma: float, compile: bool = False) -> None:
        self.config, self.gamma = config, gamma
        self.compile = compile
        self._rollout_returns = th.compile(rollout_returns, dynamic=False) if compile else rollout_returns
        self._prior_trajectories = th.compile(prior_trajectories, dynamic=False) if compile else prior_trajectories

    def plan(
        self,
        model: LatentModel,
        z: th.Tensor,
        init_plan: th.Tensor,
        task: th.Tensor | None = None,
        action_mask: th.Tensor | None = None,
        deterministic: bool = False,
        generator: th.Generator | None = None,
    ) -> PlanResult:
        """
        Plan one action for each of the ``B`` latents.

        :param model: the latent model
        :param z: ``(B, L)`` current latents
        :param init_plan: ``(B, H, A)`` warm-start mean (see :func:`shift_plan`)
        :param task: optional ``(B,)`` task ids
        :param action_mask: optional ``(B, A)`` 0/1 mask of the valid action dims
        :param deterministic: return the mean first action instead of a sample
        :param generator: RNG for all sampling (seeded per call for deterministic plans)
        """
        cfg = self.config
        batch, horizon, act_dim = init_plan.shape
        n_prior, n_gauss = cfg.num_prior_trajectories, cfg.num_samples - cfg.num_prior_trajectories
        mask = None if action_mask is None else action_mask[:, None, None, :]
        prior_actions = self._prior_trajectories(model, z, task, horizon, n_prior, generator) if n_prior > 0 else None
        if prior_actions is not None and mask is not None:
            prior_actions = prior_actions * mask
        z_n = z[:, None].expand(-1, cfg.num_samples, -1)
        mean = init_plan
        std = th.full_like(init_plan, cfg.max_std)
        if action_mask is not None:
            std = std * action_mask[:, None, :]
        for _ in range(cfg.iterations):
            noise = th.randn(batch, n_gauss, horizon, act_dim, generator=generator, device=z.device, dtype=z.dtype)
            actions = (mean[:, None] + std[:, None] * noise).clamp(-1.0, 1.0)
            if mask is not None:
                actions = actions * mask
            if prior_actions is not None:
                actions = th.cat([prior_actions, actions], dim=1)
            values = self._rollout_returns(model, z_n, actions, task, self.gamma, generator)
            refit = mppi_refit(actions, values, cfg.num_elites, cfg.temperature, cfg.min_std, cfg.max_std, action_mask)
            mean, std = refit.mean, refit.std
        first_mean, first_std = mean[:, 0], std[:, 0]
        if deterministic:
            action = first_mean
        else:
            noise = th.randn(batch, act_dim, generator=generator, device=z.device, dtype=z.dtype)
            action = first_mean + first_std * noise
        # the refit leaves std 0 on masked dims: they are excluded from the density
        log_prob = masked_gaussian_log_prob(action, first_mean, first_std, action_mask)
        return PlanResult(action, first_mean, first_std, mean, log_prob)
