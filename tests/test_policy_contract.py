"""SB3's policy contract, tried as a PPO user would: policy_kwargs keys, odd action shapes, policy save/load, old files."""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from sb3_m3po import M3PO, M3POPolicy

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class MatrixActionEnv(gym.Env):
    """Reward for driving a (2, 2) action matrix to a target, in 20-step episodes."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(np.array([[-1, -2], [-1, -2]], np.float32), np.array([[1, 2], [1, 2]], np.float32))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        assert action.shape == (2, 2), action.shape
        assert self.action_space.contains(action.astype(np.float32)), action
        self.t += 1
        return np.full(3, self.t / 20, np.float32), -float(np.square(action - 0.5).sum()), False, self.t >= 20, {}


def test_net_arch_and_activation_fn_shape_the_prior_and_value(tiny):
    tiny["policy_kwargs"].update(net_arch=dict(pi=[24], vf=[40, 40]), activation_fn=nn.Tanh)
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    linears = lambda net: [m.out_features for m in net if isinstance(m, nn.Linear)]  # noqa: E731
    assert linears(model.policy.actor) == [24, 1] and linears(model.policy.value_net) == [40, 40, 1]
    assert any(isinstance(m, nn.Tanh) for m in model.policy.actor)
    tiny["policy_kwargs"].update(net_arch=[16, 16], activation_fn=nn.ReLU)
    shared = M3PO("MlpPolicy", "Pendulum-v1", **tiny).learn(64)
    assert linears(shared.policy.actor) == [16, 16, 1] and linears(shared.policy.value_net) == [16, 16, 1]
    with pytest.raises(ValueError, match="net_arch takes the keys 'pi' and 'vf'"):
        M3PO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=dict(qf=[8])))


def test_features_extractor_class_is_refused_with_how_to_size_the_encoder(tiny):
    with pytest.raises(ValueError, match=r"world model's encoder.*model_size.*architecture"):
        M3PO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(features_extractor_class=FlattenExtractor))


def test_matrix_action_space_learns_and_predicts_in_its_shape(tiny):
    model = M3PO("MlpPolicy", MatrixActionEnv(), **tiny).learn(96)  # the env asserts shape and bounds
    action, _ = model.predict(np.zeros(3, np.float32))
    assert action.shape == (2, 2) and MatrixActionEnv.action_space.contains(action)
    actions, _ = model.predict(np.zeros((5, 3), np.float32), deterministic=True)
    assert actions.shape == (5, 2, 2)


def test_policy_save_and_load_give_the_same_actions(tiny, tmp_path):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny).learn(64)
    model.policy.save(tmp_path / "policy.pth")
    loaded = M3POPolicy.load(tmp_path / "policy.pth")
    obs = np.array([[1.0, 0.0, 0.3]], np.float32)
    assert np.array_equal(model.policy.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert loaded.planner_config == model.planner_config


def test_checkpoint_of_the_previous_version_names_the_renamed_settings():
    with pytest.raises(ValueError, match=r"sb3-m3po 0\.1.*num_samples -> planner_kwargs\['num_samples'\]") as error:
        M3PO.load(os.path.join(DATA, "m3po-0.1.0.zip"))
    assert "bonus_coef -> bonus_kwargs['coef']" in str(error.value)


@pytest.mark.slow
def test_cli_start_on_a_headless_machine_prints_no_glfw_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY")}
    args = ["--algo", "m3po", "--env", "dm_control/cartpole-swingup-v0", "-n", "16", "-f", str(tmp_path)]
    args += ["--eval-freq", "-1", "-params", "n_envs:1", "n_steps:16", "batch_size:16", "n_epochs:1"]
    out = subprocess.run(
        [sys.executable, "-m", "sb3_m3po.zoo.train", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GLFWError" not in out.stderr and "DISPLAY" not in out.stderr, out.stderr[-2000:]
