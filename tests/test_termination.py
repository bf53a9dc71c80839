"""The termination model (``world_model_kwargs['episodic']``): planner, loss, activation, save/load, bad input."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnvWrapper

from sb3_m3po import M3PO
from sb3_m3po.m3po.config import PlannerConfig, WorldModelConfig, WorldModelTrainingConfig
from sb3_m3po.m3po.planner import MPPIPlanner
from sb3_m3po.m3po.world_model import WorldModel


class CliffModel:
    """1-D position ``z``, ``z' = z + a``; reward ``|a|``, 1.5 times more for moving right, where a cliff at
    ``z > 0.5`` ends the episode. Without the termination model right is better (4.5 against 3 over 3 steps);
    with it, right earns 1.5 and then nothing."""

    def __init__(self, with_termination: bool) -> None:
        self.with_termination = with_termination

    def next(self, z, action, task):
        return z + action

    def reward(self, z, action, task):
        return (action.abs() * th.where(action > 0, 1.5, 1.0)).sum(-1, keepdim=True)

    def terminal_value(self, z, task, generator):
        return th.zeros(*z.shape[:-1], 1)

    def prior_sample(self, z, task, generator):
        return th.zeros_like(z)

    def termination(self, z, task):
        return (z > 0.5).float() if self.with_termination else None


@pytest.mark.parametrize("with_termination", [True, False])
def test_planner_avoids_the_cliff_only_with_a_termination_model(with_termination):
    config = PlannerConfig(horizon=3, num_samples=256, num_elites=32, num_prior_trajectories=0, iterations=4)
    planner = MPPIPlanner(config, gamma=1.0)
    z = th.zeros(4, 1)
    generator = th.Generator().manual_seed(0)
    result = planner.plan(CliffModel(with_termination), z, th.zeros(4, 3, 1), deterministic=True, generator=generator)
    first = result.action.squeeze(-1)
    assert (first < -0.5).all() if with_termination else (first > 0.5).all(), first


def test_termination_loss_follows_the_terminated_flags():
    th.manual_seed(0)
    wm = WorldModel(3, 1, WorldModelConfig(latent_dim=16, enc_dim=32, mlp_dim=32, num_bins=21), episodic=True)
    cfg = WorldModelTrainingConfig()
    horizon, batch = 3, 8
    args = (th.randn(batch, 3), th.rand(horizon, batch, 1) * 2 - 1, th.zeros(horizon, batch, 1))
    targets = (th.zeros(horizon, batch, 16), th.zeros(horizon, batch, 1))
    zeros = wm.losses(*args, *targets, None, cfg, th.zeros(horizon, batch, 1))
    ones = wm.losses(*args, *targets, None, cfg, th.ones(horizon, batch, 1))
    logits = wm.termination_head(th.stack([wm.next(wm.encode(args[0]), args[1][0])]))
    assert zeros.termination > 0 and ones.termination > 0 and not th.isclose(zeros.termination, ones.termination)
    assert th.isclose(zeros.total - ones.total, zeros.termination - ones.termination, atol=1e-6)
    assert logits.shape == (1, batch, 1)
    no_head = WorldModel(3, 1, WorldModelConfig(latent_dim=16, enc_dim=32, mlp_dim=32, num_bins=21))
    assert no_head.losses(*args, *targets, None, cfg, None).termination == 0


def test_masked_steps_after_a_termination_do_not_change_the_world_model_losses():
    th.manual_seed(0)
    wm = WorldModel(3, 1, WorldModelConfig(latent_dim=16, enc_dim=32, mlp_dim=32, num_bins=21), episodic=True)
    cfg = WorldModelTrainingConfig()
    horizon, batch = 3, 8
    obs, actions, rewards = th.randn(batch, 3), th.rand(horizon, batch, 1) * 2 - 1, th.randn(horizon, batch, 1)
    target_z, td_targets = th.softmax(th.randn(horizon, batch, 16), -1), th.randn(horizon, batch, 1)
    terminated = th.zeros(horizon, batch, 1)
    terminated[0, :4] = 1.0  # the first four subsequences end their episode at step 0
    mask = th.ones(horizon, batch, 1)
    mask[1:, :4] = 0.0
    losses = wm.losses(obs, actions, rewards, target_z, td_targets, None, cfg, terminated, mask)
    after = (slice(1, None), slice(0, 4))  # other data on the masked steps (the next episode's)
    actions[after], rewards[after], td_targets[after] = 0.3, 5.0, -4.0
    target_z[after], terminated[after] = th.softmax(th.randn(horizon - 1, 4, 16), -1), 1.0
    changed = wm.losses(obs, actions, rewards, target_z, td_targets, None, cfg, terminated, mask)
    for name in ("consistency", "reward", "value", "termination", "total"):
        assert th.equal(getattr(losses, name), getattr(changed, name)), name
    unmasked = wm.losses(obs, actions, rewards, target_z, td_targets, None, cfg, terminated, None)
    assert not th.isclose(unmasked.total, changed.total), "without the mask the other episode's data counts"
    all_ones = wm.losses(obs, actions, rewards, target_z, td_targets, None, cfg, terminated, th.ones(horizon, batch, 1))
    assert th.isclose(all_ones.total, unmasked.total, rtol=1e-6), "a mask of ones is no mask"


def test_truncations_are_not_terminations(tiny):
    tiny["world_model_kwargs"]["episodic"] = True
    with pytest.warns(UserWarning, match="has not terminated once"):
        model = M3PO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), seed=0, **tiny).learn(448)
    replay = model.replay_buffer
    assert replay.size() == 448 and replay.terminated.sum() == 0, "time limits end Pendulum episodes"
    assert model.logger.name_to_value["train/wm_termination_loss"] > 0


def test_episodic_none_on_an_env_that_never_terminates_equals_episodic_false(tiny):
    params = []
    for episodic in (None, False):
        tiny["world_model_kwargs"]["episodic"] = episodic
        model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny).learn(256)
        assert model.policy.world_model.termination_head is None
        params.append([p.detach().clone() for p in model.policy.parameters()])
    assert all(th.equal(a, b) for a, b in zip(*params)), "no head, no change: the update is the same bit for bit"


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5"])
def test_sampling_across_terminations_changes_training_only_where_episodes_terminate(tiny, env_id):
    params = []
    for across in (True, False):
        tiny["world_model_kwargs"]["sample_across_terminations"] = across
        model = M3PO("MlpPolicy", env_id, seed=0, **tiny).learn(512)
        params.append([p.detach().clone() for p in model.policy.parameters()])
    same = all(th.equal(a, b) for a, b in zip(*params))
    assert same == (env_id == "Pendulum-v1"), "bit for bit on an env that never terminates, different on Hopper"


def test_first_termination_adds_the_head_and_save_load_keeps_it(tiny, tmp_path):
    model = M3PO("MlpPolicy", "Hopper-v5", seed=0, **tiny)
    assert model.policy.world_model.termination_head is None
    model.learn(512)  # random actions make Hopper fall within a few dozen steps
    assert model._terminations_seen and model.policy.world_model.termination_head is not None
    assert len(model.wm_optimizer.param_groups) == 3
    assert model.replay_buffer.terminated.sum() > 0
    model.save(tmp_path / "hopper.zip")
    loaded = M3PO.load(tmp_path / "hopper.zip", env=model.get_env())
    head, loaded_head = model.policy.world_model.termination_head, loaded.policy.world_model.termination_head
    assert loaded_head is not None and all(th.equal(a, b) for a, b in zip(head.parameters(), loaded_head.parameters()))
    obs = model.get_env().reset()
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    loaded.learn(64, reset_num_timesteps=False)


def test_episodic_false_warns_when_the_env_terminates(tiny):
    tiny["world_model_kwargs"]["episodic"] = False
    with pytest.warns(UserWarning, match="episodic'\\]=False"):
        model = M3PO("MlpPolicy", "Hopper-v5", seed=0, **tiny).learn(512)
    assert model.policy.world_model.termination_head is None


class FloatDones(VecEnvWrapper):
    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards, dones.astype(np.float32), infos


def test_dones_that_are_not_a_bool_array_are_named(tiny):
    model = M3PO("MlpPolicy", FloatDones(make_vec_env("Pendulum-v1", n_envs=1)), seed=0, **tiny)
    with pytest.raises(ValueError, match="FloatDones.step\\(\\) returned dones ndarray float32"):
        model.learn(32)
