"""M3PO policy: world model, policy prior, value function and MPPI planner behind SB3's policy API."""

import math
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.common.utils import is_vectorized_observation
from torch import nn
from torch.distributions import Normal

from sb3_m3po.common.layers import mlp, small_init_
from sb3_m3po.common.math import masked_gaussian_entropy, masked_gaussian_log_prob
from sb3_m3po.common.task_ids import TaskIdCodec
from sb3_m3po.common.utils import NonFiniteError, check_observation_space, flatten_observation
from sb3_m3po.m3po.config import PlannerConfig, PriorConfig, make_config, model_config
from sb3_m3po.m3po.planner import MPPIPlanner, shift_plan
from sb3_m3po.m3po.world_model import WorldModel

# Base seed of the planner's RNG for deterministic=True: a deterministic action is a pure function of the
# observation and the recurrent state (warm-start plan, steps since the episode start), so it survives
# save/load. The step count moves the seed on every call: MPPI noise fixed across steps can hold the plan at
# a fixed point from which the same samples never find a way out (TD-MPC2's evaluation draws fresh noise).
DETERMINISTIC_PLANNER_SEED = 0


class ActResult(NamedTuple):
    action: th.Tensor  # (B, A) executed action before clipping, in [-1, 1] units
    value: th.Tensor  # (B, 1)
    log_prob: th.Tensor  # (B,) prior log-probability of the action
    behaviour_log_prob: th.Tensor  # (B,) log-probability under the distribution it was drawn from
    plan: th.Tensor  # (B, H, A) refitted plan for the next warm start
    behaviour_std: th.Tensor  # (B, A)


class M3POPolicy(BasePolicy):
    """
    Policy of M3PO.

    Acting encodes the observation with the world model's encoder and plans with MPPI
    (guided by the Gaussian policy prior); ``use_planner=False`` acts with the prior.
    The prior and the value function read the detached latent, so PPO trains them and
    only the world-model losses shape the encoder. Actions are in ``[-1, 1]`` and are
    rescaled to the env's bounds by :meth:`predict`.

    :param observation_space: Box, or Dict of Box (flattened in sorted key order)
    :param action_space: bounded Box (any shape; the networks see it flat)
    :param lr_schedule: learning-rate schedule of the prior/value optimizer
    :param gamma: discount of the planner's returns (the algorithm's ``gamma``)
    :param model_size: preset of network sizes, a key of :data:`~sb3_m3po.m3po.config.MODEL_PRESETS`
    :param architecture: fields of :class:`~sb3_m3po.m3po.config.WorldModelConfig` that replace the preset's
    :param net_arch: hidden layers of the prior and value MLPs: a list for both, or ``dict(pi=[...], vf=[...])``
        as in SB3 (None: two layers of the preset's ``prior_dim``)
    :param activation_fn: hidden activation of the prior and value MLPs (the world model keeps SiLU,
        TD-MPC2's Mish being several times slower on this torch CPU build)
    :param log_std_init: initial log std of the prior
    :param num_tasks: number of tasks (1: single task). With ``num_tasks > 1`` observations end with
        the one-hot task id (:class:`~sb3_m3po.common.task_ids.TaskIdCodec`), which the networks
        replace by a learned task embedding
    :param task_action_dims: action size of every task (``num_tasks`` entries, None: all use the full
        action); the other action dimensions are masked in the prior, the planner and execution
    :param planner: MPPI settings (a :class:`~sb3_m3po.m3po.config.PlannerConfig` or its kwargs)
    :param use_planner: plan with MPPI (True) or act with the prior alone (False)
    :param episodic: build the world model's termination head now (M3PO adds it later with
        ``world_model_kwargs["episodic"]=None``, at the first real termination)
    :param prior: how the prior learns from Q (a :class:`~sb3_m3po.m3po.config.PriorConfig` or its kwargs)
    :param optimizer_class: optimizer of the prior/value
    :param optimizer_kwargs: extra optimizer arguments
    :param torch_compile: run the planner's model rollouts and the world-model loss (forward and
        backward) as ``torch.compile`` graphs (needs a C++ compiler on CPU), fusing the
        LayerNorm/SiLU/softmax passes between the small matmuls; costs tens of seconds of
        compilation at the start and again for each new batch shape
    :param normalize_images: accepted for SB3's policy API; M3PO refuses image observations
    :param features_extractor_class: not supported: the world model's encoder is M3PO's feature
        extractor (size it with ``model_size`` / ``architecture``)
    :param features_extractor_kwargs: not supported (see ``features_extractor_class``)
    :param use_sde: not supported
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        gamma: float = 0.99,
        model_size: str = "cpu",
        architecture: dict[str, Any] | None = None,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.SiLU,
        log_std_init: float = 0.0,
        num_tasks: int = 1,
        task_action_dims: list[int] | None = None,
        planner: PlannerConfig | dict[str, Any] | None = None,
        use_planner: bool = True,
        episodic: bool = False,
        prior: PriorConfig | dict[str, Any] | None = None,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        torch_compile: bool = False,
        normalize_images: bool = True,
        features_extractor_class: type | None = None,
        features_extractor_kwargs: dict[str, Any] | None = None,
        use_sde: bool = False,
    ) -> None:
        if features_extractor_class is not None or features_extractor_kwargs:
            raise ValueError(
                "M3PO does not take features_extractor_class/features_extractor_kwargs: its feature extractor is the "
                "world model's encoder (an MLP into a SimNorm latent), trained by the world-model losses. Size it with "
                "policy_kwargs=dict(model_size='cpu'|'1M'|'5M', architecture=dict(enc_dim=..., latent_dim=...))"
            )
        assert not use_sde, "M3PO does not support gSDE (use_sde=True)"
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=False,
            normalize_images=normalize_images,
        )
        if optimizer_class is th.optim.Adam and not {"foreach", "fused"} & set(self.optimizer_kwargs):
            # one fused kernel for all parameters: the per-tensor loop of the default CPU Adam
            # costs more than the arithmetic for these small networks
            self.optimizer_kwargs = {**self.optimizer_kwargs, "fused": True}
        self.gamma, self.model_size, self.architecture = gamma, model_size, architecture
        self.model_config = model_config(model_size, architecture)
        self.net_arch, self.activation_fn, self.log_std_init = net_arch, activation_fn, log_std_init
        self.planner_config = make_config(PlannerConfig, planner, "planner_kwargs")
        self.use_planner = use_planner
        self.prior_config = make_config(PriorConfig, prior, "prior_kwargs")
        self.obs_dim = check_observation_space(observation_space)
        self.action_dim = int(np.prod(action_space.shape))
        self.num_tasks = num_tasks
        self.codec = TaskIdCodec(num_tasks)
        self.task_action_dims = self._check_tasks(num_tasks, task_action_dims)
        self.torch_compile = torch_compile
        self._build(lr_schedule, episodic)

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

    def _hidden_layers(self) -> tuple[list[int], list[int]]:
        """Hidden widths of the prior and the value MLP, from ``net_arch`` (SB3's formats) or the preset."""
        arch = self.net_arch
        if arch is None:
            width = self.model_config.prior_dim
            return [width, width], [width, width]
        if isinstance(arch, dict):
            unknown = set(arch) - {"pi", "vf"}
            if unknown:
                raise ValueError(f"net_arch takes the keys 'pi' and 'vf' (prior and value MLPs), got {sorted(unknown)}")
            return list(arch.get("pi", [])), list(arch.get("vf", []))
        return list(arch), list(arch)

    def _build(self, lr_schedule: Schedule, episodic: bool) -> None:
        cfg = self.model_config
        self.world_model = WorldModel(self.obs_dim - self.codec.width, self.action_dim, cfg, self.num_tasks, episodic)
        in_dim = cfg.latent_dim + self.world_model.task_dim
        pi_layers, vf_layers = self._hidden_layers()
        prior_outputs = 2 * self.action_dim if self.prior_config.state_std else self.action_dim
        self.actor = mlp(in_dim, pi_layers, prior_outputs, activation_fn=self.activation_fn)
        self.value_net = mlp(in_dim, vf_layers, 1, activation_fn=self.activation_fn)
        self.log_std = nn.Parameter(th.full((self.action_dim,), self.log_std_init))
        if self.model_config.weight_init == "small":
            small_init_(self.actor)
        else:  # small initial prior means, as SB3 does for PPO's action head
            actor_out = self.actor[-1]
            assert isinstance(actor_out, nn.Linear), f"the prior must end in nn.Linear, got {actor_out}"
            nn.init.orthogonal_(actor_out.weight, gain=0.01)
            nn.init.zeros_(actor_out.bias)
        self.planner = MPPIPlanner(self.planner_config, self.gamma, compile=self.torch_compile)
        # the algorithm calls this for the world-model loss; compiled, its backward is one graph too
        losses = self.world_model.losses
        self.world_model_losses = th.compile(losses, dynamic=False) if self.torch_compile else losses
        masks = None
        if self.task_action_dims is not None:
            masks = (th.arange(self.action_dim)[None, :] < th.tensor(self.task_action_dims)[:, None]).float()
        # (num_tasks, action_dim) 0/1, derived from the constructor arguments, so not saved in the state dict
        self.action_masks: th.Tensor | None
        self.register_buffer("action_masks", masks, persistent=False)
        # a state-dependent std comes out of the actor: the global log_std is then unused and left out
        global_std = [] if self.prior_config.state_std else [self.log_std]
        prior_params = [*self.actor.parameters(), *self.value_net.parameters(), *global_std]
        self.optimizer = self.optimizer_class(prior_params, lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]
        # the "sample" objective's steps get their own Adam, as TD-MPC2's policy: its gradient statistics
        # are those of the Q objective alone, whatever PPO does with the shared parameters
        self.prior_optimizer: th.optim.Adam | None = None
        if self.prior_config.objective == "sample":
            actor_params = [*self.actor.parameters(), *global_std]
            self.prior_optimizer = th.optim.Adam(actor_params, lr=self.prior_config.learning_rate, eps=1e-5)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            gamma=self.gamma,
            model_size=self.model_size,
            architecture=self.architecture,
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            log_std_init=self.log_std_init,
            num_tasks=self.num_tasks,
            task_action_dims=self.task_action_dims,
            planner=self.planner_config,
            use_planner=self.use_planner,
            episodic=self.world_model.termination_head is not None,
            prior=self.prior_config,
            torch_compile=self.torch_compile,
            lr_schedule=self._dummy_schedule,
        )
        return data

    # --- task ids and action masks (multi-task convention of sb3_m3po.common.task_ids)
    def task_ids(self, obs: th.Tensor) -> th.Tensor | None:
        """Task ids ``(...)`` of observations ``(..., obs_dim)`` (None for one task)."""
        return self.codec.decode(obs)

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

    def termination(self, z: th.Tensor, task: th.Tensor | None) -> th.Tensor | None:
        return self.world_model.termination(z, task)

    def terminal_value(self, z: th.Tensor, task: th.Tensor | None, generator: th.Generator | None) -> th.Tensor:
        return self.world_model.q_value(z, self.target_action(z, task, generator), task, generator=generator)

    def prior_sample(self, z: th.Tensor, task: th.Tensor | None, generator: th.Generator | None) -> th.Tensor:
        mean, std = self.prior_mean_std(z, task)
        noise = th.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        mask = self.action_mask(task)
        if mask is not None:
            noise = noise * mask
        return mean + std * noise

    def target_action(self, z: th.Tensor, task: th.Tensor | None, generator: th.Generator | None = None) -> th.Tensor:
        """The action at which the TD targets and the planner's terminal value read Q (``prior_kwargs['target_action']``)."""
        if self.prior_config.target_action == "mean":
            return self.prior_mean(z, task)
        return self.squashed_sample(z, task, generator)[0]

    def squashed_sample(
        self,
        z: th.Tensor,
        task: th.Tensor | None,
        generator: th.Generator | None = None,
        head: tuple[th.Tensor, th.Tensor] | None = None,
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        A reparameterised sample ``tanh(u + sigma * eps)`` of the prior (``u`` the pre-tanh mean), and the entropy of
        the Gaussian before the squash times the number of valid action dims (TD-MPC2's scaled entropy), ``(..., 1)``.

        :param head: :meth:`prior_head` of ``z`` if the caller has it already
        """
        pre_mean, log_std = self.prior_head(z, task) if head is None else head
        eps = th.randn(pre_mean.shape, generator=generator, device=pre_mean.device, dtype=pre_mean.dtype)
        mask = self.action_mask(task)
        log_density = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        if mask is None:
            dims = th.full_like(log_density[..., :1], self.action_dim)
        else:
            eps, log_density, dims = eps * mask, log_density * mask, mask.sum(-1, keepdim=True)
        action = th.tanh(pre_mean + eps * log_std.exp())
        if mask is not None:
            action = action * mask
        return action, -log_density.sum(-1, keepdim=True) * dims

    # --- prior and value
    def _head_input(self, z: th.Tensor, task: th.Tensor | None) -> th.Tensor:
        # Detached latent and task embedding: PPO trains the prior and value heads, and only the
        # world-model losses shape the encoder and the embedding
        return self.world_model.with_task(z, task).detach()

    def prior_head(self, z: th.Tensor, task: th.Tensor | None) -> tuple[th.Tensor, th.Tensor]:
        """Pre-tanh mean and log std of the prior, ``(..., action_dim)`` each."""
        out = self.actor(self._head_input(z, task))
        if not self.prior_config.state_std:
            return out, self.log_std.expand_as(out)
        pre_mean, raw_log_std = out.chunk(2, dim=-1)
        low, high = self.prior_config.log_std_min, self.prior_config.log_std_max
        return pre_mean, low + 0.5 * (high - low) * (th.tanh(raw_log_std) + 1)

    def prior_mean_std(
        self, z: th.Tensor, task: th.Tensor | None = None, head: tuple[th.Tensor, th.Tensor] | None = None
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        Prior mean in ``[-1, 1]`` (0 on the masked action dims of multi-task policies) and std.

        :param head: :meth:`prior_head` of ``z`` if the caller has it already
        """
        # tanh keeps the mean inside the action bounds: the planner's terminal value and the TD
        # targets evaluate Q at this action, and Q is only trained on executed (in-bounds) actions
        pre_mean, log_std = self.prior_head(z, task) if head is None else head
        mean = th.tanh(pre_mean)
        mask = self.action_mask(task)
        return (mean if mask is None else mean * mask), log_std.exp()

    def prior_mean(self, z: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        """Prior mean in ``[-1, 1]``, 0 on the masked action dims of multi-task policies."""
        return self.prior_mean_std(z, task)[0]

    def prior_distribution(self, z: th.Tensor, task: th.Tensor | None = None) -> Normal:
        """
        The prior Gaussian over all action dims; use :meth:`prior_log_prob` and :meth:`prior_entropy`,
        which count the valid dims only.
        """
        mean, std = self.prior_mean_std(z, task)
        return Normal(mean, std, validate_args=False)

    def prior_log_prob(self, dist: Normal, actions: th.Tensor, task: th.Tensor | None) -> th.Tensor:
        """Log-probability of ``actions`` summed over the task's valid action dims."""
        return masked_gaussian_log_prob(actions, dist.mean, dist.stddev, self.action_mask(task))

    def prior_entropy(self, dist: Normal, task: th.Tensor | None) -> th.Tensor:
        """Entropy summed over the task's valid action dims."""
        return masked_gaussian_entropy(dist.stddev, self.action_mask(task))

    def value(self, z: th.Tensor, task: th.Tensor | None = None) -> th.Tensor:
        """State value, ``(..., 1)``."""
        return self.value_net(self._head_input(z, task))

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
        )

    def random_act(self, obs: th.Tensor, plan: th.Tensor) -> ActResult:
        """
        Uniform random actions in ``[-1, 1]`` (masked dims 0) for the seed phase (``world_model_kwargs['seed_steps']``),
        with the prior's log-probability and the value as :meth:`act` gives them; the plan passes through unchanged.
        """
        task = self.task_ids(obs)
        mask = self.action_mask(task)
        action = th.rand(obs.shape[0], self.action_dim, device=obs.device, dtype=obs.dtype) * 2.0 - 1.0
        std = th.full_like(action, 1.0 / math.sqrt(3.0))  # of the uniform distribution on [-1, 1]
        if mask is not None:
            action, std = action * mask, std * mask
        valid_dims = action.new_full(action.shape[:1], self.action_dim) if mask is None else mask.sum(-1)
        z = self.world_model.encode(obs, task)
        log_prob = self.prior_log_prob(self.prior_distribution(z, task), action, task)
        return ActResult(action, self.value(z, task), log_prob, -valid_dims * math.log(2.0), plan, std)

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """Flat ``[-1, 1]`` actions ``(B, action_dim)`` clipped and rescaled to the env's bounds and shape."""
        assert self.action_space.shape is not None, "M3PO needs a Box action space"
        return self.unscale_action(np.clip(action, -1.0, 1.0).reshape((-1, *self.action_space.shape)))

    def initial_plan(self, n_envs: int) -> th.Tensor:
        return th.zeros(n_envs, self.planner_config.horizon, self.action_dim, device=self.device)

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:  # type: ignore[override]
        """SB3 on-policy signature: actions, values and (behaviour) log-probabilities, with a cold-start plan."""
        out = self.act(obs, self.initial_plan(obs.shape[0]), deterministic)
        return out.action, out.value, out.behaviour_log_prob

    def evaluate_actions(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Values, prior log-probabilities and prior entropy of stored flat observations and actions."""
        task = self.task_ids(obs)
        with th.no_grad():
            z = self.world_model.encode(obs, task)
        dist = self.prior_distribution(z, task)
        return self.value(z, task), self.prior_log_prob(dist, actions, task), self.prior_entropy(dist, task)

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
        Actions in the env's bounds, and as recurrent ``state`` the warm-start plan and the steps since each
        episode started.

        Pass the returned state and ``episode_start`` back on the next call (as
        ``evaluate_policy`` does) to warm-start MPPI; without them every call plans from scratch.
        With ``deterministic=True`` the action is the centre of the planner's final Gaussian and the planner's
        samples come from an RNG seeded with the step count of the state, so the action is a deterministic
        function of the observation and state while the samples differ from step to step.
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
        steps = np.zeros(n_envs, dtype=np.int64)
        if state is None:
            plan = self.initial_plan(n_envs)
        else:
            plan = th.as_tensor(np.asarray(state[0]), device=self.device, dtype=th.float32)
            plan = plan.reshape(n_envs, self.planner_config.horizon, self.action_dim)
            if len(state) > 1:  # a state of sb3-m3po 0.1 holds the plan only: its step count is 0
                steps = np.asarray(state[1], dtype=np.int64).reshape(n_envs)
            reset = None if episode_start is None else np.asarray(episode_start, dtype=bool).reshape(n_envs)
            steps = steps if reset is None else np.where(reset, 0, steps)
            plan = shift_plan(plan, None if reset is None else th.as_tensor(reset, device=self.device))
        generator = None
        if deterministic:
            generator = th.Generator(device=self.device)
            generator.manual_seed(DETERMINISTIC_PLANNER_SEED + int(steps.max()))
        with th.inference_mode():
            out = self.act(obs, plan, deterministic, generator)
        actions = self.to_env_action(out.action.cpu().numpy())
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, (out.plan.reshape(n_envs, -1).cpu().numpy(), steps + 1)
