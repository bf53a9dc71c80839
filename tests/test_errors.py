"""Bad input gets a clear error that names the problem; nothing is silently trained on."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_m3po import M3PO
from sb3_m3po.common.utils import NonFiniteError


class CorruptingEnv(gym.Wrapper):
    """Pendulum that returns a NaN observation or reward at a given step."""

    def __init__(self, what: str, at: int = 5):
        super().__init__(gym.make("Pendulum-v1"))
        self.what, self.at, self.t = what, at, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t == self.at:
            if self.what == "obs":
                obs = obs * np.nan
            else:
                reward = float("inf")
        return obs, reward, terminated, truncated, info


def test_discrete_action_space_is_refused(tiny):
    with pytest.raises((ValueError, AssertionError), match="Box"):
        M3PO("MlpPolicy", "CartPole-v1", **tiny)


def test_unbounded_action_space_is_refused(tiny):
    class Unbounded(gym.Wrapper):
        def __init__(self):
            super().__init__(gym.make("Pendulum-v1"))
            self.action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    with pytest.raises((ValueError, AssertionError), match="finite lower and upper bound"):
        M3PO("MlpPolicy", Unbounded(), **tiny)


def test_image_observations_are_refused(tiny):
    class ImageEnv(gym.Wrapper):
        def __init__(self):
            super().__init__(gym.make("Pendulum-v1"))
            self.observation_space = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)

    with pytest.raises(ValueError, match="image"):
        M3PO("MlpPolicy", ImageEnv(), **tiny)


@pytest.mark.parametrize("what, match", [("obs", "non-finite .*observation"), ("reward", "non-finite .*reward")])
def test_nan_observation_or_reward_raises_before_storage(tiny, what, match):
    model = M3PO("MlpPolicy", CorruptingEnv(what, at=5), **tiny)
    with pytest.raises(NonFiniteError, match=match):
        model.learn(64)
    assert model.replay_buffer.size() == 4, "the corrupt transition must not reach the replay buffer"


def test_diverging_world_model_raises_before_updating(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    model.learn(32)
    with th.no_grad():
        # the target Q is used only by the TD targets, so acting stays finite and the loss diverges
        model.policy.world_model.target_q_ensemble.head.weight.fill_(float("inf"))
    before = model.policy.world_model.dynamics[0].weight.clone()
    with pytest.raises(NonFiniteError, match="world-model loss became non-finite"):
        model.learn(32, reset_num_timesteps=False)
    assert th.equal(before, model.policy.world_model.dynamics[0].weight)


class _CollapseOldLogProbs(BaseCallback):
    """Makes every collected action look astronomically unlikely under the prior of its rollout."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.model.rollout_buffer.log_probs[:] = -1e4


def test_far_off_planner_actions_do_not_overflow_the_ppo_ratio(tiny):
    # old log-probs of -1e4: the ratio exp(1e4) overflowed SB3's loop and wrote NaN into the prior
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    model.learn(64, callback=_CollapseOldLogProbs())
    logged = model.logger.name_to_value
    assert logged["train/max_abs_log_ratio"] > 1e3
    assert np.isfinite(logged["train/approx_kl"]) and np.isfinite(logged["train/loss"])
    assert all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


class _PoisonPrior(BaseCallback):
    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        with th.no_grad():
            self.model.policy.actor[0].weight.fill_(float("nan"))


def test_non_finite_prior_update_names_the_prior(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    with pytest.raises(NonFiniteError, match="PPO update made the prior/value parameters non-finite"):
        model.learn(64, callback=_PoisonPrior())


def test_nan_planned_action_raises(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    with th.no_grad():
        model.policy.world_model.encoder[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite .*planned action"):
        model.learn(32)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"planner_kwargs": {"num_elites": 64, "num_samples": 16}}, "num_elites"),
        ({"planner_kwargs": {"horizon": 0}}, "horizon"),
        ({"planner_kwargs": {"num_sample": 64}}, r"num_sample'\].*valid keys: horizon, num_samples"),
        ({"world_model_kwargs": {"batch_size": 0}}, "batch_size"),
        ({"world_model_kwargs": {"update_ratio": 0.0}}, "update_ratio"),
        ({"world_model_kwargs": {"tau": 0.0}}, "tau"),
        ({"world_model_kwargs": {"lr": 1e-3}}, r"\['lr'\] in world_model_kwargs; valid keys: learning_rate"),
        ({"gamma": 1.5}, "gamma"),
        ({"bonus_kwargs": {"coef": -1.0}}, "coef"),
        ({"bonus_kwargs": {"anneal_fraction": 0.0}}, "anneal_fraction"),
        ({"bonus_kwargs": {"alpha": 0.1}}, r"\['alpha'\] in bonus_kwargs; valid keys: coef"),
        ({"target_kl": 0.0}, "target_kl"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"n_steps": 0}, "n_steps"),
        ({"policy_kwargs": {"model_size": "huge"}}, "model_size"),
        ({"policy_kwargs": {"architecture": {"latent_dim": 30}}}, "latent_dim"),
        ({"policy_kwargs": {"architecture": {"latent": 32}}}, r"\['latent'\] in policy_kwargs\['architecture'\]"),
    ],
)
def test_invalid_hyperparameters_name_the_parameter(tiny, kwargs, name):
    params = {**tiny, **kwargs}
    with pytest.raises((ValueError, AssertionError), match=name):
        M3PO("MlpPolicy", "Pendulum-v1", **params)


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="broken.zip.*corrupt"):
        M3PO.load(path)


def test_foreign_checkpoint(tmp_path):
    PPO("MlpPolicy", "Pendulum-v1", n_steps=64).save(tmp_path / "ppo")
    with pytest.raises(ValueError, match="not saved by M3PO"):
        M3PO.load(tmp_path / "ppo.zip")


def test_predict_refuses_nan_observation(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    with pytest.raises(NonFiniteError, match="non-finite"):
        model.predict(np.array([np.nan, 0.0, 0.0], dtype=np.float32))


def test_foreign_corrupt_or_mismatched_replay_buffer(tiny, tmp_path):
    from stable_baselines3 import SAC

    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    SAC("MlpPolicy", "Pendulum-v1", buffer_size=100).save_replay_buffer(tmp_path / "sac.pkl")
    with pytest.raises(ValueError, match="sac.pkl holds a ReplayBuffer, not an M3PO"):
        model.load_replay_buffer(tmp_path / "sac.pkl")
    (tmp_path / "broken.pkl").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="broken.pkl: it is corrupt"):
        model.load_replay_buffer(tmp_path / "broken.pkl")
    two_envs = M3PO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2), **tiny)
    two_envs.save_replay_buffer(tmp_path / "two.pkl")
    with pytest.raises(ValueError, match="two.pkl: the replay buffer has n_envs 2 but the model has 1"):
        model.load_replay_buffer(tmp_path / "two.pkl")
    assert model.replay_buffer.n_envs == 1, "a refused buffer must not replace the model's own"
