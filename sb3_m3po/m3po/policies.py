"""M3PO policy: world model, policy prior, value function and MPPI planner behind SB3's policy API."""

from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.common.utils import is_vectorized_observation
from torch import nn
from torch.distributions import Normal

from sb3_m3po.common.layers import mlp
from sb3_m3po.common.math import masked_gaussian_entropy, masked_gaussian_log_prob, symexp, symlog
from sb3_m3po.common.utils import NonFiniteError, check_observation_space, flatten_observation
from sb3_m3po.m3po.planner import MPPIPlanner, PlannerConfig, shift_plan
from sb3_m3po.m3po.world_model import WorldModel

# Network sizes. "cpu" is our default for 2-core machines; "1M"/"5M" follow TD-MPC2's presets.
# The "cpu" preset keeps 2 Q heads (clipped double Q): on 2 cores the 5-head ensemble was
# ~25 % of a world-model step.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "cpu": {"latent_dim": 64, "enc_dim": 128, "mlp_dim": 128, "prior_dim": 128, "num_q": 2},
    "1M": {"latent_dim": 128, "enc_dim": 256, "mlp_dim": 384, "prior_dim": 384, "num_q": 5},
    "5M": {"latent_dim": 512, "enc_dim": 256, "mlp_dim": 512, "prior_dim": 512, "num_q": 5},
}

# How the value head's output maps to a value: "identity" (SB3's PPO), or "symlog" (the head
# predicts symlog(V) and the loss is the MSE of symlog(V) against symlog(returns), DreamerV3's
# scale-free regression)
VALUE_TRANSFORMS = ("identity", "symlog")

# Seed of the planner's RNG for deterministic=True, so that a deterministic action
# is a pure function of (observation, warm-start plan) and survives save/load.
DETERMINISTIC_PLANNER_SEED = 0


class ActResult(NamedTuple):
    action: th.Tensor  # (B, A) executed action before clipping, in [-1, 1] units
    value: th.Tensor  # (B, 1)
    log_prob: th.Tensor  # (B,) prior log-probability of the action
    behaviour_log_prob: th.Tensor  # (B,) log-probability under the distribution it was drawn from
    plan: th.Tensor  # (B, H, A) refitted plan for the next warm start
    behaviour_std: th.Tensor  # (B, A)
    prior_mean: th.Tensor  # (B, A) mean of the prior the log-probability was taken under


class PriorEvaluation(NamedTuple):
    values: th.Tensor  # (B, 1)
    log_prob: th.Tensor  # (B,) prior log-probability of the given actions (valid dims)
    entropy: th.Tensor  # (B,) prior entropy (valid dims)
    mean: th.Tensor  # (B, A) prior mean
    std: th.Tensor  # (B, A) prior std
    mask: th.Tensor | None  # (B, A) valid action dims (None: all)


class M3POPolicy(BasePolicy):
    """
    Policy of M3PO.

    Acting encodes the observation with the world model's encoder and plans with MPPI
    (guided by the Gaussian policy prior); ``use_planner=False`` acts with the prior.
    The prior and the value function read the detached latent, so PPO trains them and
    only the world-model losses shape the encoder. Actions are in ``[-1, 1]`` and are
    rescaled to the env's bounds by :meth:`predict`.

    :param observation_space: Box, or Dict of Box (flattened in sorted key order)
    :param action_space: bounded Box
    :param lr_schedule: learning-rate schedule of the prior/value optimizer
    :param model_size: preset of network sizes, one of ``MODEL_PRESETS``
    :param latent_dim: overrides the preset's latent size
    :param enc_dim: overrides the preset's encoder width
    :param mlp_dim: overrides the preset's world-model width
    :param prior_dim: overrides the preset's prior/value width
    :param num_q: overrides the preset's Q ensemble size
    :param num_bins: two-hot bins
    :param vmin: lowest bin (symlog space)
    :param vmax: highest bin (symlog space)
    :param simnorm_dim: SimNorm group size
    :param num_tasks: number of tasks (1: single task, no task embedding). With ``num_tasks > 1`` the
        observations follow the multi-task convention of :mod:`sb3_m3po.common.multitask`: the last
        ``num_tasks`` entries are the one-hot task id, which the encoder replaces by the task embedding
    :param task_dim: task embedding size
    :param task_action_dims: action size of every task (``num_tasks`` entries, None: all use the full
        action); the other action dimensions are masked in the prior, the planner and execution
    :param log_std_init: initial log std of the prior
    :param value_transform: ``"identity"`` (the value head outputs V, as SB3's PPO) or ``"symlog"``
        (it outputs ``symlog(V)`` and the value loss is taken in symlog space; for returns in the
        hundreds, which a raw head reaches only after thousands of Adam steps)
    :param planner: MPPI settings
    :param use_planner: plan with MPPI (True) or act with the prior alone (False)
    :param wm_learning_rate: Adam learning rate of the world model
    :param enc_lr_scale: encoder learning-rate multiplier
    :param optimizer_class: optimizer of the prior/value (and world model)
    :param optimizer_kwargs: extra optimizer arguments
    :param torch_compile: run the planner's model rollouts and the world-model loss (forward and
        backward) as ``torch.compile`` graphs (needs a C++ compiler on CPU). Whole graphs fuse the
        LayerNorm/SiLU/softmax passes between the small matmuls (see
        ``benchmarks/planner_bench.py --compile``); costs tens of seconds of compilation at the start
        and again for each new batch shape
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        model_size: str = "cpu",
        latent_dim: int | None = None,
        enc_dim: int | None = None,
        mlp_dim: int | None = None,
        prior_dim: int | None = None,
        num_q: int | None = None,
        num_bins: int = 101,
        vmin: float = -10.0,
        vmax: float = 10.0,
        simnorm_dim: int = 8,
        num_tasks: int = 1,
        task_dim: int = 16,
        task_action_dims: list[int] | None = None,
        log_std_init: float = 0.0,
        value_transform: str = "identity",
        planner: PlannerConfig | None = None,
        use_planner: bool = True,
        wm_learning_rate: float = 3e-4,
        enc_lr_scale: float = 0.3,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        torch_compile: bool = False,
        use_sde: bool = False,
    ) -> None:
        if model_size not in MODEL_PRESETS:
            raise ValueError(f"model_size must be one of {sorted(MODEL_PRESETS)}, got {model_size!r}")
        assert not use_sde, "M3PO does not support gSDE (use_sde=True)"
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=False,
        )
        if optimizer_class is th.optim.Adam and not {"foreach", "fused"} & set(self.optimizer_kwargs):
            # one fused kernel for all parameters: the per-tensor loop of the default CPU Adam
            # costs more than the arithmetic for these small networks
            self.optimizer_kwargs = {**self.optimizer_kwargs, "fused": True}
        preset = MODEL_PRESETS[model_size]
        self.model_size = model_size
        self.latent_dim = latent_dim or preset["latent_dim"]
        self.enc_dim = enc_dim or preset["enc_dim"]
        self.mlp_dim = mlp_dim or preset["mlp_dim"]
        self.prior_dim = prior_dim or preset["prior_dim"]
        self.num_q = num_q or preset["num_q"]
        self.num_bins, self.vmin, self.vmax = num_bins, vmin, vmax
        self.simnorm_dim, self.num_tasks, self.task_dim = simnorm_dim, num_tasks, task_dim
        self.log_std_init = log_std_init
        if value_transform not in VALUE_TRANSFORMS:
            raise ValueError(f"value_transform must be one of {VALUE_TRANSFORMS}, got {value_transform!r}")
        self.value_transform = value_transform
        self.planner_config = planner or PlannerConfig()
        self.use_planner = use_planner
        self.wm_learning_rate, self.enc_lr_scale = wm_learning_rate, enc_lr_scale
        self.obs_dim = check_observation_space(observation_space)
        self.action_dim = int(np.prod(action_space.shape))
        self.task_action_dims = self._check_tasks(num_tasks, task_action_dims)
        self.torch_compile = torch_compile
        self._build(lr_schedule)

    def _check_tasks(self, num_tasks: int, task_action_dims: list[int] | None) -> list[int] | None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if num_tasks > 1 and self.obs_dim <= num_tasks:
            raise ValueError(
                f"num_tasks={num_tasks} needs observations that end with a {num_tasks}-entry one-hot task id "
                f"after the task's own observation, but the observation has only {self.obs_dim} entries"
            )
        if task_action_dims is None:
            return None
        dims = [int(d) for d in task_action_dims]
        if len(dims) != num_tasks or not all(1 <= d <= self.action_dim for d in dims):
            raise ValueError(
                f"task_action_dims must give {num_tasks} action sizes in [1, {self.action_dim}] (one per task), got {dims}"
            )
        return dims

    def _build(self, lr_schedule: Schedule) -> None:
        # multi-task: the encoder sees the padded observation without the one-hot (the embedding carries the task)
        task_id_dims = self.num_tasks if self.num_tasks > 1 else 0
        self.world_model = WorldModel(
            self.obs_dim - task_id_dims,
            self.action_dim,
            latent_dim=self.latent_dim,
            enc_dim=self.enc_dim,
            mlp_dim=self.mlp_dim,
            num_q=self.num_q,
            num_bins=self.num_bins,
            vmin=self.vmin,
            vmax=self.vmax,
            simnorm_dim=self.simnorm_dim,
            num_tasks=self.num_tasks,
            task_dim=self.task_dim,
        )
        in_dim = self.latent_dim + self.world_model.task_dim
        self.actor = mlp(in_dim, [self.prior_dim, self.prior_dim], self.action_dim)
        self.value_net = mlp(in_dim, [self.prior_dim, self.prior_dim], 1)
        self.log_std = nn.Parameter(th.full((self.action_dim,), self.log_std_init))
        # Small initial prior means, as SB3 does for PPO's action head
        actor_out = self.actor[-1]
        assert isinstance(actor_out, nn.Linear), f"the prior must end in nn.Linear, got {actor_out}"
        nn.init.orthogonal_(actor_out.weight, gain=0.01)
        nn.init.zeros_(actor_out.bias)
        self.planner = MPPIPlanner(self.planner_config, compile=self.torch_compile)
        # the algorithm calls this for the world-model loss; compiled, its backward is one graph too
        losses = self.world_model.losses
        self.world_model_losses = th.compile(losses, dynamic=False) if self.torch_compile else losses
        masks = None
        if self.task_action_dims is not None:
            masks = (th.arange(self.action_dim)[None, :] < th.tensor(self.task_action_dims)[:, None]).float()
        # (num_tasks, action_dim) 0/1, derived from the constructor arguments, so not saved in the state dict
        self.action_masks: th.Tensor | None
        self.register_buffer("action_masks", masks, persistent=False)
        prior_params = [*self.actor.parameters(), *self.value_net.parameters(), self.log_std]
        self.optimizer = self.optimizer_class(prior_params, lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        wm = self.world_model
        encoder_params = list(wm.encoder.parameters())
        other_params = [
            p for n, p in wm.named_parameters() if p.requires_grad and not n.startswith(("encoder.", "target_q_ensemble."))
        ]
        self.wm_optimizer = self.optimizer_class(
            [
                {"params": encoder_params, "lr": self.wm_learning_rate * self.enc_lr_scale},
                {"params": other_params, "lr": self.wm_learning_rate},
            ],
            lr=self.wm_learning_rate,
            **self.optimizer_kwargs,  # type: ignore[call-arg]
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            model_size=self.model_size,
            latent_dim=self.latent_dim,
            enc_dim=self.enc_dim,
            mlp_dim=self.mlp_dim,
            prior_dim=self.prior_dim,
            num_q=self.num_q,
            num_bins=self.num_bins,
            vmin=self.vmin,
            vmax=self.vmax,
            simnorm_dim=self.simnorm_dim,
            num_tasks=self.num_tasks,
            task_dim=self.task_dim,
            task_action_dims=self.task_action_dims,
            log_std_init=self.log_std_init,
            value_transform=self.value_transform,
            planner=self.planner_config,
            use_planner=self.use_planner,
            wm_learning_rate=self.wm_learning_rate,
            enc_lr_scale=self.enc_lr_scale,
            torch_compile=self.torch_compile,
            lr_schedule=self._dummy_schedule,
        )
        return data

    # --- task ids and action masks (multi-task convention of sb3_m3po.common.multitask)
    def task_ids(self, obs: th.Tensor) -> th.Tensor | None:
        """
        Task ids ``(...)`` read from the one-hot at the end of the observations ``(..., obs_dim)`` (None for one task).

        The argmax is unchanged by ``VecNormalize``, which normalises every entry of the one-hot
        with increasing affine maps, so the ids stay right on normalised observations.
        """
        if self.num_tasks == 1:
            return None
        return obs[..., -self.num_tasks :].argmax(-1)

    def action_mask(self, task: th.Tensor | None) -> th.Tensor | None:
        """``(..., action_dim)`` 0/1 mask of the valid action dims of ``task`` ``(...)`` (None: all valid)."""
        if self.action_masks is None or task is None:
            return None
        return self.action_masks[task]

    # --- LatentModel protocol used by the planner
    def next(self, z: th.Tensor, action: th.Tensor, task: th.Tensor | None) -> th.Tensor:
        return self.world_model.next(z, action, task)

    def reward(self, z: th.Tensor, action: th.Tensor, task: th.Tensor | None) -> th.Tensor:
        return self.world_model.reward(z, action, task)

    def terminal_value(self, z: th.Tensor, task: th.Tensor | None, generator: th.Generator | None) -> th.Tensor:
        return self.world_model.q_value(z, self.prior_mean(z, task), task, generator=generator)

    def prior_sample(self, z: th.Tensor, task: th.Tensor | None, generator: th.Generator | None) -> th.Tensor:
        mean = self.prior_mean(z, task)
        noise = th.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        mask = self.action_mask(task)
        if mask is not None:
            noise = noise * mask
        return mean + self.log_std.exp() * noise

    # --- prior and value
    def _head_input(self, z: th.Tensor, task: th.Tensor | None) -> th.Tensor:
        # Detached latent and task embedding: PPO trains the prior and value heads, and only the
        # world-model losses shape the encoder and the embedding
        return self.world_model.with_task(z, task).detach()

    def prior_mean(self, z: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        """Prior mean in ``[-1, 1]``, 0 on the masked action dims of multi-task policies."""
        # tanh keeps the mean inside the action bounds: the planner's terminal value and the TD
        # targets evaluate Q at this action, and Q is only trained on executed (in-bounds) actions
        mean = th.tanh(self.actor(self._head_input(z, task)))
        mask = self.action_mask(task)
        return mean if mask is None else mean * mask

    def prior_distribution(self, z: th.Tensor, task: th.Tensor | None = None) -> Normal:
        """
        The prior Gaussian over all action dims; use :meth:`prior_log_prob` and :meth:`prior_entropy`,
        which count the valid dims only.
        """
        mean = self.prior_mean(z, task)
        return Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)

    def prior_log_prob(self, dist: Normal, actions: th.Tensor, task: th.Tensor | None) -> th.Tensor:
        """Log-probability of ``actions`` summed over the task's valid action dims."""
        return masked_gaussian_log_prob(actions, dist.mean, dist.stddev, self.action_mask(task))

    def prior_entropy(self, dist: Normal, task: th.Tensor | None) -> th.Tensor:
        """Entropy summed over the task's valid action dims."""
        return masked_gaussian_entropy(dist.stddev, self.action_mask(task))

    def value(self, z: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        """State value in return units, ``(..., 1)``."""
        out = self.value_net(self._head_input(z, task))
        return symexp(out) if self.value_transform == "symlog" else out

    def value_loss_space(self, values: th.Tensor) -> th.Tensor:
        """
        Map values or returns into the space the value loss is taken in.

        With ``value_transform="symlog"`` the value head's output is ``symlog(V)``: returns of a few
        hundred (Meta-World) are then a few units away from the initial output, where a raw head
        needs thousands of Adam steps to get there.
        """
        return symlog(values) if self.value_transform == "symlog" else values

    def encode(self, obs: th.Tensor) -> th.Tensor:
        return self.world_model.encode(obs, self.task_ids(obs))

    def act(
        self,
        obs: th.Tensor,
        init_plan: th.Tensor,
        deterministic: bool = False,
        generator: th.Generator | None = None,
    ) -> ActResult:
        """
        Choose actions for a batch of flat observations.

        :param obs: ``(B, obs_dim)``
        :param init_plan: ``(B, H, A)`` warm start (already shifted and reset)
        """
        task = self.task_ids(obs)
        mask = self.action_mask(task)
        z = self.world_model.encode(obs, task)
        prior = self.prior_distribution(z, task)
        if self.use_planner:
            result = self.planner.plan(
                self, z, init_plan, task, action_mask=mask, deterministic=deterministic, generator=generator
            )
            action, plan, std = result.action, result.plan, result.std
            behaviour_log_prob = result.log_prob
        else:
            if deterministic:
                action = prior.mean
            else:
                noise = th.randn(prior.mean.shape, generator=generator, device=obs.device, dtype=obs.dtype)
                action = prior.mean + prior.stddev * (noise if mask is None else noise * mask)
            plan, std = init_plan, prior.stddev if mask is None else prior.stddev * mask
            behaviour_log_prob = None
        log_prob = self.prior_log_prob(prior, action, task)
        return ActResult(
            action,
            self.value(z, task),
            log_prob,
            log_prob if behaviour_log_prob is None else behaviour_log_prob,
            plan,
            std,
            prior.mean,
        )

    def initial_plan(self, n_envs: int) -> th.Tensor:
        return th.zeros(n_envs, self.planner_config.horizon, self.action_dim, device=self.device)

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:  # type: ignore[override]
        """SB3 on-policy signature: actions, values and (behaviour) log-probabilities, with a cold-start plan."""
        out = self.act(obs, self.initial_plan(obs.shape[0]), deterministic)
        return out.action, out.value, out.behaviour_log_prob

    def evaluate_actions(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Values, prior log-probabilities and prior entropy of stored flat observations and actions."""
        out = self.evaluate_prior(obs, actions)
        return out.values, out.log_prob, out.entropy

    def evaluate_prior(self, obs: th.Tensor, actions: th.Tensor) -> PriorEvaluation:
        """:meth:`evaluate_actions` plus the prior Gaussian itself (for the closed-form KL of the update)."""
        task = self.task_ids(obs)
        with th.no_grad():
            z = self.world_model.encode(obs, task)
        dist = self.prior_distribution(z, task)
        return PriorEvaluation(
            self.value(z, task),
            self.prior_log_prob(dist, actions, task),
            self.prior_entropy(dist, task),
            dist.mean,
            dist.stddev,
            self.action_mask(task),
        )

    def predict_values(self, obs: th.Tensor) -> th.Tensor:
        return self.value(self.encode(obs), self.task_ids(obs))

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        assert isinstance(observation, th.Tensor)
        return self.forward(observation, deterministic)[0]

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        Actions in the env's bounds, and the warm-start plan as recurrent ``state``.

        Pass the returned state and ``episode_start`` back on the next call (as
        ``evaluate_policy`` does) to warm-start MPPI; without them every call plans from scratch.
        With ``deterministic=True`` the planner's sampling uses a fixed seed, so the
        action is a deterministic function of the observation and state.
        """
        self.set_training_mode(False)
        # SB3 handles Dict observations here too; its annotation names only arrays
        vectorized = is_vectorized_observation(observation, self.observation_space)  # type: ignore[arg-type]
        if isinstance(observation, dict):
            n_envs = len(next(iter(observation.values()))) if vectorized else 1
        else:
            n_envs = observation.shape[0] if vectorized else 1
        flat = flatten_observation(observation, n_envs)
        if not np.all(np.isfinite(flat)):
            raise NonFiniteError("predict() got a non-finite (NaN or inf) observation")
        obs = th.as_tensor(flat, device=self.device)
        if state is None:
            plan = self.initial_plan(n_envs)
        else:
            plan = th.as_tensor(np.asarray(state[0]), device=self.device, dtype=th.float32)
            plan = plan.reshape(n_envs, self.planner_config.horizon, self.action_dim)
            reset = None if episode_start is None else th.as_tensor(np.asarray(episode_start), device=self.device).bool()
            plan = shift_plan(plan, reset)
        generator = None
        if deterministic:
            generator = th.Generator(device=self.device)
            generator.manual_seed(DETERMINISTIC_PLANNER_SEED)
        with th.inference_mode():
            out = self.act(obs, plan, deterministic, generator)
        actions = self.unscale_action(np.clip(out.action.cpu().numpy(), -1.0, 1.0))
        assert self.action_space.shape is not None, "M3PO needs a Box action space"
        actions = actions.reshape((-1, *self.action_space.shape))
        if not vectorized:
            actions = actions.squeeze(axis=0)
        new_state = (out.plan.reshape(n_envs, -1).cpu().numpy(),)
        return actions, new_state
