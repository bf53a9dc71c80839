import copy
import os

import pytest
import torch as th

os.environ.setdefault("MUJOCO_GL", "egl")
th.set_num_threads(1)

TINY = dict(
    n_steps=32,
    batch_size=16,
    n_epochs=2,
    planner_kwargs=dict(num_samples=16, num_elites=4, num_prior_trajectories=2, iterations=2),
    world_model_kwargs=dict(batch_size=8, gradient_steps=4, learning_starts=32),
    policy_kwargs=dict(architecture=dict(latent_dim=16, enc_dim=32, mlp_dim=32, prior_dim=32, num_bins=21)),
)


@pytest.fixture
def tiny() -> dict:
    """Hyperparameters small enough for a few hundred steps in seconds."""
    return copy.deepcopy(TINY)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device of tests/test_device.py (e.g. cuda)")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """The torch device given with ``--device`` (default cpu)."""
    return request.config.getoption("--device")
