import pytest
import torch as th

from sb3_m3po.m3po.config import PlannerConfig
from sb3_m3po.m3po.planner import MPPIPlanner, shift_plan

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

    def termination(self, z, task):
        return None


@pytest.mark.parametrize("horizon", [1, 3])
def test_planner_finds_known_optimum_for_a_batch(horizon):
    th.manual_seed(0)
    model = PointModel(goal=0.3)
    planner = MPPIPlanner(
        PlannerConfig(horizon=horizon, num_prior_trajectories=8, iterations=6, min_std=0.01, **TOY_POPULATION), gamma=0.99
    )
    z = th.tensor([[-0.5, 0.0], [0.3, 0.3], [0.8, -0.5], [1.2, 1.0]])
    out = planner.plan(model, z, th.zeros(4, horizon, 2), deterministic=True)
    optimum = 0.3 - z
    assert out.action.shape == (4, 2) and out.plan.shape == (4, horizon, 2)
    assert th.allclose(out.action, optimum, atol=0.08), (out.action, optimum)
    assert (out.std >= 0.01).all()


def test_planner_is_deterministic_with_a_seeded_generator():
    model = PointModel(goal=0.0)
    planner = MPPIPlanner(PlannerConfig(num_samples=32, num_elites=4), gamma=0.99)
    z = th.randn(3, 2)

    def run():
        g = th.Generator().manual_seed(123)
        return planner.plan(model, z, th.zeros(3, 3, 2), generator=g).action

    assert th.equal(run(), run())


def test_planner_respects_action_mask():
    model = PointModel(goal=0.5)
    planner = MPPIPlanner(PlannerConfig(num_samples=64, num_elites=8), gamma=0.99)
    mask = th.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = planner.plan(model, th.zeros(2, 2), th.zeros(2, 3, 2), action_mask=mask)
    assert out.action[0, 1] == 0 and out.mean[0, 1] == 0 and out.plan[0, :, 1].abs().max() == 0


def test_sampled_action_reports_its_gaussian_log_density():
    model = PointModel(goal=0.2)
    planner = MPPIPlanner(PlannerConfig(num_samples=64, num_elites=8), gamma=0.99)
    out = planner.plan(model, th.zeros(256, 2), th.zeros(256, 3, 2), generator=th.Generator().manual_seed(0))
    expected = th.distributions.Normal(out.mean, out.std).log_prob(out.action).sum(-1)
    assert th.allclose(out.log_prob, expected, atol=1e-5)
    # the executed action is a sample around the refitted mean, not the mean itself
    assert not th.allclose(out.action, out.mean)


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
        ({"iterations": 0}, "iterations"),
    ],
)
def test_invalid_planner_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PlannerConfig(**kwargs)
