"""The prior's TD-MPC2-style options (``prior_kwargs``): state-dependent std, the "sample" objective, sampled targets."""

import math

import numpy as np
import pytest
import torch as th

from sb3_m3po import M3PO
from sb3_m3po.common.math import masked_mean_squared_error
from sb3_m3po.m3po.config import PriorConfig
from sb3_m3po.m3po.world_model_update import prior_saturation, q_guided_prior_step, world_model_targets

TDMPC2_PRIOR = {"objective": "sample", "state_std": True, "target_action": "sample"}


def test_state_dependent_std_stays_within_its_bounds(tiny):
    bounds = {"state_std": True, "log_std_min": -3, "log_std_max": 1}
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs=bounds, **tiny)
    policy = model.policy
    with th.no_grad():
        policy.actor[-1].weight.normal_(std=100.0)  # saturate the log-std output both ways
        z = th.randn(256, policy.world_model.latent_dim)  # spread latents: some saturate each way
        _, std = policy.prior_mean_std(z)
    assert std.min() >= math.exp(-3) - 1e-6 and std.max() <= math.exp(1) + 1e-6
    assert std.std() > 0, "the std should vary with the state"


def test_state_dependent_std_leaves_the_unused_global_log_std_out_of_both_optimizers(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs=TDMPC2_PRIOR, **tiny)
    policy = model.policy
    for optimizer in (policy.optimizer, policy.prior_optimizer):
        assert optimizer is not None
        assert all(p is not policy.log_std for group in optimizer.param_groups for p in group["params"])
    plain = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs={"mean_reg": 0.0}, **tiny).policy
    assert any(p is plain.log_std for group in plain.optimizer.param_groups for p in group["params"])


def test_squashed_sample_is_in_bounds_and_its_entropy_is_the_scaled_gaussian_entropy(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs=TDMPC2_PRIOR, **tiny)
    policy = model.policy
    z = policy.world_model.encode(th.randn(64, policy.obs_dim))
    generator = th.Generator().manual_seed(3)
    action, entropy = policy.squashed_sample(z, None, generator)
    pre_mean, log_std = policy.prior_head(z, None)
    eps = th.randn(pre_mean.shape, generator=th.Generator().manual_seed(3))
    assert th.allclose(action, th.tanh(pre_mean + eps * log_std.exp()))
    assert action.abs().max() <= 1
    density = th.distributions.Normal(pre_mean, log_std.exp()).log_prob(pre_mean + eps * log_std.exp()).sum(-1, keepdim=True)
    assert th.allclose(entropy, -density * policy.action_dim, atol=1e-5)


def test_sample_objective_steps_its_own_optimizer_and_moves_q_uphill(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs=TDMPC2_PRIOR, **tiny)
    model.learn(96)
    policy, wm = model.policy, model.policy.world_model
    batch = model.replay_buffer.sample(32, model.planner_config.horizon)
    with th.no_grad():
        latents = wm.encode(batch.next_observations)
        wm.q_ensemble.head.weight.normal_()  # make Q depend on the action so there is a direction to climb
    ppo_state = {k: v["exp_avg"].clone() for k, v in enumerate(policy.optimizer.state.values())}
    value_before = [p.clone() for p in policy.value_net.parameters()]

    def q_of_prior():
        with th.no_grad():
            return wm.q_value(latents, policy.prior_mean(latents)).mean().item()

    start, q_scale = q_of_prior(), 1.0
    for _ in range(20):
        q_scale = q_guided_prior_step(policy, latents, None, model.world_model_config, model.max_grad_norm, q_scale)
    assert q_of_prior() > start
    assert policy.prior_optimizer is not None and len(policy.prior_optimizer.state) > 0
    assert all(th.equal(a, v["exp_avg"]) for a, v in zip(ppo_state.values(), policy.optimizer.state.values()))
    assert all(th.equal(a, b) for a, b in zip(value_before, policy.value_net.parameters()))


def test_target_action_sample_draws_the_td_targets_from_the_prior(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs={"target_action": "sample"}, **tiny)
    model.learn(64)
    batch = model.replay_buffer.sample(16, model.planner_config.horizon)
    with th.no_grad():
        model.policy.log_std.fill_(0.0)
        th.manual_seed(0)
        _, first = world_model_targets(model.policy, batch, None, model.gamma)
        th.manual_seed(1)
        _, second = world_model_targets(model.policy, batch, None, model.gamma)
    assert not th.equal(first, second), "sampled target actions should make the TD targets random"
    mean_model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    mean_model.policy.load_state_dict(model.policy.state_dict())
    with th.no_grad():
        th.manual_seed(0)
        _, a = world_model_targets(mean_model.policy, batch, None, model.gamma)
        th.manual_seed(0)
        _, b = world_model_targets(mean_model.policy, batch, None, model.gamma)
    assert th.equal(a, b)


def test_n_epochs_zero_leaves_the_value_function_untrained(tiny):
    tiny["n_epochs"] = 0
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, bonus_kwargs={"coef": 0.0}, prior_kwargs=TDMPC2_PRIOR, **tiny)
    value_before = [p.clone() for p in model.policy.value_net.parameters()]
    actor_before = [p.clone() for p in model.policy.actor.parameters()]
    model.learn(128)
    assert all(th.equal(a, b) for a, b in zip(value_before, model.policy.value_net.parameters()))
    assert not all(th.equal(a, b) for a, b in zip(actor_before, model.policy.actor.parameters())), "the Q step should train it"


def test_sample_prior_save_load_keeps_its_optimizer_and_actions(tiny, tmp_path):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs=TDMPC2_PRIOR, **tiny)
    model.learn(96)
    model.save(tmp_path / "m.zip")
    loaded = M3PO.load(tmp_path / "m.zip")
    assert loaded.prior_config == model.prior_config
    for a, b in zip(model.policy.prior_optimizer.state.values(), loaded.policy.prior_optimizer.state.values()):
        assert th.equal(a["exp_avg"], b["exp_avg"])
    obs = np.zeros((1, 3), dtype=np.float32)
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize(
    "prior_kwargs, needle",
    [
        ({"objective": "policy"}, "objective must be 'mean' or 'sample'"),
        ({"target_action": "max"}, "target_action must be 'mean' or 'sample'"),
        ({"entropy_coef": -1}, "entropy_coef must be >= 0"),
        ({"log_std_min": 2, "log_std_max": 1}, "need log_std_min < log_std_max"),
        ({"entropy": 0.1}, "unknown key(s) ['entropy'] in prior_kwargs"),
        ({"bc_coef": -0.1}, "bc_coef must be >= 0, got -0.1"),
    ],
)
def test_invalid_prior_settings_are_named(prior_kwargs, needle):
    with pytest.raises(ValueError) as error:
        M3PO("MlpPolicy", "Pendulum-v1", prior_kwargs=prior_kwargs)
    assert needle in str(error.value)


def test_prior_saturation_counts_the_mean_components_at_the_action_bounds(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    policy = model.policy
    z = policy.world_model.encode(th.randn(64, policy.obs_dim))
    assert prior_saturation(policy, z, None) == 0.0, "a fresh prior's mean is near 0"
    with th.no_grad():
        policy.actor[-1].bias.fill_(10.0)  # tanh(10) > 0.99: every mean at the upper bound
    assert prior_saturation(policy, z, None) == 1.0


def test_prior_saturation_is_logged_after_a_world_model_update(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny).learn(96)
    assert 0.0 <= model.logger.name_to_value["train/prior_saturation"] <= 1.0


def test_mean_reg_is_on_by_default_and_pulls_a_saturated_prior_mean_back_inside_the_tanh(tiny):
    # a pre-tanh mean of 10 gets no gradient through the tanh from Q; the mean_reg term moves it back
    assert PriorConfig().mean_reg == 1e-3, "on by default"
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs={"mean_reg": 1e-2}, **tiny)
    policy = model.policy
    with th.no_grad():
        policy.actor[-1].bias.fill_(10.0)
    latents = policy.world_model.encode(th.randn(3, 32, policy.obs_dim))
    before = float(policy.prior_head(latents, None)[0].mean())
    for _ in range(20):
        q_guided_prior_step(policy, latents, None, model.world_model_config, model.max_grad_norm, 1.0)
    after = float(policy.prior_head(latents, None)[0].mean())
    assert after < before - 0.05, f"pre-tanh mean {before:.2f} -> {after:.2f}"
    plain = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs={"mean_reg": 0.0}, **tiny).policy
    with th.no_grad():
        plain.actor[-1].bias.fill_(10.0)
    for _ in range(20):
        q_guided_prior_step(plain, latents, None, model.world_model_config, model.max_grad_norm, 1.0)
    assert abs(float(plain.prior_head(latents, None)[0].mean()) - before) < 0.05, "without it the mean stays saturated"


def test_negative_mean_reg_is_refused(tiny):
    with pytest.raises(ValueError, match="mean_reg must be >= 0, got -1"):
        M3PO("MlpPolicy", "Pendulum-v1", prior_kwargs={"mean_reg": -1}, **tiny)


def test_masked_mean_squared_error_counts_the_valid_action_dims_only():
    mean = th.tensor([[0.0, 0.5], [-0.5, 0.0]])
    actions = th.tensor([[1.0, 0.5], [0.5, -1.0]])
    # all dims valid: (1 + 0) / 2 and (1 + 1) / 2
    assert th.allclose(masked_mean_squared_error(mean, actions), th.tensor([[0.5], [1.0]]))
    mask = th.tensor([[1.0, 1.0], [1.0, 0.0]])  # the second row acts on its first dim only
    gap = masked_mean_squared_error(mean, actions, mask)
    assert th.allclose(gap, th.tensor([[0.5], [1.0]])), "the masked dim neither counts nor divides"


def test_bc_coef_pulls_the_prior_mean_to_the_replayed_actions_and_is_off_by_default(tiny):
    assert PriorConfig().bc_coef == 0.0, "off by default"
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs={"bc_coef": 10.0}, **tiny)
    policy, config = model.policy, model.world_model_config
    latents = policy.world_model.encode(th.randn(3, 32, policy.obs_dim))
    actions = th.full((3, 32, policy.action_dim), 0.6)

    def gap(p):
        with th.no_grad():
            return float((p.prior_mean(latents) - actions).abs().mean())

    before = gap(policy)
    for _ in range(30):
        q_guided_prior_step(policy, latents, None, config, model.max_grad_norm, 1.0, actions=actions)
    assert gap(policy) < 0.5 * before, f"|mean - action| {before:.3f} -> {gap(policy):.3f}"
    plain = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny).policy
    for _ in range(30):
        q_guided_prior_step(plain, latents, None, config, model.max_grad_norm, 1.0, actions=actions)
    assert gap(plain) > 0.8 * before, "without the constraint the replayed actions do not move the prior"
    with pytest.raises(AssertionError, match="bc_coef'\\] > 0 needs the replayed actions"):
        q_guided_prior_step(policy, latents, None, config, model.max_grad_norm, 1.0)


def test_bc_coef_trains_through_learn_and_round_trips_save_load(tiny, tmp_path):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, prior_kwargs={"bc_coef": 0.4}, **tiny).learn(96)
    model.save(tmp_path / "bc")
    loaded = M3PO.load(tmp_path / "bc")
    assert loaded.prior_config.bc_coef == 0.4 and loaded.policy.prior_config.bc_coef == 0.4
