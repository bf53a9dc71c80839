import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_m3po.common.buffers import EpisodicReplayBuffer, M3PORolloutBuffer


def _fill(buffer, n_steps, n_envs, rng, done_prob=0.1):
    """Observations encode (episode counter, step) so samples can be checked."""
    episode = np.arange(n_envs) * 1000
    step = np.zeros(n_envs)
    for _ in range(n_steps):
        done = rng.random(n_envs) < done_prob
        obs = np.stack([episode, step], 1)
        buffer.add(obs, obs + [0, 1], rng.uniform(-1, 1, (n_envs, 1)), rng.normal(size=n_envs), done * 0.0, done)
        step = np.where(done, 0, step + 1)
        episode = np.where(done, episode + 1, episode)


@pytest.mark.parametrize("capacity", [10_000, 300])  # 300: the circular buffer wraps
def test_replay_subsequences_never_cross_truncated_episode_ends(capacity):
    rng = np.random.default_rng(0)
    buffer = EpisodicReplayBuffer(capacity, obs_dim=2, action_dim=1, n_envs=3)
    _fill(buffer, 400, 3, rng)
    np.random.seed(0)
    batch = buffer.sample(512, horizon=4)
    assert batch.observations.shape == (512, 2)
    assert batch.actions.shape == (4, 512, 1) and batch.rewards.shape == (4, 512, 1)
    assert batch.next_observations.shape == (4, 512, 2)
    assert batch.mask is None, "episodes that end by truncation are never crossed"
    seq = th.cat([batch.observations[None], batch.next_observations], 0)  # (5, B, 2)
    # same episode everywhere and consecutive steps
    assert (seq[:, :, 0] == seq[:1, :, 0]).all()
    assert (seq[1:, :, 1] - seq[:-1, :, 1] == 1).all()


def test_replay_subsequences_may_end_an_episode_by_termination_and_mask_the_steps_after():
    rng = np.random.default_rng(0)
    buffer = EpisodicReplayBuffer(10_000, obs_dim=2, action_dim=1, n_envs=3)
    episode, step = np.arange(3) * 1000, np.zeros(3)
    for _ in range(400):  # every episode end is a termination
        done = rng.random(3) < 0.1
        obs = np.stack([episode, step], 1)
        buffer.add(obs, obs + [0, 1], rng.uniform(-1, 1, (3, 1)), rng.normal(size=3), done * 1.0, done)
        step, episode = np.where(done, 0, step + 1), np.where(done, episode + 1, episode)
    np.random.seed(0)
    batch = buffer.sample(2048, horizon=4)
    assert batch.mask is not None and batch.mask.shape == (4, 2048, 1)
    mask = batch.mask[..., 0].bool()
    assert (mask[0]).all() and (mask[1:] <= mask[:-1]).all(), "the mask is 1 up to the episode's end, then 0"
    seq = th.cat([batch.observations[None], batch.next_observations], 0)
    inside = th.cat([mask[:1], mask], 0)  # next_observations[t] is in the episode when step t is
    assert (seq[:, :, 0] == seq[:1, :, 0])[inside].all(), "unmasked steps stay in the start's episode"
    assert ((seq[1:, :, 1] - seq[:-1, :, 1]) == 1)[mask].all()
    crossing = ~mask[-1]
    assert 0 < crossing.float().mean() < 0.5
    last_inside = mask.sum(0) - 1
    assert batch.terminated[last_inside, th.arange(2048), 0][crossing].eq(1).all(), "a subsequence leaves only by termination"
    assert batch.terminated[0, :, 0].any(), "terminal transitions are sampled as starts, not only as last steps"
    within = buffer.sample(2048, horizon=4, across_terminations=False)
    assert within.mask is None and not within.terminated[:-1].any(), "TD-MPC2's sampling: terminal steps come last"


@pytest.mark.parametrize("steps", [40, 400])  # 400: the buffer has wrapped
def test_replay_pickle_holds_only_the_filled_rows_and_restores_the_buffer(steps):
    import pickle

    rng = np.random.default_rng(0)
    buffer = EpisodicReplayBuffer(600, obs_dim=2, action_dim=1, n_envs=3)
    _fill(buffer, steps, 3, rng)
    data = pickle.dumps(buffer)
    restored = pickle.loads(data)
    assert restored.size() == buffer.size() and restored.pos == buffer.pos and restored.full == buffer.full
    for name in EpisodicReplayBuffer._PER_STEP:
        assert np.array_equal(getattr(restored, name), getattr(buffer, name)), name
    assert restored.observations.shape == (200, 3, 2), "the capacity is allocated again"
    if steps == 40:
        assert len(data) < 0.4 * len(pickle.dumps(buffer.__dict__)), "a buffer that has not wrapped pickles its data only"
    _fill(restored, 10, 3, rng)  # and keeps working
    assert restored.size() == min(steps + 10, 200) * 3


def test_replay_refuses_when_episodes_are_shorter_than_horizon():
    rng = np.random.default_rng(0)
    buffer = EpisodicReplayBuffer(1000, 2, 1, 1)
    _fill(buffer, 50, 1, rng, done_prob=1.0)  # every episode lasts one step
    with pytest.raises(ValueError, match="horizon"):
        buffer.sample(8, horizon=3)


def test_rollout_buffer_stores_behaviour_log_prob_and_yields_all_samples():
    n_steps, n_envs = 8, 2
    buf = M3PORolloutBuffer(n_steps, spaces.Box(-np.inf, np.inf, (3,)), spaces.Box(-1, 1, (2,)), n_envs=n_envs)
    for t in range(n_steps):
        buf.add(
            obs=np.full((n_envs, 3), t, dtype=np.float32),
            action=np.zeros((n_envs, 2)),
            reward=np.ones(n_envs),
            episode_start=np.zeros(n_envs),
            value=th.zeros(n_envs),
            log_prob=th.zeros(n_envs),
            behaviour_log_prob=th.full((n_envs,), -1.0),
            next_obs=np.full((n_envs, 3), t + 1.0),
            terminated=np.zeros(n_envs),
            done=np.zeros(n_envs),
        )
    assert np.array_equal(buf.next_observations[:, 0, 0], np.arange(1, n_steps + 1))
    assert (buf.behaviour_log_probs == -1.0).all()
    buf.compute_returns_and_advantage(np.zeros((n_steps, n_envs), dtype=np.float32))
    # log pi - log mu = +1 -> weights truncated at rho_bar = 1: the last step's return is its reward
    assert np.allclose(buf.returns[-1], 1.0)
    # with V = 0 and weights 1 the returns are plain discounted sums of rewards of 1 (lambda 1)
    expected = np.array([sum(buf.gamma**k for k in range(n_steps - t)) for t in range(n_steps)])
    buf_lambda1 = M3PORolloutBuffer(
        n_steps, spaces.Box(-np.inf, np.inf, (3,)), spaces.Box(-1, 1, (2,)), n_envs=n_envs, gae_lambda=1.0
    )
    buf_lambda1.__dict__.update({k: v for k, v in buf.__dict__.items() if isinstance(v, np.ndarray)})
    buf_lambda1.compute_returns_and_advantage(np.zeros((n_steps, n_envs), dtype=np.float32))
    assert np.allclose(buf_lambda1.returns[:, 0], expected, atol=1e-5)
    samples = list(buf.get(batch_size=5))
    assert sum(len(s.observations) for s in samples) == n_steps * n_envs
    assert sorted(np.concatenate([s.observations[:, 0].numpy() for s in samples]).tolist()) == sorted(
        np.repeat(np.arange(n_steps), n_envs).tolist()
    ), "every stored transition once"
