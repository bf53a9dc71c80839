"""
Settings of M3PO's components: one frozen dataclass per component, the only home of its defaults.

``M3PO(planner_kwargs=..., world_model_kwargs=..., bonus_kwargs=...)`` and the ``model_size`` /
``architecture`` entries of ``policy_kwargs`` are turned into these with :func:`make_config`, which
names a misspelt key together with the valid ones.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")


def _check(checks: list[tuple[bool, str]], component: str) -> None:
    for ok, message in checks:
        if not ok:
            raise ValueError(f"Invalid {component} setting: {message}")


def make_config(cls: type[ConfigT], kwargs: "dict[str, Any] | ConfigT | None", argument: str) -> ConfigT:
    """
    Build a settings dataclass from a user's kwargs dict (or pass an instance through).

    :param cls: the dataclass
    :param kwargs: overrides of its defaults (None: all defaults)
    :param argument: the name the user wrote them under, for the error message
    :raises ValueError: for a key that is not a field of ``cls``, naming the valid keys
    """
    if isinstance(kwargs, cls):
        return kwargs
    kwargs = dict(kwargs or {})  # type: ignore[arg-type]
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {argument}; valid keys: {', '.join(names)}")
    return cls(**kwargs)


def check_algorithm_arguments(
    n_steps: int,
    batch_size: int,
    n_epochs: int,
    gamma: float,
    gae_lambda: float,
    target_kl: float | None,
    dual_clip: float | None,
) -> None:
    """:raises ValueError: naming the first of M3PO's PPO arguments that is out of range (before SB3 asserts on it)"""
    for ok, name, value, expected in [
        (n_steps >= 1, "n_steps", n_steps, "an integer >= 1"),
        (batch_size >= 2, "batch_size", batch_size, "an integer >= 2"),
        (n_epochs >= 0, "n_epochs", n_epochs, "an integer >= 0 (0: no PPO update)"),
        (0 < gamma <= 1, "gamma", gamma, "a value in (0, 1]"),
        (0 <= gae_lambda <= 1, "gae_lambda", gae_lambda, "a value in [0, 1]"),
        (target_kl is None or target_kl > 0, "target_kl", target_kl, "None or a value > 0"),
        (dual_clip is None or dual_clip > 1, "dual_clip", dual_clip, "None or a value > 1"),
    ]:
        if not ok:
            raise ValueError(f"Invalid M3PO hyperparameter {name}={value!r}: expected {expected}")


@dataclass(frozen=True)
class PlannerConfig:
    """
    MPPI settings (``planner_kwargs``). The defaults are a budget for 2 CPU cores; TD-MPC2's
    is 512 samples, 64 elites, 24 prior trajectories, 6 iterations.

    :param horizon: planning horizon H, also the length of the world model's training subsequences
    :param num_samples: action sequences per iteration (including the prior's)
    :param num_elites: best sequences used for the refit
    :param num_prior_trajectories: sequences proposed by the policy prior
    :param iterations: MPPI refit iterations
    :param temperature: multiplies the elite scores in the softmax
    :param min_std: lower clamp of the sampling std
    :param max_std: upper clamp (and initial value) of the sampling std
    """

    horizon: int = 3
    num_samples: int = 128
    num_elites: int = 16
    num_prior_trajectories: int = 8
    iterations: int = 3
    temperature: float = 0.5
    min_std: float = 0.05
    max_std: float = 2.0

    def __post_init__(self) -> None:
        _check(
            [
                (self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}"),
                (self.num_samples >= 2, f"num_samples must be >= 2, got {self.num_samples}"),
                (
                    1 <= self.num_elites <= self.num_samples,
                    f"num_elites must be in [1, num_samples={self.num_samples}], got {self.num_elites}",
                ),
                (
                    0 <= self.num_prior_trajectories < self.num_samples,
                    f"num_prior_trajectories must be in [0, num_samples={self.num_samples}), "
                    f"got {self.num_prior_trajectories}",
                ),
                (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
                (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                (
                    0 < self.min_std <= self.max_std,
                    f"need 0 < min_std <= max_std, got min_std={self.min_std}, max_std={self.max_std}",
                ),
            ],
            "planner",
        )


@dataclass(frozen=True)
class WorldModelConfig:
    """
    Network sizes of the world model and the prior/value heads (``policy_kwargs``: ``model_size`` picks a
    preset of :data:`MODEL_PRESETS`, ``architecture`` overrides single fields).

    :param latent_dim: latent size, a multiple of ``simnorm_dim``
    :param enc_dim: encoder hidden width
    :param mlp_dim: hidden width of dynamics, reward and Q networks
    :param prior_dim: hidden width of the prior and value MLPs (two layers; ``net_arch`` overrides)
    :param num_q: Q ensemble size (>= 2: TD targets take the min of two heads)
    :param num_bins: bins of the two-hot reward and Q heads
    :param vmin: lowest bin (symlog space)
    :param vmax: highest bin (symlog space)
    :param simnorm_dim: SimNorm group size
    :param task_dim: task embedding size (multi-task only)
    :param weight_init: ``"small"`` (TD-MPC2's: weights of std 0.02 in the world model and the prior,
        :func:`~sb3_m3po.common.layers.small_init_`) or ``"torch"`` (PyTorch's default initialisation)
    """

    latent_dim: int = 64
    enc_dim: int = 128
    mlp_dim: int = 128
    prior_dim: int = 128
    num_q: int = 2
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    simnorm_dim: int = 8
    task_dim: int = 16
    weight_init: str = "small"

    def __post_init__(self) -> None:
        _check(
            [
                (self.weight_init in ("torch", "small"), f"weight_init must be 'torch' or 'small', got {self.weight_init!r}"),
                (
                    self.latent_dim % self.simnorm_dim == 0,
                    f"latent_dim={self.latent_dim} must be a multiple of simnorm_dim={self.simnorm_dim}",
                ),
                (self.num_q >= 2, f"num_q={self.num_q}: the TD target takes the min of 2 Q heads, so num_q must be >= 2"),
                (self.num_bins >= 2, f"num_bins must be >= 2, got {self.num_bins}"),
                (self.vmin < self.vmax, f"need vmin < vmax, got vmin={self.vmin}, vmax={self.vmax}"),
                (min(self.enc_dim, self.mlp_dim, self.prior_dim, self.task_dim) >= 1, "widths must be >= 1"),
            ],
            "world-model architecture",
        )


# "cpu" (the defaults above) is for 2-core machines: it keeps 2 Q heads because on 2 cores the
# 5-head ensemble was a quarter of a world-model step. "1M"/"5M" follow TD-MPC2's presets.
MODEL_PRESETS: dict[str, WorldModelConfig] = {
    "cpu": WorldModelConfig(),
    "1M": WorldModelConfig(latent_dim=128, enc_dim=256, mlp_dim=384, prior_dim=384, num_q=5),
    "5M": WorldModelConfig(latent_dim=512, enc_dim=256, mlp_dim=512, prior_dim=512, num_q=5),
}


def model_config(model_size: str, architecture: dict[str, Any] | None = None) -> WorldModelConfig:
    """The preset ``model_size`` with the fields of ``architecture`` replaced."""
    if model_size not in MODEL_PRESETS:
        raise ValueError(f"model_size must be one of {sorted(MODEL_PRESETS)}, got {model_size!r}")
    preset = dataclasses.asdict(MODEL_PRESETS[model_size])
    make_config(WorldModelConfig, architecture, "policy_kwargs['architecture']")  # names a bad key
    return WorldModelConfig(**{**preset, **(architecture or {})})


@dataclass(frozen=True)
class WorldModelTrainingConfig:
    """
    World-model training (``world_model_kwargs``), TD-MPC2's losses and optimiser, plus the
    Q-guided step on the prior mean that follows each world-model step.

    Subsequences are ``planner_kwargs["horizon"]`` steps long: the model is trained over the
    horizon it plans over.

    :param learning_rate: Adam learning rate of the world model
    :param enc_lr_scale: encoder learning-rate multiplier
    :param batch_size: subsequences per gradient step
    :param gradient_steps: steps per rollout (-1: ``update_ratio`` per collected transition)
    :param update_ratio: steps per collected transition when ``gradient_steps=-1``
    :param learning_starts: transitions in replay before the world model trains
    :param seed_steps: env steps (all envs counted) acted with uniform random actions before the planner takes
        over, as TD-MPC2's seed phase (and SB3's off-policy ``learning_starts``); with it, the world model's first
        update takes ``update_ratio`` steps per transition in replay, not only per transition of the rollout
        (TD-MPC2's pretraining on the seed data). 0: the planner acts from the first step
    :param buffer_size: replay capacity (transitions)
    :param rho: temporal weight of the multi-step losses
    :param consistency_coef: latent consistency loss weight
    :param reward_coef: reward loss weight
    :param value_coef: Q loss weight
    :param max_grad_norm: gradient clip
    :param tau: Polyak coefficient of the target Q ensemble
    :param prior_q_coef: weight of the step ``-Q(z, mu(z)) / scale`` on the prior mean after each
        world-model step (0: the prior learns from PPO alone). PPO improves the prior slowly from
        planner data, and the planner's terminal value and the TD targets use the prior's action
    :param balanced_replay: multi-task: the same number of subsequences from every task
    :param episodic: model termination (TD-MPC2's termination head): ``True`` from the start, ``None`` from the
        first real termination in replay (so envs that never terminate train exactly as without the head),
        ``False`` never. The planner and ``Q_MB`` weight each later step by the predicted probability of being
        alive; the TD targets keep the real terminations
    :param termination_coef: weight of the termination loss (binary cross-entropy on ``terminated``, never on
        ``truncated``)
    :param sample_across_terminations: replayed subsequences may end their episode with a termination (the steps
        after it are masked out of every loss), so a terminal transition is also sampled as the first step, where
        Q learns its target on the encoded latent and the termination head's loss weighs it fully. False: only
        subsequences inside one episode (TD-MPC2's sampling), where a terminal transition is only ever the last
        step. Envs that never terminate sample the same either way
    """

    learning_rate: float = 3e-4
    enc_lr_scale: float = 0.3
    batch_size: int = 128
    gradient_steps: int = -1
    update_ratio: float = 1.0
    learning_starts: int = 1000
    seed_steps: int = 0
    buffer_size: int = 1_000_000
    rho: float = 0.5
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    max_grad_norm: float = 20.0
    tau: float = 0.01
    prior_q_coef: float = 1.0
    balanced_replay: bool = True
    episodic: bool | None = None
    termination_coef: float = 1.0
    sample_across_terminations: bool = True

    def __post_init__(self) -> None:
        coefs = ("consistency_coef", "reward_coef", "value_coef", "prior_q_coef", "termination_coef")
        _check(
            [
                (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
                (self.enc_lr_scale > 0, f"enc_lr_scale must be > 0, got {self.enc_lr_scale}"),
                (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                (self.gradient_steps >= -1, f"gradient_steps must be -1 or >= 0, got {self.gradient_steps}"),
                (self.update_ratio > 0, f"update_ratio must be > 0, got {self.update_ratio}"),
                (self.learning_starts >= 0, f"learning_starts must be >= 0, got {self.learning_starts}"),
                (self.seed_steps >= 0, f"seed_steps must be >= 0, got {self.seed_steps}"),
                (self.buffer_size >= 1, f"buffer_size must be >= 1, got {self.buffer_size}"),
                (0 < self.rho <= 1, f"rho must be in (0, 1], got {self.rho}"),
                *[(getattr(self, c) >= 0, f"{c} must be >= 0, got {getattr(self, c)}") for c in coefs],
                (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
                (0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}"),
            ],
            "world-model training",
        )

    def steps_per_rollout(self, transitions: int) -> int:
        """World-model gradient steps after a rollout of ``transitions`` transitions."""
        if self.gradient_steps >= 0:
            return self.gradient_steps
        return max(1, round(self.update_ratio * transitions))


@dataclass(frozen=True)
class PriorConfig:
    """
    How the policy prior learns from the Q ensemble (``prior_kwargs``), besides PPO's epochs. The
    step itself follows each world-model step and is weighted by ``world_model_kwargs["prior_q_coef"]``.

    :param objective: ``"mean"``: ascend ``Q(z, mu(z))`` on the prior mean, Q divided by a running mean of
        ``|Q|``, with the PPO optimizer. ``"sample"``: TD-MPC2's policy loss: ascend ``Q`` at a
        reparameterised tanh-squashed sample plus ``entropy_coef`` times the Gaussian entropy scaled by the
        action size, Q divided by a running 5-95 percentile range, with an Adam of its own
    :param state_std: the prior's std is an output of its MLP (bounded in ``[exp(log_std_min),
        exp(log_std_max)]``, as TD-MPC2's) instead of one learned parameter per action dim (SB3's PPO)
    :param target_action: action of the TD targets and of the planner's terminal value: ``"mean"`` (the
        prior mean) or ``"sample"`` (a squashed prior sample, as TD-MPC2)
    :param entropy_coef: entropy weight of the ``"sample"`` objective
    :param learning_rate: Adam learning rate of the ``"sample"`` objective
    :param log_std_min: lower bound of a state-dependent log std
    :param log_std_max: upper bound of a state-dependent log std
    :param mean_reg: weight of ``mean(u ** 2)``, ``u`` the prior's pre-tanh mean, in the Q-guided step's loss
        (as the original SAC's ``mean_reg``): without it ``u`` can drift far past the tanh's bounds, where
        neither update's gradient reaches it and the prior is a constant bang-bang action
    :param bc_coef: weight of the squared distance between the prior mean and the replayed (executed) action,
        averaged over the valid action dims and weighted over the horizon like the Q term, in the Q-guided step
        (TD3+BC's constraint, which TD-M(PC)^2 adds to TD-MPC2: the TD targets and the planner's terminal value read
        Q at the prior's action, so a prior that wanders away from the planner's actions makes Q answer for
        actions it never saw, and its overestimation feeds back through the targets). 0: no constraint
    """

    objective: str = "mean"
    state_std: bool = False
    target_action: str = "mean"
    entropy_coef: float = 1e-4
    learning_rate: float = 3e-4
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    mean_reg: float = 1e-3
    bc_coef: float = 0.0

    def __post_init__(self) -> None:
        _check(
            [
                (self.mean_reg >= 0, f"mean_reg must be >= 0, got {self.mean_reg}"),
                (self.bc_coef >= 0, f"bc_coef must be >= 0, got {self.bc_coef}"),
                (self.objective in ("mean", "sample"), f"objective must be 'mean' or 'sample', got {self.objective!r}"),
                (
                    self.target_action in ("mean", "sample"),
                    f"target_action must be 'mean' or 'sample', got {self.target_action!r}",
                ),
                (self.entropy_coef >= 0, f"entropy_coef must be >= 0, got {self.entropy_coef}"),
                (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
                (
                    self.log_std_min < self.log_std_max,
                    f"need log_std_min < log_std_max, got {self.log_std_min}, {self.log_std_max}",
                ),
            ],
            "prior",
        )


@dataclass(frozen=True)
class BonusConfig:
    """
    Exploration bonus ``alpha_k * clip(zscore(|Q_MB - Q_MF|), 0, clip)`` added to the advantages (``bonus_kwargs``).

    :param coef: initial coefficient alpha (0: no bonus)
    :param clip: upper clip of the z-scored gap
    :param anneal_fraction: share of training over which alpha decays linearly to 0
    :param per_task: multi-task: z-score within each task instead of over the whole rollout, so a
        task whose raw gaps are much larger than the others' does not take the whole bonus
    """

    coef: float = 0.1
    clip: float = 3.0
    anneal_fraction: float = 0.5
    per_task: bool = True

    def __post_init__(self) -> None:
        _check(
            [
                (self.coef >= 0, f"coef must be >= 0, got {self.coef}"),
                (self.clip >= 0, f"clip must be >= 0, got {self.clip}"),
                (0 < self.anneal_fraction <= 1, f"anneal_fraction must be in (0, 1], got {self.anneal_fraction}"),
            ],
            "bonus",
        )

    def coef_at(self, progress: float) -> float:
        """Alpha after ``progress`` (0 to 1) of the training budget."""
        return self.coef * max(0.0, 1.0 - progress / self.anneal_fraction)
