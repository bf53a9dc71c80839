"""M3PO: model-based policy optimisation with an implicit world model, MPPI and a hybrid bonus."""

import io
import pathlib
import pickle
import zipfile
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_pkl, load_from_zip_file, save_to_pkl
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

from sb3_m3po.common.buffers import EpisodicReplayBuffer, M3PORolloutBuffer, ReplaySamples
from sb3_m3po.common.callbacks import TaskEpisodeStats, record_task_metric
from sb3_m3po.common.math import (
    VALUE_TARGETS,
    clipped_surrogate,
    exploration_bonus,
    group_mean_std,
    masked_gaussian_kl,
)
from sb3_m3po.common.multitask import configure_task_schedule, get_task_set_spec, task_ids_from_obs
from sb3_m3po.common.signals import deferred_keyboard_interrupt
from sb3_m3po.common.utils import NonFiniteError, flatten_observation, real_next_observation
from sb3_m3po.m3po.planner import PlannerConfig, shift_plan
from sb3_m3po.m3po.policies import M3POPolicy

SelfM3PO = TypeVar("SelfM3PO", bound="M3PO")


class M3PO(PPO):
    """
    Massively Multi-Task Model-Based Policy Optimization (M3PO).

    Each iteration collects ``n_steps x n_envs`` transitions by MPPI planning with an
    implicit world model, adds a bonus from the gap between model-based and model-free
    one-step values to the advantage, runs PPO epochs on the policy prior with
    importance weights against the planner's behaviour distribution, then trains the
    world model on replayed ``horizon``-step subsequences.

    Paper: https://arxiv.org/abs/2506.21782 (world model and planner as TD-MPC2, https://arxiv.org/abs/2310.16828)

    :param policy: the policy model to use (``MlpPolicy``, ``MultiInputPolicy``)
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate of the prior and value function (or a schedule)
    :param n_steps: steps per env per rollout (M3PO is meant to run several envs planned in one batch;
        its shipped configuration uses 8, so a rollout is 512 transitions)
    :param batch_size: PPO minibatch size
    :param n_epochs: PPO epochs per rollout
    :param gamma: discount factor
    :param gae_lambda: GAE lambda
    :param clip_range: PPO clip range (or a schedule)
    :param clip_range_vf: value clip range (None: no clipping)
    :param normalize_advantage: normalise advantages per minibatch
    :param ent_coef: entropy coefficient
    :param vf_coef: value loss coefficient
    :param max_grad_norm: gradient clip of the PPO update
    :param target_kl: stop the PPO epochs once a minibatch's approximate KL exceeds ``1.5 * target_kl``
        (None: off). On by default, unlike SB3's PPO: the planner's actions sit in the prior's tails,
        and without the stop the prior update moved far outside PPO's trust region on most Meta-World
        rollouts (median KL 3-5) and learned less (``benchmarks/results/metaworld/ppo_health.md``).
    :param kl_estimate: the KL that ``target_kl`` bounds: ``"sample"`` (SB3's estimate
        ``mean((r - 1) - log r)`` over the stored actions) or ``"analytic"`` (closed-form KL between the
        prior Gaussian at collection time and now, at the rollout observations). Both are logged
        (``train/approx_kl``, ``train/prior_kl``). The sample estimate is unbiased only for actions drawn
        from the prior, and the executed actions come from the planner; the closed form needs no samples.
    :param dual_clip: bound ``ratio * A`` for negative advantages at ``dual_clip * A`` (Ye et al. 2020;
        None: off). Planner actions can be far in the prior's tail, where a small change of the
        prior multiplies their ratio; without this bound those few samples dominate the update.
    :param use_planner: act with MPPI (True) or with the prior alone (False)
    :param horizon: planning horizon, also the length of world-model training subsequences
    :param num_samples: MPPI action sequences per iteration
    :param num_elites: MPPI elites
    :param num_prior_trajectories: sequences proposed by the prior
    :param mppi_iterations: MPPI iterations
    :param temperature: MPPI temperature (multiplies the scores)
    :param min_std: lower clamp of the MPPI std
    :param max_std: upper clamp of the MPPI std
    :param action_choice: the executed action's centre: ``"mean"`` (the MPPI mean) or ``"elite"`` (one
        elite drawn by its weight, as in TD-MPC2; see :class:`~sb3_m3po.m3po.planner.PlannerConfig`)
    :param wm_learning_rate: world-model learning rate
    :param wm_batch_size: subsequences per world-model gradient step
    :param wm_gradient_steps: world-model steps per iteration (-1: ``wm_update_ratio`` per collected transition)
    :param wm_update_ratio: world-model steps per collected transition when ``wm_gradient_steps=-1``
    :param learning_starts: transitions in replay before the world model trains
    :param buffer_size: replay capacity (transitions)
    :param rho: temporal weight of the multi-step losses
    :param consistency_coef: latent consistency loss weight
    :param reward_coef: reward loss weight
    :param value_coef: Q loss weight
    :param wm_max_grad_norm: gradient clip of the world model
    :param tau: Polyak coefficient of the target Q ensemble
    :param prior_q_coef: weight of the Q-guidance step on the prior mean after each world-model step
        (``-Q(z, mu(z)) / scale`` on replayed latents, as TD-MPC2's policy loss); 0 leaves the prior to PPO alone
    :param bonus_coef: initial exploration-bonus coefficient alpha
    :param bonus_clip: upper clip of the z-scored bonus
    :param bonus_anneal_fraction: fraction of training over which alpha decays linearly to 0
    :param rho_bar: truncation of the policy-gradient importance weight
    :param c_bar: truncation of the trace importance weight
    :param value_target: what the value head estimates: ``"vtrace"`` (the prior's value, V-trace targets
        with the truncated weights) or ``"behaviour"`` (the planner's value, plain GAE(lambda) targets of
        the executed actions; the advantages keep their weights). See
        :func:`sb3_m3po.common.math.importance_corrected_gae`.
    :param balanced_replay: multi-task: sample the same number of world-model subsequences from every task
    :param bonus_per_task: multi-task: z-score the bonus within each task instead of over the whole rollout.
        On MT10 the tasks' raw gaps differ by 50-3000x, and a rollout-wide z-score gave one or two tasks
        most of the bonus and the others none; per task, every task gets its own share
    :param stats_window_size: window of the rollout statistics
    :param tensorboard_log: tensorboard log folder (None: off)
    :param policy_kwargs: extra policy arguments (``model_size``, ``num_q``, ...)
    :param verbose: verbosity level
    :param seed: random seed
    :param device: torch device
    :param _init_setup_model: build the networks at construction
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {  # type: ignore[assignment]
        "MlpPolicy": M3POPolicy,
        "MultiInputPolicy": M3POPolicy,
    }
    policy: M3POPolicy  # type: ignore[assignment]
    rollout_buffer: M3PORolloutBuffer

    def __init__(
        self,
        policy: str | type[M3POPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 64,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        target_kl: float | None = 0.05,
        kl_estimate: str = "sample",
        dual_clip: float | None = 3.0,
        use_planner: bool = True,
        horizon: int = 3,
        num_samples: int = 128,
        num_elites: int = 16,
        num_prior_trajectories: int = 8,
        mppi_iterations: int = 3,
        temperature: float = 0.5,
        min_std: float = 0.05,
        max_std: float = 2.0,
        action_choice: str = "mean",
        wm_learning_rate: float = 3e-4,
        wm_batch_size: int = 128,
        wm_gradient_steps: int = -1,
        wm_update_ratio: float = 1.0,
        learning_starts: int = 1000,
        buffer_size: int = 1_000_000,
        rho: float = 0.5,
        consistency_coef: float = 20.0,
        reward_coef: float = 0.1,
        value_coef: float = 0.1,
        wm_max_grad_norm: float = 20.0,
        tau: float = 0.01,
        prior_q_coef: float = 1.0,
        bonus_coef: float = 0.1,
        bonus_clip: float = 3.0,
        bonus_anneal_fraction: float = 0.5,
        rho_bar: float = 1.0,
        c_bar: float = 1.0,
        value_target: str = "vtrace",
        balanced_replay: bool = True,
        bonus_per_task: bool = True,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        super().__init__(
            policy,  # type: ignore[arg-type]  # PPO's annotation names ActorCriticPolicy; M3POPolicy stands in for it
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self.dual_clip = dual_clip
        self.kl_estimate = kl_estimate
        self.use_planner = use_planner
        self.horizon = horizon
        self.num_samples = num_samples
        self.num_elites = num_elites
        self.num_prior_trajectories = num_prior_trajectories
        self.mppi_iterations = mppi_iterations
        self.temperature = temperature
        self.min_std = min_std
        self.max_std = max_std
        self.action_choice = action_choice
        self.wm_learning_rate = wm_learning_rate
        self.wm_batch_size = wm_batch_size
        self.wm_gradient_steps = wm_gradient_steps
        self.wm_update_ratio = wm_update_ratio
        self.learning_starts = learning_starts
        self.buffer_size = buffer_size
        self.rho = rho
        self.consistency_coef = consistency_coef
        self.reward_coef = reward_coef
        self.value_coef = value_coef
        self.wm_max_grad_norm = wm_max_grad_norm
        self.tau = tau
        self.prior_q_coef = prior_q_coef
        self._q_scale = 1.0
        self.bonus_coef = bonus_coef
        self.bonus_clip = bonus_clip
        self.bonus_anneal_fraction = bonus_anneal_fraction
        self.rho_bar = rho_bar
        self.c_bar = c_bar
        self.value_target = value_target
        self.balanced_replay = balanced_replay
        self.bonus_per_task = bonus_per_task
        self.task_names: tuple[str, ...] | None = None
        self._task_stats: TaskEpisodeStats | None = None
        self._plan: th.Tensor | None = None
        self._last_original_obs = None
        self._validate_hyperparameters()
        if self.env is not None:  # load() builds the model without an env and restores the spaces later
            self._check_spaces()
            self._setup_tasks(self.env)
        if _init_setup_model:
            self._setup_model()

    def _validate_hyperparameters(self) -> None:
        def require(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"Invalid M3PO hyperparameter {name}={getattr(self, name)!r}: expected {expected}")

        require(self.n_steps >= 1, "n_steps", "an integer >= 1")
        require(self.batch_size >= 2, "batch_size", "an integer >= 2")
        require(self.n_epochs >= 1, "n_epochs", "an integer >= 1")
        require(self.dual_clip is None or self.dual_clip > 1, "dual_clip", "None or a value > 1")
        require(self.target_kl is None or self.target_kl > 0, "target_kl", "None or a value > 0")
        require(self.kl_estimate in ("sample", "analytic"), "kl_estimate", "'sample' or 'analytic'")
        require(0 < self.gamma <= 1, "gamma", "a value in (0, 1]")
        require(0 <= self.gae_lambda <= 1, "gae_lambda", "a value in [0, 1]")
        require(self.wm_batch_size >= 1, "wm_batch_size", "an integer >= 1")
        require(self.wm_gradient_steps == -1 or self.wm_gradient_steps >= 0, "wm_gradient_steps", "-1 or >= 0")
        require(self.wm_update_ratio > 0, "wm_update_ratio", "a value > 0")
        require(self.learning_starts >= 0, "learning_starts", ">= 0")
        require(self.buffer_size >= 1, "buffer_size", "an integer >= 1")
        require(0 < self.rho <= 1, "rho", "a value in (0, 1]")
        for name in ["consistency_coef", "reward_coef", "value_coef", "bonus_coef", "bonus_clip", "prior_q_coef"]:
            require(getattr(self, name) >= 0, name, "a value >= 0")
        require(self.wm_max_grad_norm > 0, "wm_max_grad_norm", "a value > 0")
        require(self.wm_learning_rate > 0, "wm_learning_rate", "a value > 0")
        require(0 < self.tau <= 1, "tau", "a value in (0, 1]")
        require(0 < self.bonus_anneal_fraction <= 1, "bonus_anneal_fraction", "a value in (0, 1]")
        require(self.rho_bar > 0, "rho_bar", "a value > 0")
        require(self.c_bar > 0, "c_bar", "a value > 0")
        require(self.value_target in VALUE_TARGETS, "value_target", f"one of {VALUE_TARGETS}")
        # The planner config validates its own ranges (horizon, num_elites <= num_samples, ...)
        self._planner_config()

    def _planner_config(self) -> PlannerConfig:
        return PlannerConfig(
            horizon=self.horizon,
            num_samples=self.num_samples,
            num_elites=self.num_elites,
            num_prior_trajectories=self.num_prior_trajectories,
            iterations=self.mppi_iterations,
            temperature=self.temperature,
            min_std=self.min_std,
            max_std=self.max_std,
            gamma=self.gamma,
            action_choice=self.action_choice,
        )

    def _check_spaces(self) -> None:
        if not isinstance(self.action_space, spaces.Box):
            raise ValueError(f"M3PO needs a continuous Box action space, got {self.action_space}")
        # Unbounded Box action spaces are refused by SB3's BaseAlgorithm with a clear message
        if self._vec_normalize_env is not None and self._vec_normalize_env.norm_obs:
            obs_space = self.observation_space
            if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
                raise ValueError(
                    "M3PO supports VecNormalize(norm_obs=True) only for 1-D Box observations, "
                    f"got {obs_space}; flatten the observations first"
                )

    def _setup_tasks(self, env: VecEnv) -> None:
        """
        Multi-task env (:mod:`sb3_m3po.common.multitask`): fill ``num_tasks`` and ``task_action_dims``
        of the policy kwargs from its task set and spread cycling envs over the tasks.

        :raises ValueError: if given policy kwargs or a loaded model disagree with the env's task set
        """
        spec = get_task_set_spec(env)
        if spec is None:
            if self.policy_kwargs.get("num_tasks", 1) > 1 and self.task_names is not None:
                raise ValueError(f"this M3PO model was trained on {len(self.task_names)} tasks; give it a multi-task env")
            return
        given = {"num_tasks": spec.num_tasks, "task_action_dims": list(spec.action_dims)}
        for key, value in given.items():
            if key in self.policy_kwargs and self.policy_kwargs[key] != value:
                raise ValueError(
                    f"policy_kwargs[{key!r}]={self.policy_kwargs[key]!r} does not match the env's task set "
                    f"({value!r}); leave it out, M3PO reads it from the env"
                )
        if self.task_names is not None and tuple(spec.names) != tuple(self.task_names):
            raise ValueError(f"the env holds tasks {spec.names}, but this model was trained on {self.task_names}")
        # a copy: the caller's dict stays as it was
        self.policy_kwargs = {**self.policy_kwargs, **given}
        self.task_names = tuple(spec.names)
        configure_task_schedule(env)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        self._setup_tasks(self.env)  # type: ignore[arg-type]

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            planner=self._planner_config(),
            use_planner=self.use_planner,
            wm_learning_rate=self.wm_learning_rate,
            **self.policy_kwargs,
        )
        self.policy = self.policy.to(self.device)
        flat_space = spaces.Box(-np.inf, np.inf, (self.policy.obs_dim,), np.float32)
        self.rollout_buffer = M3PORolloutBuffer(
            self.n_steps,
            flat_space,
            self.action_space,  # type: ignore[arg-type]
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            rho_bar=self.rho_bar,
            c_bar=self.c_bar,
            value_target=self.value_target,
        )
        self.replay_buffer = EpisodicReplayBuffer(
            self.buffer_size,
            self.policy.obs_dim,
            self.policy.action_dim,
            self.n_envs,
            self.device,
            num_tasks=self.policy.num_tasks,
            balanced=self.balanced_replay,
        )
        if self.task_names is not None:
            self.task_names = tuple(self.task_names)  # a list after load() (saved as JSON)
        self._task_stats = None if self.task_names is None else TaskEpisodeStats(self.task_names, self._stats_window_size)
        self._plan = None
        # Same schedule handling as PPO
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_plan", "_last_original_obs", "_task_stats"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer", "policy.wm_optimizer"], []

    # ------------------------------------------------------------------ collection
    def _flat(self, obs: VecEnvObs | None) -> np.ndarray:
        assert obs is not None and not isinstance(obs, tuple), f"M3PO needs array or dict observations, got {type(obs)}"
        return flatten_observation(obs, self.n_envs)

    def _check_finite(self, what: str, array: np.ndarray) -> None:
        if not np.all(np.isfinite(array)):
            bad = np.flatnonzero(~np.isfinite(array.reshape(self.n_envs, -1)).all(axis=1))
            raise NonFiniteError(
                f"M3PO got a non-finite (NaN or inf) {what} for env(s) {bad.tolist()} "
                f"at timestep {self.num_timesteps}; nothing from this step was stored or trained on"
            )

    def _original_next_obs(self, next_flat: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """
        The real next observation before VecNormalize (the replay normalises with current statistics when sampling).

        VecNormalize keeps the raw new observations; the terminal observations of finished
        envs come normalised in ``infos`` and are mapped back with the statistics they were
        normalised with (those of this step).
        """
        vec_norm = self._vec_normalize_env
        if vec_norm is None or not vec_norm.norm_obs:
            return next_flat
        original = self._flat(vec_norm.get_original_obs()).copy()
        done_idx = np.flatnonzero(dones)
        if len(done_idx) > 0:
            original[done_idx] = vec_norm.unnormalize_obs(next_flat[done_idx])
        return original

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: M3PORolloutBuffer,  # type: ignore[override]
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect ``n_rollout_steps`` per env with the planner, fill both buffers, then compute
        the bonus and the importance-corrected advantages.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        if self._plan is None or self._plan.shape[0] != env.num_envs:
            self._plan = self.policy.initial_plan(env.num_envs)
        vec_norm = self._vec_normalize_env
        stds = []
        n_steps = 0
        while n_steps < n_rollout_steps:
            obs_flat = self._flat(self._last_obs)
            self._check_finite("observation", obs_flat)
            starts = th.as_tensor(self._last_episode_starts, device=self.device).bool()
            with th.inference_mode():
                out = self.policy.act(th.as_tensor(obs_flat, device=self.device), shift_plan(self._plan, starts))
            self._plan = out.plan
            stds.append(out.behaviour_std.mean())
            actions = out.action.cpu().numpy()
            self._check_finite("planned action (the world model or prior produced NaN/inf)", actions)
            executed = np.clip(actions, -1.0, 1.0)
            new_obs, rewards, dones, infos = env.step(self.policy.unscale_action(executed))
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1

            self._check_finite("reward", np.asarray(rewards, dtype=np.float64))
            next_obs = real_next_observation(new_obs, dones, infos)  # type: ignore[arg-type]  # tuple spaces are refused
            next_flat = self._flat(next_obs)
            self._check_finite("next observation", next_flat)
            truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos], dtype=bool) & dones
            terminated = dones & ~truncated
            rollout_buffer.add_transition(
                obs_flat,
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                out.value,
                out.log_prob,
                out.behaviour_log_prob,
                out.prior_mean,
                next_flat,
                terminated,
                dones,
            )
            original_rewards = rewards if vec_norm is None else vec_norm.get_original_reward()
            original_next = self._original_next_obs(next_flat, dones)
            original_obs = obs_flat if vec_norm is None or not vec_norm.norm_obs else self._flat(self._last_original_obs)
            self.replay_buffer.add(
                original_obs,
                original_next,
                executed,
                original_rewards,
                terminated,
                dones,
                None if self.task_names is None else task_ids_from_obs(original_obs, len(self.task_names)),
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            if vec_norm is not None:
                self._last_original_obs = vec_norm.get_original_obs()

        self._compute_bonus(th.stack(stds).mean().item())
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _bonus_coef_now(self) -> float:
        progress = self.num_timesteps / max(self._total_timesteps, 1)
        return self.bonus_coef * max(0.0, 1.0 - progress / self.bonus_anneal_fraction)

    def _compute_bonus(self, mppi_std: float) -> None:
        """Q_MB, Q_MF, the bonus and the augmented advantage of the whole rollout, in one batched pass."""
        buf = self.rollout_buffer
        flat = lambda x: th.as_tensor(x.reshape(-1, *x.shape[2:]), device=self.device)  # noqa: E731
        with th.inference_mode():
            obs, next_obs = flat(buf.observations), flat(buf.next_observations)
            actions = flat(buf.actions).clamp(-1.0, 1.0)
            task = self.policy.task_ids(obs)
            wm = self.policy.world_model
            z = wm.encode(obs, task)
            next_value = self.policy.value(wm.encode(next_obs, task), task).squeeze(-1)
            model_next_value = self.policy.value(wm.next(z, actions, task), task).squeeze(-1)
            q_mb = wm.reward(z, actions, task).squeeze(-1) + self.gamma * model_next_value
            rewards = flat(buf.rewards)
            q_mf = rewards + self.gamma * (1.0 - flat(buf.terminated)) * next_value
            per_task = self.bonus_per_task and task is not None
            num_tasks = self.policy.num_tasks
            eps, eps_norm = exploration_bonus(q_mb, q_mf, self.bonus_clip, task if per_task else None, num_tasks)
        shape = buf.rewards.shape
        to_np = lambda x: x.cpu().numpy().reshape(shape)  # noqa: E731
        buf.next_values, buf.q_mb, buf.q_mf = to_np(next_value), to_np(q_mb), to_np(q_mf)
        buf.bonus, buf.bonus_normalised = to_np(eps), to_np(eps_norm)
        buf.compute_returns_and_advantage(th.zeros(self.n_envs), np.zeros(self.n_envs))
        coef = self._bonus_coef_now()
        buf.add_bonus(coef)
        weights = np.exp(buf.log_probs - buf.behaviour_log_probs)
        self.logger.record("train/bonus_mean", float(eps.mean()))
        self.logger.record("train/bonus_normalised_mean", float(eps_norm.mean()))
        self.logger.record("train/bonus_coef", coef)
        self.logger.record("train/q_mb_mean", float(q_mb.mean()))
        self.logger.record("train/q_mf_mean", float(q_mf.mean()))
        self.logger.record("train/mppi_std", mppi_std)
        self.logger.record("train/is_weight_mean", float(np.minimum(self.rho_bar, weights).mean()))
        if task is not None and self.task_names is not None:
            # the scale of every task's raw bonus, to see whether one task would swamp a batch z-score
            task_means, task_stds = group_mean_std(eps, task, num_tasks)
            normalised_means, _ = group_mean_std(eps_norm, task, num_tasks)
            present = th.bincount(task, minlength=num_tasks) > 0
            for k in present.nonzero().flatten().tolist():
                name = self.task_names[k]
                record_task_metric(self.logger, "train", name, "bonus_mean", float(task_means[k]))
                record_task_metric(self.logger, "train", name, "bonus_std", float(task_stds[k]))
                record_task_metric(self.logger, "train", name, "bonus_normalised_mean", float(normalised_means[k]))

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        """PPO epochs on the prior and value function, then world-model gradient steps."""
        self._train_prior()
        self._check_prior_finite()
        self._train_world_model()

    def _train_prior(self) -> None:
        """
        PPO epochs on the prior and value function, as SB3's ``PPO.train`` but with the bounded,
        optionally dual-clipped surrogate of :func:`clipped_surrogate`.

        SB3's loop exponentiates the raw log-ratio; with planner actions that overflowed and wrote
        NaN into the prior (see :meth:`_check_prior_finite`). ``train/approx_kl`` is the mean over every
        minibatch of every epoch (SB3 logs the last epoch's), so it measures the whole update.
        """
        policy = self.policy
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        params = [p for group in policy.optimizer.param_groups for p in group["params"]]
        # the prior's std is state-independent and fixed during collection: its value now is the old one
        old_std = policy.log_std.detach().exp()
        # per minibatch: policy loss, value loss, entropy loss, clip fraction, sample KL, max |log-ratio|,
        # closed-form prior KL; kept as tensors so that a GPU syncs once per update, not per minibatch
        # (unless target_kl needs it)
        stats: list[th.Tensor] = []
        loss = th.zeros(())
        # symlog space for value_transform="symlog" (identity otherwise); clip_range_vf applies there too
        to_loss = policy.value_loss_space
        stop = False
        for epoch in range(self.n_epochs):
            for data in self.rollout_buffer.get(self.batch_size):
                prior = policy.evaluate_prior(data.observations, data.actions)
                values = prior.values.flatten()
                advantages = data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                log_ratio = prior.log_prob - data.old_log_prob
                terms = clipped_surrogate(log_ratio, advantages, clip_range, self.dual_clip)
                with th.no_grad():
                    prior_kl = masked_gaussian_kl(
                        data.old_prior_mean, old_std.expand_as(prior.mean), prior.mean, prior.std, prior.mask
                    ).mean()
                values_pred = to_loss(values)
                if clip_range_vf is not None:
                    old_values = to_loss(data.old_values)
                    values_pred = old_values + th.clamp(values_pred - old_values, -clip_range_vf, clip_range_vf)
                value_loss = th.nn.functional.mse_loss(to_loss(data.returns), values_pred)
                entropy_loss = -th.mean(prior.entropy)
                loss = terms.loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                parts = (
                    terms.loss,
                    value_loss,
                    entropy_loss,
                    terms.clip_fraction,
                    terms.approx_kl,
                    log_ratio.abs().max(),
                    prior_kl,
                )
                stats.append(th.stack(parts).detach())
                kl = prior_kl if self.kl_estimate == "analytic" else terms.approx_kl
                if self.target_kl is not None and float(kl) > 1.5 * self.target_kl:
                    stop = True
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {float(kl):.2f}")
                    break
                policy.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                th.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
                policy.optimizer.step()
            self._n_updates += 1
            if stop:
                break
        table = th.stack(stats)
        means, max_log_ratio = table.mean(dim=0).tolist(), table[:, 5].max().item()
        buf = self.rollout_buffer
        self.logger.record("train/policy_gradient_loss", means[0])
        self.logger.record("train/value_loss", means[1])
        self.logger.record("train/entropy_loss", means[2])
        self.logger.record("train/clip_fraction", means[3])
        self.logger.record("train/approx_kl", means[4])
        self.logger.record("train/prior_kl", means[6])
        self.logger.record("train/max_abs_log_ratio", max_log_ratio)
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_variance(buf.values.flatten(), buf.returns.flatten()))
        self.logger.record("train/std", th.exp(policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _check_prior_finite(self) -> None:
        """
        Fail with the cause when the PPO epochs left the prior or value non-finite.

        The log-ratio is bounded, so the ratio itself cannot overflow any more; a non-finite
        advantage, return or gradient still could. Without this check the NaN would first show up
        in the world model's TD targets, whose error would point at the wrong network.

        :raises NonFiniteError: if a parameter of the prior (actor, log std) or the value head is not finite
        """
        policy = self.policy
        params = [*policy.actor.parameters(), *policy.value_net.parameters(), policy.log_std]
        if all(bool(th.isfinite(p).all()) for p in params):
            return
        logged = {k: self.logger.name_to_value.get(f"train/{k}") for k in ("approx_kl", "max_abs_log_ratio", "value_loss")}
        raise NonFiniteError(
            f"M3PO's PPO update made the prior/value parameters non-finite at timestep {self.num_timesteps} "
            f"({logged}). Lower target_kl (it stops the epochs earlier), or lower learning_rate / n_epochs."
        )

    # ------------------------------------------------------------------ per-task metrics
    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        super()._update_info_buffer(infos, dones)
        if self._task_stats is not None and dones is not None:
            self._task_stats.update(infos, dones)

    def dump_logs(self, iteration: int = 0) -> None:
        """SB3's rollout and time statistics, plus per-task returns and success rates of multi-task envs."""
        if self._task_stats is not None:
            self._task_stats.record(self.logger)
        super().dump_logs(iteration)

    def _train_world_model(self) -> None:
        if self.replay_buffer.size() < max(self.learning_starts, 1):
            return
        steps = self.wm_gradient_steps
        if steps < 0:
            steps = max(1, round(self.wm_update_ratio * self.n_steps * self.n_envs))
        if steps == 0:
            return
        policy, wm = self.policy, self.policy.world_model
        policy.set_training_mode(True)
        params = [p for group in policy.wm_optimizer.param_groups for p in group["params"]]
        totals = th.zeros(4, device=self.device)
        vec_norm = self._vec_normalize_env
        for _ in range(steps):
            batch = self.replay_buffer.sample(self.wm_batch_size, self.horizon, vec_norm)
            task = policy.task_ids(batch.observations)
            target_z, td_targets = self._world_model_targets(batch, task)
            losses = policy.world_model_losses(
                batch.observations,
                batch.actions,
                batch.rewards,
                target_z,
                td_targets,
                task,
                self.rho,
                self.consistency_coef,
                self.reward_coef,
                self.value_coef,
            )
            if not th.isfinite(losses.total):
                parts = {k: float(v) for k, v in losses._asdict().items() if k != "latents"}
                raise NonFiniteError(
                    f"M3PO world-model loss became non-finite at timestep {self.num_timesteps} "
                    f"(update {self._n_updates}): {parts}. Parameters were not updated with it; "
                    "lower wm_learning_rate or check the rewards and observations."
                )
            policy.wm_optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            grad_norm = th.nn.utils.clip_grad_norm_(params, self.wm_max_grad_norm, foreach=True)
            policy.wm_optimizer.step()
            wm.soft_update_target(self.tau)
            if self.prior_q_coef > 0:
                self._q_guide_prior(losses.latents.detach(), task)
            totals += th.stack([losses.consistency.detach(), losses.reward.detach(), losses.value.detach(), grad_norm])
        means = (totals / steps).tolist()
        self.logger.record("train/wm_consistency_loss", means[0])
        self.logger.record("train/wm_reward_loss", means[1])
        self.logger.record("train/wm_value_loss", means[2])
        self.logger.record("train/wm_grad_norm", means[3])
        self.logger.record("train/wm_gradient_steps", steps)
        self.logger.record("train/q_scale", self._q_scale)

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save the model as SB3 does, with Ctrl-C held until the file is complete
        (see :func:`~sb3_m3po.common.signals.deferred_keyboard_interrupt`).

        :param path: file (``.zip`` added if missing) or file-like object
        :param exclude: attributes not to save, on top of the defaults
        :param include: attributes to save even if excluded by default
        """
        with deferred_keyboard_interrupt():
            super().save(path, exclude, include)

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfM3PO],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfM3PO:
        """
        Load an M3PO model saved with :meth:`save`; see SB3's ``BaseAlgorithm.load``.

        :raises ValueError: if the file is not a readable SB3 checkpoint, or was saved by another algorithm
        """
        try:
            data, _, _ = load_from_zip_file(path, device="cpu", custom_objects=custom_objects, load_data=True)
        except (zipfile.BadZipFile, EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
            raise ValueError(f"Cannot load M3PO checkpoint {path!s}: it is corrupt or not an SB3 zip ({error})") from error
        policy_class = (data or {}).get("policy_class")
        if not (isinstance(policy_class, type) and issubclass(policy_class, M3POPolicy)):
            raise ValueError(
                f"Checkpoint {path!s} was not saved by M3PO (its policy class is {policy_class!r}); "
                "load it with the algorithm that saved it"
            )
        if isinstance(path, io.BufferedIOBase):
            path.seek(0)
        return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """
        Save the world model's replay buffer as a pickle (not part of :meth:`save`, as in SB3's SAC),
        so a resumed run (``load`` then ``load_replay_buffer``; rl-zoo3's ``--save-replay-buffer``
        and ``-i``) trains its world model on the same data instead of starting from an empty replay.

        :param path: file to write (parent folders are created)
        """
        assert self.replay_buffer is not None, "The replay buffer is not defined"
        save_to_pkl(path, self.replay_buffer, self.verbose)

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        """
        Load a replay buffer saved with :meth:`save_replay_buffer`.

        :param path: the pickle file
        :param truncate_last_traj: treat every env's last stored episode as finished (True, the right
            choice after ``load()``, since the envs are reset before training continues); False only when
            the same envs continue the same episodes
        :raises ValueError: if the file is unreadable, holds something other than an M3PO replay buffer,
            or was made for another observation/action size, ``n_envs`` or number of tasks
        """
        try:
            buffer = load_from_pkl(path, self.verbose)
        except (EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError) as error:
            raise ValueError(f"Cannot load replay buffer {path!s}: it is corrupt or not a pickle ({error})") from error
        if not isinstance(buffer, EpisodicReplayBuffer):
            raise ValueError(
                f"Replay buffer {path!s} holds a {type(buffer).__name__}, not an M3PO EpisodicReplayBuffer; "
                "it was saved by another algorithm"
            )
        try:
            buffer.check_compatible(self.policy.obs_dim, self.policy.action_dim, self.n_envs, self.policy.num_tasks)
        except ValueError as error:
            raise ValueError(f"Cannot load replay buffer {path!s}: {error}") from error
        if truncate_last_traj:
            buffer.truncate_last_trajectory()
        buffer.device = self.device
        buffer.balanced = self.balanced_replay and buffer.num_tasks > 1
        self.replay_buffer = buffer

    @th.no_grad()
    def _world_model_targets(self, batch: ReplaySamples, task: th.Tensor | None) -> tuple[th.Tensor, th.Tensor]:
        """
        Consistency targets ``sg(h(s_{t+1}))`` and TD targets ``r + gamma (1 - term) min Q_target(z', mu(z'))``.

        Both carry no gradient: the stop-gradient is on the target side of the consistency
        loss, so the encoder learns only through the predicted (online) latents.

        :raises NonFiniteError: if the TD targets are not finite
        """
        policy, wm = self.policy, self.policy.world_model
        target_z = wm.encode(batch.next_observations, task)
        next_q = wm.q_value(target_z, policy.prior_mean(target_z, task), task, target=True, reduce="min")
        td_targets = batch.rewards + self.gamma * (1.0 - batch.terminated) * next_q
        if not th.isfinite(td_targets).all():
            raise NonFiniteError(
                f"M3PO world-model loss became non-finite at timestep {self.num_timesteps}: the TD targets "
                "(reward + gamma * target Q) contain NaN/inf. Parameters were not updated with them; "
                "lower wm_learning_rate or check the rewards."
            )
        return target_z, td_targets

    def _q_guide_prior(self, latents: th.Tensor, task: th.Tensor | None) -> None:
        """
        One step pushing the prior mean towards higher Q on replayed latents.

        PPO alone improves the prior slowly from planner data (importance weights are small
        when MPPI's distribution is narrow), and the planner's terminal value and TD targets
        use the prior's action, so a prior that lags the planner caps both. Q is scaled by a
        running mean of ``|Q|`` so the step size does not depend on the reward scale.
        """
        policy, wm = self.policy, self.policy.world_model
        wm.q_ensemble.requires_grad_(False)
        try:
            q = wm.q_value(latents, policy.prior_mean(latents, task), task)  # (H, B, 1)
        finally:
            wm.q_ensemble.requires_grad_(True)
        self._q_scale = 0.99 * self._q_scale + 0.01 * float(q.detach().abs().mean())
        horizon = latents.shape[0]
        weights = self.rho ** th.arange(horizon, device=q.device, dtype=q.dtype).view(horizon, 1, 1)
        loss = -self.prior_q_coef * (q * weights).mean() / max(self._q_scale, 1.0)
        policy.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        th.nn.utils.clip_grad_norm_(policy.actor.parameters(), self.max_grad_norm, foreach=True)
        policy.optimizer.step()

    def learn(
        self: SelfM3PO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "M3PO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfM3PO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
