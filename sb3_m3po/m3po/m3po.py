"""M3PO: model-based policy optimisation with an implicit world model, MPPI and a hybrid bonus."""

import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

from sb3_m3po.common.buffers import EpisodicReplayBuffer, M3PORolloutBuffer
from sb3_m3po.common.math import clipped_surrogate
from sb3_m3po.common.task_metrics import TaskEpisodeStats
from sb3_m3po.common.utils import (
    NonFiniteError,
    check_dones,
    check_finite,
    flatten_observation,
    real_next_observation,
    unnormalized,
)
from sb3_m3po.envs.multitask import setup_task_set
from sb3_m3po.m3po.bonus import record_bonus, rollout_values
from sb3_m3po.m3po.config import (
    BonusConfig,
    PlannerConfig,
    PriorConfig,
    WorldModelTrainingConfig,
    check_algorithm_arguments,
    make_config,
)
from sb3_m3po.m3po.planner import shift_plan
from sb3_m3po.m3po.policies import M3POPolicy
from sb3_m3po.m3po.save_util import M3POSaveLoad
from sb3_m3po.m3po.world_model_update import add_termination_head, update_world_model, world_model_optimizer

SelfM3PO = TypeVar("SelfM3PO", bound="M3PO")


class M3PO(M3POSaveLoad, PPO):
    """
    Massively Multi-Task Model-Based Policy Optimization (M3PO).

    One iteration of :meth:`learn`:

    1. **plan and step**: every env's action comes from MPPI in the world model's latent space, guided
       by the Gaussian policy prior (one batched call for all envs); the transition goes into the
       rollout buffer (with the log-probability of the action under the planner's distribution) and
       into the replay buffer of the world model (during an optional seed phase, ``world_model_kwargs['seed_steps']``,
       the actions are uniform random instead);
    2. **returns and advantages**: GAE with truncated importance weights ``min(1, pi/mu)``, because the
       prior ``pi`` did not choose the actions, the planner ``mu`` did;
    3. **bonus**: ``alpha_k * clip(zscore(|Q_MB - Q_MF|), 0, c)`` added to the advantages, where the
       gap between the model's and the real one-step value marks what the model does not know yet;
    4. **PPO epochs** on the prior and value head, with a bounded (and optionally dual-clipped) ratio;
    5. **world-model update**: TD-MPC2's consistency, reward and Q losses on replayed subsequences,
       each step followed by a Q-guided step on the prior mean (``prior_q_coef``), so the prior that
       proposes the planner's samples and values its horizon keeps up with the Q function.

    Paper: https://arxiv.org/abs/2506.21782 (world model and planner as TD-MPC2, https://arxiv.org/abs/2310.16828)

    :param policy: the policy model to use (``MlpPolicy``, ``MultiInputPolicy``)
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate of the prior and value function (or a schedule)
    :param n_steps: steps per env per rollout (M3PO plans all envs in one batch; its shipped
        configurations use 8 envs)
    :param batch_size: PPO minibatch size
    :param n_epochs: PPO epochs per rollout (0: no PPO update; the prior then learns from Q alone)
    :param gamma: discount factor (also of the planner and the TD targets)
    :param gae_lambda: GAE lambda
    :param clip_range: PPO clip range (or a schedule)
    :param clip_range_vf: value clip range (None: no clipping)
    :param normalize_advantage: normalise advantages per minibatch
    :param ent_coef: entropy coefficient
    :param vf_coef: value loss coefficient
    :param max_grad_norm: gradient clip of the PPO update and of the Q-guided prior step
    :param target_kl: stop the PPO epochs once a minibatch's approximate KL exceeds ``1.5 * target_kl``
        (None: off). On by default, unlike SB3's PPO: planner actions sit in the prior's tails, and
        without the stop the prior moved far outside PPO's trust region on Meta-World
    :param dual_clip: bound ``ratio * A`` for negative advantages at ``dual_clip * A`` (Ye et al. 2020;
        None: off), so the few planner actions far in the prior's tail cannot dominate the update
    :param use_planner: act with MPPI (True) or with the prior alone (False)
    :param planner_kwargs: MPPI settings, see :class:`~sb3_m3po.m3po.config.PlannerConfig`
    :param world_model_kwargs: world-model training, see :class:`~sb3_m3po.m3po.config.WorldModelTrainingConfig`
    :param bonus_kwargs: exploration bonus, see :class:`~sb3_m3po.m3po.config.BonusConfig`
    :param prior_kwargs: how the prior learns from Q, see :class:`~sb3_m3po.m3po.config.PriorConfig`
    :param stats_window_size: window of the rollout statistics
    :param tensorboard_log: tensorboard log folder (None: off)
    :param policy_kwargs: arguments of :class:`~sb3_m3po.m3po.policies.M3POPolicy` (``model_size``,
        ``architecture``, ``net_arch``, ...)
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
        dual_clip: float | None = 3.0,
        use_planner: bool = True,
        planner_kwargs: dict[str, Any] | None = None,
        world_model_kwargs: dict[str, Any] | None = None,
        bonus_kwargs: dict[str, Any] | None = None,
        prior_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        check_algorithm_arguments(n_steps, batch_size, n_epochs, gamma, gae_lambda, target_kl, dual_clip)
        self.planner_config = make_config(PlannerConfig, planner_kwargs, "planner_kwargs")
        self.world_model_config = make_config(WorldModelTrainingConfig, world_model_kwargs, "world_model_kwargs")
        self.bonus_config = make_config(BonusConfig, bonus_kwargs, "bonus_kwargs")
        self.prior_config = make_config(PriorConfig, prior_kwargs, "prior_kwargs")
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
        self.dual_clip, self.use_planner = dual_clip, use_planner
        self.planner_kwargs, self.world_model_kwargs, self.bonus_kwargs = planner_kwargs, world_model_kwargs, bonus_kwargs
        self.prior_kwargs = prior_kwargs
        self._q_scale = 1.0  # running |Q| of the Q-guided prior step
        self._terminations_seen = False  # a real termination reached the replay buffer (episodic=None adds the head)
        self.task_names: tuple[str, ...] | None = None
        self._task_stats: TaskEpisodeStats | None = None
        self._plan: th.Tensor | None = None
        self._last_original_obs = None
        if self.env is not None:  # load() builds the model without an env and restores the spaces later
            self._check_spaces()
            self._setup_tasks(self.env)
        if _init_setup_model:
            self._setup_model()

    def _check_spaces(self) -> None:
        if not isinstance(self.action_space, spaces.Box):
            raise ValueError(f"M3PO needs a continuous Box action space, got {self.action_space}")
        # Unbounded Box action spaces are refused by SB3's BaseAlgorithm with a clear message
        vec_norm = self._vec_normalize_env
        if vec_norm is not None and vec_norm.norm_obs and len(self.observation_space.shape or ()) != 1:
            raise ValueError(
                "M3PO supports VecNormalize(norm_obs=True) only for 1-D Box observations, "
                f"got {self.observation_space}; flatten the observations first"
            )

    def _setup_tasks(self, env: VecEnv) -> None:
        self.policy_kwargs, self.task_names = setup_task_set(env, self.policy_kwargs, self.task_names)

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
            gamma=self.gamma,
            planner=self.planner_config,
            use_planner=self.use_planner,
            prior=self.prior_config,
            episodic=self._episodic,
            **self.policy_kwargs,
        )
        self.policy = self.policy.to(self.device)
        self.wm_optimizer = world_model_optimizer(self.policy.world_model, self.world_model_config, fused=True)
        flat_space = spaces.Box(-np.inf, np.inf, (self.policy.obs_dim,), np.float32)
        self.rollout_buffer = M3PORolloutBuffer(
            self.n_steps, flat_space, self.action_space, self.device, self.gae_lambda, self.gamma, self.n_envs
        )
        self.replay_buffer = EpisodicReplayBuffer(
            self.world_model_config.buffer_size,
            self.policy.obs_dim,
            self.policy.action_dim,
            self.n_envs,
            self.device,
            num_tasks=self.policy.num_tasks,
            balanced=self.world_model_config.balanced_replay,
        )
        if self.task_names is not None:
            self.task_names = tuple(self.task_names)  # a list after load() (saved as JSON)
        self._task_stats = None if self.task_names is None else TaskEpisodeStats(self.task_names, self._stats_window_size)
        self._plan = None
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    @property
    def _episodic(self) -> bool:
        """Whether the world model has (or, set up now, gets) its termination head."""
        episodic = self.world_model_config.episodic
        return episodic is True or (episodic is None and self._terminations_seen)

    def _on_first_termination(self) -> None:
        self._terminations_seen = True
        if self.world_model_config.episodic is None:
            add_termination_head(self.policy.world_model, self.wm_optimizer)
            if self.verbose >= 1:
                print(f"M3PO: first real termination at timestep {self.num_timesteps}: the world model now models termination")
        elif self.world_model_config.episodic is False:
            warnings.warn(
                f"the env terminated at timestep {self.num_timesteps}, but world_model_kwargs['episodic']=False: the planner "
                "will keep counting reward after predicted terminations; use episodic=None or True",
                stacklevel=2,
            )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_plan", "_last_original_obs", "_task_stats"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        optimizers = ["policy.optimizer", "wm_optimizer"]
        if self.prior_config.objective == "sample":
            optimizers.append("policy.prior_optimizer")
        return ["policy", *optimizers], []

    # ------------------------------------------------------------------ 1. plan and step, store
    def _flat(self, obs: VecEnvObs | None) -> np.ndarray:
        assert obs is not None and not isinstance(obs, tuple), f"M3PO needs array or dict observations, got {type(obs)}"
        return flatten_observation(obs, self.n_envs)

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: M3PORolloutBuffer,  # type: ignore[override]
        n_rollout_steps: int,
    ) -> bool:
        """Plan and step ``n_rollout_steps`` per env, fill both buffers, then compute returns, advantages and bonus."""
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        if self._plan is None or self._plan.shape[0] != env.num_envs:
            self._plan = self.policy.initial_plan(env.num_envs)
        stds = []
        for _ in range(n_rollout_steps):
            obs_flat = self._flat(self._last_obs)
            check_finite("observation", obs_flat, self.num_timesteps)
            starts = th.as_tensor(self._last_episode_starts, device=self.device).bool()
            with th.inference_mode():
                obs_tensor = th.as_tensor(obs_flat, device=self.device)
                if self.num_timesteps < self.world_model_config.seed_steps:
                    out = self.policy.random_act(obs_tensor, self._plan)
                else:
                    out = self.policy.act(obs_tensor, shift_plan(self._plan, starts))
            self._plan = out.plan
            stds.append(out.behaviour_std.mean())
            actions = out.action.cpu().numpy()
            check_finite("planned action (the world model or prior produced NaN/inf)", actions, self.num_timesteps)
            new_obs, rewards, dones, infos = env.step(self.policy.to_env_action(actions))
            check_dones(dones, env, env.num_envs)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)

            check_finite("reward", np.asarray(rewards, dtype=np.float64), self.num_timesteps)
            next_flat = self._flat(real_next_observation(new_obs, dones, infos))  # type: ignore[arg-type]
            check_finite("next observation", next_flat, self.num_timesteps)
            truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos], dtype=bool) & dones
            terminated = dones & ~truncated
            if terminated.any() and not self._terminations_seen:
                self._on_first_termination()
            rollout_buffer.add(
                obs=obs_flat,
                action=actions,
                reward=rewards,
                episode_start=self._last_episode_starts,  # type: ignore[arg-type]
                value=out.value,
                log_prob=out.log_prob,
                behaviour_log_prob=out.behaviour_log_prob,
                next_obs=next_flat,
                terminated=terminated,
                done=dones,
            )
            vec_norm = self._vec_normalize_env
            original_obs, original_next = unnormalized(vec_norm, self._last_original_obs, obs_flat, next_flat, dones)
            original_rewards = rewards if vec_norm is None else vec_norm.get_original_reward()
            self.replay_buffer.add(original_obs, original_next, np.clip(actions, -1, 1), original_rewards, terminated, dones)
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            if vec_norm is not None:
                self._last_original_obs = vec_norm.get_original_obs()

        self.logger.record("train/mppi_std", th.stack(stds).mean().item())
        self._returns_advantages_and_bonus()
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------ 2. returns and advantages, 3. bonus
    def _returns_advantages_and_bonus(self) -> None:
        buf = self.rollout_buffer
        values = rollout_values(self.policy, buf, self.gamma, self.bonus_config)
        shape = buf.rewards.shape
        buf.compute_returns_and_advantage(values.next_value.cpu().numpy().reshape(shape))
        coef = self.bonus_config.coef_at(self.num_timesteps / max(self._total_timesteps, 1))
        buf.add_bonus(coef, values.bonus_normalised.cpu().numpy().reshape(shape))
        record_bonus(self.logger, values, coef, self.task_names)
        weights = np.exp(buf.log_probs - buf.behaviour_log_probs)
        self.logger.record("train/is_weight_mean", float(np.minimum(1.0, weights).mean()))

    # ------------------------------------------------------------------ 4. PPO epochs, 5. world-model update
    def train(self) -> None:
        """PPO epochs on the prior and value function, then world-model gradient steps."""
        if self.n_epochs > 0:
            self._ppo_epochs()
        self._update_world_model()

    def _ppo_epochs(self) -> None:
        """
        SB3's ``PPO.train`` with the bounded, optionally dual-clipped surrogate of :func:`clipped_surrogate`:
        a raw ``exp`` of the log-ratio of planner actions overflows. ``train/approx_kl`` is the mean
        over every minibatch of every epoch (SB3 logs the last epoch's), so it measures the whole update.
        """
        policy = self.policy
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        params = [p for group in policy.optimizer.param_groups for p in group["params"]]
        # per minibatch: policy loss, value loss, entropy loss, clip fraction, sample KL, max |log-ratio|; kept
        # as tensors so that a GPU syncs once per update, not per minibatch (unless target_kl needs it)
        stats: list[th.Tensor] = []
        loss = th.zeros(())
        stop = False
        for epoch in range(self.n_epochs):
            for data in self.rollout_buffer.get(self.batch_size):
                values, log_prob, entropy = policy.evaluate_actions(data.observations, data.actions)
                values = values.flatten()
                advantages = data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                log_ratio = log_prob - data.old_log_prob
                terms = clipped_surrogate(log_ratio, advantages, clip_range, self.dual_clip)
                if clip_range_vf is not None:
                    values = data.old_values + th.clamp(values - data.old_values, -clip_range_vf, clip_range_vf)
                value_loss = th.nn.functional.mse_loss(data.returns, values)
                entropy_loss = -th.mean(entropy)
                loss = terms.loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                parts = (terms.loss, value_loss, entropy_loss, terms.clip_fraction, terms.approx_kl, log_ratio.abs().max())
                stats.append(th.stack(parts).detach())
                if self.target_kl is not None and float(terms.approx_kl) > 1.5 * self.target_kl:
                    stop = True
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {float(terms.approx_kl):.2f}")
                    break
                policy.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                th.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
                policy.optimizer.step()
            self._n_updates += 1
            if stop:
                break
        if not all(
            bool(th.isfinite(p).all()) for p in [*policy.actor.parameters(), *policy.value_net.parameters(), policy.log_std]
        ):
            raise NonFiniteError(
                f"M3PO's PPO update made the prior/value parameters non-finite at timestep {self.num_timesteps}. "
                "Lower target_kl (it stops the epochs earlier), or lower learning_rate / n_epochs."
            )
        table = th.stack(stats)
        means = table.mean(dim=0).tolist()
        for i, key in enumerate(["policy_gradient_loss", "value_loss", "entropy_loss", "clip_fraction", "approx_kl"]):
            self.logger.record(f"train/{key}", means[i])
        self.logger.record("train/max_abs_log_ratio", table[:, 5].max().item())
        self.logger.record("train/loss", loss.item())
        buf = self.rollout_buffer
        self.logger.record("train/explained_variance", explained_variance(buf.values.flatten(), buf.returns.flatten()))
        self.logger.record("train/std", th.exp(policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _update_world_model(self) -> None:
        """World-model gradient steps for the rollout's transitions (once replay holds ``learning_starts``)."""
        cfg = self.world_model_config
        stored, starts = self.replay_buffer.size(), max(cfg.learning_starts, 1)
        if stored < starts:
            return
        transitions = self.n_steps * self.n_envs
        if cfg.seed_steps > 0 and stored - transitions < starts:
            transitions = stored  # the first update: TD-MPC2's pretraining on the seed data
        steps = cfg.steps_per_rollout(transitions)
        if steps == 0:
            return
        self.policy.set_training_mode(True)
        try:
            stats = update_world_model(
                self.policy,
                self.wm_optimizer,
                self.replay_buffer,
                cfg,
                steps=steps,
                gamma=self.gamma,
                prior_max_grad_norm=self.max_grad_norm,
                q_scale=self._q_scale,
                vec_normalize=self._vec_normalize_env,
            )
        except NonFiniteError as error:
            raise NonFiniteError(f"at timestep {self.num_timesteps}: {error}") from error
        self._q_scale = stats.q_scale
        for key, value in stats._asdict().items():
            self.logger.record(f"train/{key}" if key in ("q_scale", "prior_saturation") else f"train/wm_{key}", value)

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

    def learn(
        self: SelfM3PO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "M3PO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfM3PO:
        super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
        if self.world_model_config.episodic is True and not self._terminations_seen:
            warnings.warn(
                "world_model_kwargs['episodic']=True, but the env has not terminated once: the termination head learns "
                "only that nothing terminates; use episodic=None (the default) for envs that never terminate",
                stacklevel=2,
            )
        return self
