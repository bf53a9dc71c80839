"""Implicit (decoder-free) world model: encoder, latent dynamics, reward and Q ensemble."""

import copy
from typing import NamedTuple

import torch as th
from torch import nn

from sb3_m3po.common.layers import EnsembleMLP, SimNorm, mlp, small_init_
from sb3_m3po.common.math import soft_ce, two_hot_inv
from sb3_m3po.common.task_ids import TaskIdCodec
from sb3_m3po.m3po.config import WorldModelConfig, WorldModelTrainingConfig


class WorldModelLosses(NamedTuple):
    total: th.Tensor
    consistency: th.Tensor
    reward: th.Tensor
    value: th.Tensor
    termination: th.Tensor  # 0 without a termination head
    latents: th.Tensor  # (H, B, L) latents the actions were taken from (with gradient)


class WorldModel(nn.Module):
    """
    TD-MPC2-style implicit world model with an optional learned task embedding.

    Every component sees ``concat(input, e)`` where ``e = task_embedding(task_id)``
    (max-norm 1) when ``num_tasks > 1``; with a single task no embedding is used.

    :param obs_dim: flat observation size without the task id
    :param action_dim: action size (actions live in ``[-1, 1]``)
    :param config: network sizes
    :param num_tasks: number of tasks (1 disables the task embedding); multi-task observations
        end with the one-hot id of :class:`~sb3_m3po.common.task_ids.TaskIdCodec`
    :param episodic: build the termination head (see :meth:`add_termination_head`)
    """

    def __init__(
        self, obs_dim: int, action_dim: int, config: WorldModelConfig, num_tasks: int = 1, episodic: bool = False
    ) -> None:
        super().__init__()
        self.obs_dim, self.action_dim, self.latent_dim = obs_dim, action_dim, config.latent_dim
        self.num_q, self.num_bins, self.vmin, self.vmax = config.num_q, config.num_bins, config.vmin, config.vmax
        self.codec = TaskIdCodec(num_tasks)
        self.task_dim = config.task_dim if num_tasks > 1 else 0
        self.task_embedding = nn.Embedding(num_tasks, config.task_dim, max_norm=1.0) if num_tasks > 1 else None
        t, latent, width = self.task_dim, config.latent_dim, [config.mlp_dim, config.mlp_dim]
        self.encoder = mlp(obs_dim + t, [config.enc_dim], latent, SimNorm(config.simnorm_dim))
        self.dynamics = mlp(latent + action_dim + t, width, latent, SimNorm(config.simnorm_dim))
        self.reward_head = mlp(latent + action_dim + t, width, config.num_bins)
        self.q_ensemble = EnsembleMLP(config.num_q, latent + action_dim + t, width, config.num_bins)
        self.small_init = config.weight_init == "small"
        if self.small_init:
            small_init_(self)
        # Zero-init output layers so initial reward/Q predictions are 0 (as in TD-MPC2)
        reward_out = self.reward_head[-1]
        assert isinstance(reward_out, nn.Linear), f"the reward head must end in nn.Linear, got {reward_out}"
        nn.init.zeros_(reward_out.weight)
        nn.init.zeros_(reward_out.bias)
        nn.init.zeros_(self.q_ensemble.head.weight)
        nn.init.zeros_(self.q_ensemble.head.bias)
        self.target_q_ensemble = copy.deepcopy(self.q_ensemble).requires_grad_(False)
        self._mlp_dim = config.mlp_dim
        self.termination_head: nn.Module | None = None
        if episodic:
            self.add_termination_head()

    def add_termination_head(self) -> nn.Module:
        """
        Build the termination head (a logit of ``P(terminated)`` from the latent reached). Its initialisation draws
        from a forked RNG, so adding it changes no other random number of a run.
        """
        with th.random.fork_rng(devices=[]):
            head = mlp(self.latent_dim + self.task_dim, [self._mlp_dim], 1)
            if self.small_init:
                small_init_(head)
        device = next(self.parameters()).device
        self.termination_head = head.to(device)
        return self.termination_head

    def termination(self, z: th.Tensor, task: th.Tensor | None = None) -> th.Tensor | None:
        """Predicted probability that the latent ``z`` is terminal, ``(..., 1)`` (None without a termination head)."""
        if self.termination_head is None:
            return None
        return th.sigmoid(self.termination_head(self.with_task(z, task)))

    def with_task(self, x: th.Tensor, task: th.Tensor | None) -> th.Tensor:
        """
        Concatenate the task embedding to ``x``.

        ``task`` has the leading shape of ``x``, or fewer dims: time-major ``x`` ``(H, B, ...)`` with
        ``task`` ``(B,)`` (the world-model losses) broadcasts over the first dims; otherwise the
        embedding broadcasts over the dims after the task's (``x`` ``(B, N, ...)``, ``task`` ``(B,)``).
        """
        if self.task_embedding is None:
            return x
        assert task is not None, "a multi-task world model needs task ids"
        emb = self.task_embedding(task)
        lead = x.shape[:-1]
        if task.dim() < len(lead) and tuple(task.shape) == tuple(lead[len(lead) - task.dim() :]):
            emb = emb.view(*([1] * (len(lead) - task.dim())), *emb.shape)
        while emb.dim() < x.dim():
            emb = emb.unsqueeze(-2)
        return th.cat([x, emb.expand(*x.shape[:-1], emb.shape[-1])], dim=-1)

    def encode(self, obs: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        """Latent of observations in the env's convention (multi-task: with the one-hot id, which is dropped)."""
        return self.encoder(self.with_task(self.codec.strip(obs), task))

    def next(self, z: th.Tensor, action: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        return self.dynamics(self.with_task(th.cat([z, action], -1), task))

    def reward_logits(self, z: th.Tensor, action: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        return self.reward_head(self.with_task(th.cat([z, action], -1), task))

    def reward(self, z: th.Tensor, action: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        """Predicted reward, shape ``(..., 1)``."""
        return two_hot_inv(self.reward_logits(z, action, task), self.vmin, self.vmax)

    def q_logits(
        self,
        z: th.Tensor,
        action: th.Tensor,
        task: th.Tensor | None = None,
        target: bool = False,
        members: th.Tensor | None = None,
    ) -> th.Tensor:
        """Logits of the Q heads, ``(num_members, ..., num_bins)``."""
        net = self.target_q_ensemble if target else self.q_ensemble
        return net(self.with_task(th.cat([z, action], -1), task), members)

    def q_value(
        self,
        z: th.Tensor,
        action: th.Tensor,
        task: th.Tensor | None = None,
        target: bool = False,
        reduce: str = "avg",
        generator: th.Generator | None = None,
    ) -> th.Tensor:
        """
        Scalar Q from two random heads of the ensemble, combined by ``avg`` or ``min``.

        :return: shape ``(..., 1)``
        """
        members = None
        if self.num_q > 2:
            device = generator.device if generator is not None else z.device
            members = th.randperm(self.num_q, generator=generator, device=device)[:2].to(z.device)
        q = two_hot_inv(self.q_logits(z, action, task, target, members), self.vmin, self.vmax)
        return q.min(0).values if reduce == "min" else q.mean(0)

    @th.no_grad()
    def soft_update_target(self, tau: float) -> None:
        """Polyak-average the online Q ensemble into the target ensemble."""
        for p, tp in zip(self.q_ensemble.parameters(), self.target_q_ensemble.parameters()):
            tp.lerp_(p, tau)

    def losses(
        self,
        obs: th.Tensor,
        actions: th.Tensor,
        rewards: th.Tensor,
        target_z: th.Tensor,
        td_targets: th.Tensor,
        task: th.Tensor | None,
        config: WorldModelTrainingConfig,
        terminated: th.Tensor | None = None,
        mask: th.Tensor | None = None,
    ) -> WorldModelLosses:
        """
        Multi-step latent consistency, reward and Q losses on ``H``-step subsequences.

        The stop-gradient sits on the *target* encodings of the real next observations;
        the predicted latents keep their gradient through the dynamics and encoder.

        :param obs: ``(B, obs_dim)`` first observation
        :param actions: ``(H, B, A)``
        :param rewards: ``(H, B, 1)``
        :param target_z: ``(H, B, L)`` encodings of the real next observations (no gradient)
        :param td_targets: ``(H, B, 1)`` precomputed (no gradient) TD targets
        :param config: the loss weights (``rho`` and the coefficients)
        :param terminated: ``(H, B, 1)`` real terminations (not truncations), for the termination head
        :param mask: ``(H, B, 1)`` 0 on the steps after a termination ended the subsequence's episode (None: all 1)
        """
        rho = config.rho
        horizon = actions.shape[0]
        z = self.encode(obs, task)
        latents = [z]
        consistency = obs.new_zeros(())
        for t in range(horizon):
            z = self.next(z, actions[t], task)
            error = (z - target_z[t]) ** 2
            step_loss = error.mean() if mask is None else (error.mean(-1, keepdim=True) * mask[t]).mean()
            consistency = consistency + rho**t * step_loss
            latents.append(z)
        zs = th.stack(latents[:-1])  # (H, B, L): latents the actions were taken from
        weights = rho ** th.arange(horizon, device=obs.device, dtype=obs.dtype).view(horizon, 1, 1)
        if mask is not None:
            weights = weights * mask
        reward_loss = (soft_ce(self.reward_logits(zs, actions, task), rewards, self.vmin, self.vmax) * weights).mean()
        q_logits = self.q_logits(zs, actions, task)  # (K, H, B, bins)
        q_ce = soft_ce(q_logits, td_targets.unsqueeze(0).expand(self.num_q, -1, -1, -1), self.vmin, self.vmax)
        value_loss = (q_ce * weights.unsqueeze(0)).mean()
        consistency = consistency / horizon
        total = config.consistency_coef * consistency + config.reward_coef * reward_loss + config.value_coef * value_loss
        termination_loss = obs.new_zeros(())
        if self.termination_head is not None:
            assert terminated is not None, "a world model with a termination head needs the real terminations"
            logits = self.termination_head(self.with_task(th.stack(latents[1:]), task))  # of the latents reached
            bce = th.nn.functional.binary_cross_entropy_with_logits(logits, terminated, reduction="none")
            termination_loss = (bce * weights).mean()
            total = total + config.termination_coef * termination_loss
        return WorldModelLosses(total, consistency, reward_loss, value_loss, termination_loss, zs)
