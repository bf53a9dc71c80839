import pytest
import torch as th

from sb3_m3po.common.math import gaussian_mixture_log_prob, masked_gaussian_log_prob
from sb3_m3po.m3po.planner import MPPIPlanner, PlannerConfig, shift_plan

# a large population with a sharp softmax: the toy problems' optima are found in one or a few refits
TOY_POPULATION = dict(num_samples=256, num_elites=32, temperature=5.0)


class PointModel:
    """Toy latent model: z' = z + a, reward = -(z + a - goal)^2, no terminal value.

    From z within reach of the goal the best first action is goal - z for any horizon.
    """

    def __init__(self, goal: float) -> None:
        self.goal = goal

    def next(self, z, action, task):
        return z + action

    def reward(self, z, action, task):
        return -((z + action - self.goal) ** 2).sum(-1, keepdim=True)

    def terminal_value(self, z, task, generator):
        return th.zeros(*z.shape[:-1], 1)

    def prior_sample(self, z, task, generator):
        return th.zeros_like(z)


@pytest.mark.parametrize("horizon", [1, 3])
def test_planner_finds_known_optimum_for_a_batch(horizon):
    th.manual_seed(0)
    model = PointModel(goal=0.3)
    planner = MPPIPlanner(
        PlannerConfig(horizon=horizon, num_prior_trajectories=8, iterations=6, min_std=0.01, **TOY_POPULATION)
    )
    z = th.tensor([[-0.5, 0.0], [0.3, 0.3], [0.8, -0.5], [1.2, 1.0]])
    out = planner.plan(model, z, th.zeros(4, horizon, 2), deterministic=True)
    optimum = 0.3 - z
    assert out.action.shape == (4, 2) and out.plan.shape == (4, horizon, 2)
    assert th.allclose(out.action, optimum, atol=0.08), (out.action, optimum)
    assert (out.std >= 0.01).all()


def test_planner_is_deterministic_with_a_seeded_generator():
    model = PointModel(goal=0.0)
    planner = MPPIPlanner(PlannerConfig(num_samples=32, num_elites=4))
    z = th.randn(3, 2)

    def run():
        g = th.Generator().manual_seed(123)
        return planner.plan(model, z, th.zeros(3, 3, 2), generator=g).action

    assert th.equal(run(), run())


def test_planner_respects_action_mask():
    model = PointModel(goal=0.5)
    planner = MPPIPlanner(PlannerConfig(num_samples=64, num_elites=8))
    mask = th.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = planner.plan(model, th.zeros(2, 2), th.zeros(2, 3, 2), action_mask=mask)
    assert out.action[0, 1] == 0 and out.mean[0, 1] == 0 and out.plan[0, :, 1].abs().max() == 0


class TwoGoalModel:
    """Toy latent model with two equally good first actions: reward = -(|a| - 0.6)^2 on one action dim.

    The elites split between +0.6 and -0.6, so their mean is near 0, the worst action.
    """

    def next(self, z, action, task):
        return z

    def reward(self, z, action, task):
        return -((action.abs() - 0.6) ** 2).sum(-1, keepdim=True)

    def terminal_value(self, z, task, generator):
        return th.zeros(*z.shape[:-1], 1)

    def prior_sample(self, z, task, generator):
        return th.zeros(*z.shape[:-1], 1)


def _two_goal_plan(action_choice: str, deterministic: bool, seed: int = 0, batch: int = 64):
    config = PlannerConfig(horizon=1, num_prior_trajectories=0, iterations=1, action_choice=action_choice, **TOY_POPULATION)
    generator = th.Generator().manual_seed(seed)
    planner = MPPIPlanner(config)
    return planner.plan(
        TwoGoalModel(), th.zeros(batch, 2), th.zeros(batch, 1, 1), deterministic=deterministic, generator=generator
    )


def test_elite_action_choice_picks_one_of_two_optima_where_the_mean_picks_neither():
    mean = _two_goal_plan("mean", deterministic=True)
    elite = _two_goal_plan("elite", deterministic=True)
    assert mean.action.abs().mean() < 0.3, "the toy model should split the elites between the two optima"
    assert ((elite.action.abs() - 0.6).abs() < 0.15).all(), elite.action.squeeze(-1)
    # both optima are chosen across the batch: the choice follows the weights, not a fixed sign
    assert (elite.action > 0).any() and (elite.action < 0).any()
    # the warm start and the logged refit stay the MPPI mean
    assert th.equal(elite.plan, mean.plan) and th.equal(elite.mean, mean.mean)


def test_elite_action_choice_reports_the_density_its_actions_are_drawn_from():
    out = _two_goal_plan("elite", deterministic=False, seed=1, batch=4096)
    assert out.log_prob.shape == (4096,) and th.isfinite(out.log_prob).all()
    # Importance sampling: for actions a ~ p and any normalised density q, E[q(a) / p(a)] = 1, so the
    # reported log p must make this average 1 (a density centred on the chosen elite alone would be
    # too high and give less). q: the Gaussian on the refitted mean, which also covers both optima.
    single = masked_gaussian_log_prob(out.action, out.mean, out.std)
    ratio = (single - out.log_prob).exp()
    assert abs(ratio.mean().item() - 1.0) < 0.05, ratio.mean()
    # and the single Gaussian is a worse fit than the mixture (Gibbs: E[log p - log q] >= 0)
    assert (out.log_prob - single).mean() > 0.05
    mean = _two_goal_plan("mean", deterministic=False, seed=1)
    assert th.allclose(mean.log_prob, masked_gaussian_log_prob(mean.action, mean.mean, mean.std))


def test_gaussian_mixture_log_prob_matches_a_direct_sum_and_masks():
    th.manual_seed(0)
    x, means, std = th.randn(3, 2), th.randn(3, 4, 2), th.rand(3, 2) + 0.1
    weights = th.softmax(th.randn(3, 4), dim=1)
    weights[0, 1] = 0.0  # a component with no weight is allowed
    weights = weights / weights.sum(1, keepdim=True)
    direct = th.zeros(3)
    for k in range(4):
        normal = th.distributions.Normal(means[:, k], std)
        direct += weights[:, k] * normal.log_prob(x).sum(-1).exp()
    assert th.allclose(gaussian_mixture_log_prob(x, means, std, weights), direct.log(), atol=1e-5)
    mask = th.tensor([[1.0, 0.0]] * 3)
    masked = gaussian_mixture_log_prob(x, means, std * mask, weights, mask)
    only_first = gaussian_mixture_log_prob(x[:, :1], means[:, :, :1], std[:, :1], weights)
    assert th.allclose(masked, only_first, atol=1e-5)
    one = gaussian_mixture_log_prob(x, means[:, :1], std, th.ones(3, 1))
    assert th.allclose(one, masked_gaussian_log_prob(x, means[:, 0], std), atol=1e-6)


def test_shift_plan_warm_start_and_reset():
    plan = th.arange(2 * 3 * 1, dtype=th.float32).view(2, 3, 1)
    shifted = shift_plan(plan)
    assert th.equal(shifted[:, :2], plan[:, 1:]) and (shifted[:, 2] == 0).all()
    reset = shift_plan(plan, th.tensor([True, False]))
    assert (reset[0] == 0).all() and th.equal(reset[1], shifted[1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_elites": 200, "num_samples": 100}, "num_elites"),
        ({"horizon": 0}, "horizon"),
        ({"num_prior_trajectories": 100, "num_samples": 100}, "num_prior_trajectories"),
        ({"min_std": 3.0, "max_std": 2.0}, "min_std"),
        ({"temperature": 0.0}, "temperature"),
        ({"action_choice": "best"}, "action_choice"),
    ],
)
def test_invalid_planner_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PlannerConfig(**kwargs)
