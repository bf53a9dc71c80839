import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

from sb3_m3po.common.math import (
    clipped_surrogate,
    exploration_bonus,
    importance_corrected_gae,
    mppi_refit,
    simnorm,
    soft_ce,
    symexp,
    symlog,
    two_hot,
    two_hot_inv,
)


def test_symlog_symexp_round_trip():
    x = th.tensor([-1e4, -3.0, -0.5, 0.0, 0.5, 3.0, 1e4])
    assert th.allclose(symexp(symlog(x)), x, rtol=1e-5)
    assert symlog(th.tensor(-2.0)) < 0 < symlog(th.tensor(2.0))


def test_two_hot_round_trip_and_normalisation():
    x = th.tensor([-500.0, -7.3, -1.0, 0.0, 0.01, 2.5, 900.0])
    dist = two_hot(x, -10.0, 10.0, 101)
    assert dist.shape == (7, 101)
    assert th.allclose(dist.sum(-1), th.ones(7))
    assert (dist > 0).sum(-1).max() <= 2
    decoded = two_hot_inv(th.log(dist + 1e-12), -10.0, 10.0).squeeze(-1)
    assert th.allclose(decoded, x, rtol=1e-3, atol=1e-3)


def test_two_hot_clamps_outside_support():
    dist = two_hot(th.tensor([1e9]), -2.0, 2.0, 5)
    assert dist[0, -1] == pytest.approx(1.0)


def test_soft_ce_is_minimised_by_the_target():
    target = th.tensor([[3.0]])
    good = th.log(two_hot(target.squeeze(-1), -10, 10, 101) + 1e-9)
    bad = th.zeros(1, 101)
    assert soft_ce(good, target, -10, 10) < soft_ce(bad, target, -10, 10)


def test_simnorm_groups_sum_to_one():
    x = th.randn(4, 32)
    y = simnorm(x, 8).view(4, 4, 8)
    assert th.allclose(y.sum(-1), th.ones(4, 4), atol=1e-6)
    assert (y >= 0).all()


def test_simnorm_matches_grouped_softmax_in_value_and_gradient():
    # large magnitudes: the written-out form must stay finite (max shift) and keep softmax's gradient
    x = (100 * th.randn(6, 32)).requires_grad_(True)
    weights = th.randn(6, 32)
    reference = th.softmax(x.view(6, 4, 8), dim=-1).view(6, 32)
    (grad_ref,) = th.autograd.grad((reference * weights).sum(), x)
    y = simnorm(x, 8)
    (grad,) = th.autograd.grad((y * weights).sum(), x)
    assert th.isfinite(y).all()
    assert th.allclose(y, reference, atol=1e-6)
    assert th.allclose(grad, grad_ref, atol=1e-5)


def test_mppi_refit_weights_and_elites():
    # 1 env, 4 candidates of horizon 1, action dim 1
    actions = th.tensor([[[[-1.0]], [[0.0]], [[0.5]], [[1.0]]]])
    values = th.tensor([[0.0, 1.0, 3.0, 2.0]])
    refit = mppi_refit(actions, values, num_elites=2, temperature=1.0, min_std=0.0, max_std=10.0)
    w = th.softmax(th.tensor([3.0, 2.0]), 0)
    assert th.allclose(refit.weights[0], w)
    expected_mean = w[0] * 0.5 + w[1] * 1.0
    assert th.allclose(refit.mean, expected_mean.view(1, 1, 1))
    expected_std = th.sqrt(w[0] * (0.5 - expected_mean) ** 2 + w[1] * (1.0 - expected_mean) ** 2)
    assert th.allclose(refit.std, expected_std.view(1, 1, 1))
    clamped = mppi_refit(actions, values, 2, 1.0, min_std=0.4, max_std=0.45)
    assert th.allclose(clamped.std, th.full((1, 1, 1), 0.4))


def test_mppi_refit_masks_invalid_dims():
    actions = th.randn(2, 8, 3, 4)
    mask = th.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    refit = mppi_refit(actions, th.randn(2, 8), 4, 0.5, 0.05, 2.0, mask)
    assert (refit.mean[0, :, 2:] == 0).all() and (refit.std[1, :, 3] == 0).all()
    assert (refit.std[0, :, :2] >= 0.05).all()


def test_exploration_bonus():
    q_mb = th.tensor([1.0, 2.0, 3.0, 10.0])
    q_mf = th.tensor([1.0, 1.0, 1.0, 1.0])
    eps, normed = exploration_bonus(q_mb, q_mf, clip=1.0)
    assert th.allclose(eps, th.tensor([0.0, 1.0, 2.0, 9.0]))
    z = (eps - eps.mean()) / eps.std()
    assert th.allclose(normed, z.clamp(0, 1.0), atol=1e-6)
    assert normed.max() <= 1.0 and normed.min() >= 0.0


def _random_rollout(n_steps=16, n_envs=3, seed=0):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(n_steps + 1, n_envs)).astype(np.float32)
    dones = rng.random((n_steps, n_envs)) < 0.15
    truncated = dones & (rng.random((n_steps, n_envs)) < 0.5)
    terminal_values = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    # value of the real next observation: next state's value, or the terminal obs' value on episode end
    next_values = np.where(dones, terminal_values, values[1:])
    return rewards, values, dones, truncated, next_values


def test_gae_without_planner_equals_sb3_ppo_with_timeouts():
    n_steps, n_envs, gamma, lam = 16, 3, 0.97, 0.9
    rewards, values, dones, truncated, next_values = _random_rollout(n_steps, n_envs)
    terminated = dones & ~truncated
    adv, ret = importance_corrected_gae(
        rewards,
        values[:-1],
        next_values,
        terminated.astype(np.float32),
        dones.astype(np.float32),
        np.zeros_like(rewards),
        gamma,
        lam,
        1.0,
        1.0,
    )
    # SB3/PPO: timeouts are handled by adding gamma * V(terminal obs) to the reward
    buf = RolloutBuffer(n_steps, spaces.Box(-1, 1, (1,)), spaces.Box(-1, 1, (1,)), gamma=gamma, gae_lambda=lam, n_envs=n_envs)
    starts = np.zeros(n_envs, dtype=bool)
    for t in range(n_steps):
        r = rewards[t] + gamma * next_values[t] * truncated[t]
        buf.add(np.zeros((n_envs, 1)), np.zeros((n_envs, 1)), r, starts, th.as_tensor(values[t]), th.zeros(n_envs))
        starts = dones[t]
    buf.compute_returns_and_advantage(th.as_tensor(values[-1]), dones[-1])
    # the last step bootstraps from values[-1] in SB3, from next_values in ours: identical unless done
    assert np.allclose(adv, buf.advantages, atol=1e-5)
    assert np.allclose(ret, buf.returns, atol=1e-5)


def test_importance_weights_are_truncated_and_cut_traces():
    rewards = np.array([[1.0], [1.0]], dtype=np.float32)
    values = np.zeros((2, 1), dtype=np.float32)
    next_values = np.zeros((2, 1), dtype=np.float32)
    zeros = np.zeros((2, 1), dtype=np.float32)
    log_ratio = np.log(np.array([[0.5], [4.0]], dtype=np.float32))
    adv, ret = importance_corrected_gae(rewards, values, next_values, zeros, zeros, log_ratio, 1.0, 1.0, 1.0, 1.0)
    # step 1: rho = min(1, 4) = 1 -> D1 = 1; step 0: rho = c = 0.5 -> D0 = 0.5*1 + 0.5*1, A0 = 0.5*(1 + 1)
    assert ret[1, 0] == pytest.approx(1.0)
    assert ret[0, 0] == pytest.approx(1.0)
    assert adv[0, 0] == pytest.approx(1.0)
    assert adv[1, 0] == pytest.approx(1.0)


def _sb3_policy_loss(log_ratio, adv, clip):
    ratio = th.exp(log_ratio)
    return -th.min(adv * ratio, adv * th.clamp(ratio, 1 - clip, 1 + clip)).mean()


def test_clipped_surrogate_without_dual_clip_is_sb3_ppo_loss():
    gen = th.Generator().manual_seed(0)
    log_ratio = (0.5 * th.randn(256, generator=gen)).requires_grad_(True)
    adv = th.randn(256, generator=gen)
    terms = clipped_surrogate(log_ratio, adv, 0.2)
    reference = _sb3_policy_loss(log_ratio, adv, 0.2)
    assert th.allclose(terms.loss, reference)
    (grad,) = th.autograd.grad(terms.loss, log_ratio)
    (ref_grad,) = th.autograd.grad(reference, log_ratio)
    assert th.allclose(grad, ref_grad)
    ratio = log_ratio.detach().exp()
    assert th.isclose(terms.clip_fraction, ((ratio - 1).abs() > 0.2).float().mean())
    assert th.isclose(terms.approx_kl, ((ratio - 1) - log_ratio.detach()).mean())


def test_clipped_surrogate_stays_finite_when_the_ratio_would_overflow():
    # a planner action whose prior log-prob rose by 1e4 nats: exp(1e4) is inf in float32
    log_ratio = th.tensor([1e4, 0.1, -1e4, 0.0], requires_grad=True)
    adv = th.tensor([-1.0, 1.0, 1.0, -0.5])
    assert not th.isfinite(_sb3_policy_loss(log_ratio, adv, 0.2))
    terms = clipped_surrogate(log_ratio, adv, 0.2, dual_clip=3.0)
    (grad,) = th.autograd.grad(terms.loss, log_ratio)
    assert th.isfinite(terms.loss) and th.isfinite(terms.approx_kl) and th.isfinite(grad).all()
    # the out-of-range samples get no gradient; the in-range ones keep theirs
    assert grad[0] == 0 and grad[2] == 0
    assert grad[1] != 0 and grad[3] != 0


def test_dual_clip_bounds_negative_advantages_only():
    log_ratio = th.log(th.tensor([5.0, 5.0, 2.0]))
    adv = th.tensor([-1.0, 1.0, -1.0])

    def per_sample(dual):
        return [float(clipped_surrogate(log_ratio[k : k + 1], adv[k : k + 1], 0.2, dual).loss) for k in range(3)]

    plain, dual = per_sample(None), per_sample(3.0)
    assert plain == pytest.approx([5.0, -1.2, 2.0])
    # ratio 5 > c = 3 with A < 0: the loss is capped at -c * A; below c, or with A > 0, nothing changes
    assert dual == pytest.approx([3.0, -1.2, 2.0])
    with pytest.raises(AssertionError, match="dual_clip must be > 1"):
        clipped_surrogate(log_ratio, adv, 0.2, dual_clip=1.0)
