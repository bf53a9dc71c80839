"""SB3 API contract: learn, predict, save/load, seeding, VecNormalize, Dict obs, callbacks, real envs."""

import copy
import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_m3po import M3PO
from sb3_m3po.common.signals import StopOnInterrupt, deferred_keyboard_interrupt
from sb3_m3po.envs import make_env, register_envs
from sb3_m3po.m3po.world_model_update import q_guided_prior_step


def test_learn_pendulum_logs_the_promised_keys(tiny, tmp_path):
    from stable_baselines3.common.logger import configure

    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    assert isinstance(model, OnPolicyAlgorithm)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(128)
    assert model.num_timesteps == 128
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    for key in [
        "wm_consistency_loss",
        "wm_reward_loss",
        "wm_value_loss",
        "bonus_mean",
        "bonus_coef",
        "q_mb_mean",
        "q_mf_mean",
        "approx_kl",
        "clip_fraction",
        "mppi_std",
    ]:
        assert f"train/{key}" in header, key


def test_wm_update_ratio_sets_world_model_steps_per_transition(tiny, tmp_path):
    from stable_baselines3.common.logger import configure

    tiny["world_model_kwargs"].update(gradient_steps=-1, update_ratio=0.25, learning_starts=0)
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = M3PO("MlpPolicy", env, seed=0, **tiny)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(2 * tiny["n_steps"] * 2)
    lines = (tmp_path / "progress.csv").read_text().splitlines()
    column = lines[0].split(",").index("train/wm_gradient_steps")
    # 32 steps x 2 envs per rollout, a quarter of a world-model step per transition
    logged = [line.split(",")[column] for line in lines[1:]]
    assert {float(v) for v in logged if v} == {16.0}, logged


@pytest.mark.parametrize("seed_steps", [0, 48])
def test_seed_phase_acts_at_random_and_the_first_update_takes_its_transitions(tiny, tmp_path, seed_steps):
    from stable_baselines3.common.logger import configure

    tiny["n_steps"] = 8
    tiny["world_model_kwargs"].update(gradient_steps=-1, update_ratio=1.0, learning_starts=40, seed_steps=seed_steps)
    model = M3PO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), seed=0, **tiny)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    uniform = []

    class Watch(BaseCallback):
        def _on_rollout_end(self) -> None:  # uniform on [-1, 1]: a behaviour density of 1/2 for Pendulum's one dim
            uniform.append(bool(np.allclose(model.rollout_buffer.behaviour_log_probs, -np.log(2.0))))

        def _on_step(self) -> bool:
            return True

    model.learn(5 * 16, callback=Watch())
    # 16 transitions per rollout: rollouts 1-3 (steps 0-47) in the seed phase, 4-5 planned
    assert uniform == ([True] * 3 + [False] * 2 if seed_steps else [False] * 5)
    lines = (tmp_path / "progress.csv").read_text().splitlines()
    column = lines[0].split(",").index("train/wm_gradient_steps")
    logged = [float(v) for v in (line.split(",")[column] for line in lines[1:]) if v]
    # replay reaches learning_starts after rollout 3 (48 transitions); with a seed phase that update takes all of them
    assert logged == ([48.0, 16.0] if seed_steps else [16.0, 16.0])


def test_learn_with_env_id_string_and_progress_bar(tiny, monkeypatch):
    from stable_baselines3.common.callbacks import ProgressBarCallback

    ticks = []
    on_step = ProgressBarCallback._on_step
    monkeypatch.setattr(ProgressBarCallback, "_on_step", lambda self: ticks.append(self.num_timesteps) or on_step(self))
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny).learn(64, progress_bar=True)
    assert model.env.envs[0].spec.id == "Pendulum-v1"
    assert ticks == list(range(1, 65)), "the progress bar saw every step"


def test_dm_control_dict_observations_multi_input_policy(tiny):
    import shimmy  # noqa: F401

    env = gym.make("dm_control/cartpole-swingup-v0")
    assert isinstance(env.observation_space, gym.spaces.Dict)
    model = M3PO("MultiInputPolicy", env, seed=0, **tiny)
    model.learn(96)
    obs, _ = env.reset(seed=0)
    action, state = model.predict(obs, deterministic=True)
    assert action.shape == env.action_space.shape and state[0].shape == (1, 3 * 1)


def test_dm_control_flattened_with_action_repeat(tiny):
    env = make_env("dm_control/cartpole-swingup-v0", action_repeat=2)
    assert env.observation_space.shape == (5,) and env.observation_space.dtype == np.float32
    env.reset(seed=0)
    assert env.step(env.action_space.sample())[-1]["sim_steps"] == 2
    model = M3PO("MlpPolicy", env, **tiny).learn(96)
    assert model.replay_buffer.size() == 96 and model.policy.obs_dim == 5


def test_metaworld_mt1_reach(tiny):
    env = make_env("metaworld/reach-v3", seed=0)
    model = M3PO("MlpPolicy", env, seed=0, **tiny)
    model.learn(96)
    assert model.replay_buffer.size() == 96


def test_metaworld_with_tdmpc2_protocol_repeats_actions_and_ends_after_100_decisions():
    register_envs()
    env = gym.make("metaworld/drawer-open-v3", seed=0, action_repeat=2, max_episode_steps=100)
    env.reset(seed=0)
    for decision in range(1, 101):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert info["sim_steps"] == 2 and "is_success" in info
        assert truncated == (decision == 100) and not terminated


def test_metaworld_episodes_follow_the_reset_seed():
    """As rl-zoo3 builds it (no seed at construction), then seeded by SB3's first reset: two envs agree."""

    def episode_starts(seed: int) -> np.ndarray:
        env = make_env("metaworld/drawer-open-v3")
        return np.stack([env.reset(seed=seed)[0], *(env.reset()[0] for _ in range(3))])

    first = episode_starts(3)
    np.testing.assert_array_equal(first, episode_starts(3))  # goal and object positions included
    assert not np.array_equal(first, episode_starts(4)), "another seed draws other task variants"


def test_save_load_gives_identical_deterministic_actions(tiny, tmp_path):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=1, **tiny)
    model.learn(96)
    obs = model.env.reset()
    actions, state = model.predict(obs, deterministic=True)
    actions2, _ = model.predict(obs, state=state, episode_start=np.zeros(1, dtype=bool), deterministic=True)
    model.save(tmp_path / "m3po")
    loaded = M3PO.load(tmp_path / "m3po", env=model.env)
    a_loaded, s_loaded = loaded.predict(obs, deterministic=True)
    a2_loaded, _ = loaded.predict(obs, state=s_loaded, episode_start=np.zeros(1, dtype=bool), deterministic=True)
    assert np.array_equal(actions, a_loaded) and np.array_equal(actions2, a2_loaded)
    # everything trainable came back: world model, target Q, prior, value and both optimizers
    for (name, p), (_, q) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert th.equal(p, q), name
    assert "target_q_ensemble.head.weight" in "".join(model.policy.state_dict())
    assert loaded.wm_optimizer.state_dict()["state"], "world-model optimizer state was not restored"
    for name in ("planner_config", "world_model_config", "bonus_config"):
        assert getattr(loaded, name) == getattr(model, name), name
    loaded.learn(32, reset_num_timesteps=False)
    without_env = M3PO.load(tmp_path / "m3po")
    assert np.array_equal(without_env.predict(obs, deterministic=True)[0], a_loaded)


def test_deferred_keyboard_interrupt_lets_the_block_finish_then_raises():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with deferred_keyboard_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # Python runs signal handlers between bytecodes: here, if it were not held
                finished.append(True)
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with deferred_keyboard_interrupt():  # no signal: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost interrupt, on purpose
def test_ctrl_c_lost_in_a_finaliser_still_ends_learn(tiny):
    class RaisesInFinaliser:
        def __del__(self) -> None:
            # the handler's KeyboardInterrupt is raised in here, where Python only prints it as "ignored"
            signal.raise_signal(signal.SIGINT)

    class Trigger(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 40:
                RaisesInFinaliser()  # dropped at once
            return True

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
        stop = StopOnInterrupt()
        with stop.installed():
            model.learn(2_000, callback=[Trigger(), stop])
        assert stop.requested, "SIGINT did not reach the handler"
        assert model.num_timesteps == 40, f"learn() went on to {model.num_timesteps} steps after Ctrl-C"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler was not put back"
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_ignored_by_the_shell_is_reported():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script gives a process
    try:
        with pytest.warns(RuntimeWarning, match="SIGINT .Ctrl-C. is ignored"):
            with StopOnInterrupt().installed():
                assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN, "an ignored SIGINT must stay ignored"
    finally:
        signal.signal(signal.SIGINT, previous)


class _InterruptedWhileSaving(M3PO):
    """Receives Ctrl-C in the middle of save(), after the data is gathered and before the zip is written."""

    def _get_torch_save_params(self):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return super()._get_torch_save_params()


def test_ctrl_c_during_save_still_writes_a_loadable_model(tiny, tmp_path):
    model = _InterruptedWhileSaving("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.save(tmp_path / "m3po")
    finally:
        signal.signal(signal.SIGINT, previous)
    loaded = M3PO.load(tmp_path / "m3po.zip")
    for (name, p), (_, q) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert th.equal(p, q), name


def test_ctrl_c_while_evaluations_are_written_keeps_the_previous_file(tiny, tmp_path, monkeypatch):
    from sb3_m3po.zoo.callbacks import TaskAwareEvalCallback

    savez, calls = np.savez, []

    def cut_on_second_write(file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            with open(file if str(file).endswith(".npz") else f"{file}.npz", "wb") as f:
                f.write(b"PK\x03\x04 cut short by Ctrl-C")
            raise KeyboardInterrupt
        return savez(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", cut_on_second_write)
    callback = TaskAwareEvalCallback(make_vec_env("Pendulum-v1"), eval_freq=32, n_eval_episodes=1, log_path=str(tmp_path))
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    with pytest.raises(KeyboardInterrupt):
        model.learn(96, callback=callback)
    assert len(calls) == 2, "the test must cut the second write"
    assert np.load(tmp_path / "evaluations.npz")["timesteps"].tolist() == [32]


def test_replay_buffer_save_load_resumes_with_the_same_data(tiny, tmp_path):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    model.learn(96)
    model.save(tmp_path / "m3po")
    model.save_replay_buffer(tmp_path / "replay.pkl")
    loaded = M3PO.load(tmp_path / "m3po", env=model.env)
    assert loaded.replay_buffer.size() == 0
    loaded.load_replay_buffer(tmp_path / "replay.pkl")
    old, new = model.replay_buffer, loaded.replay_buffer
    assert new.size() == old.size() == 96
    for name in ["observations", "next_observations", "actions", "rewards", "terminated", "episode_ids"]:
        assert np.array_equal(getattr(new, name), getattr(old, name)), name
    loaded.learn(32, reset_num_timesteps=False)
    assert loaded.replay_buffer.size() == 128 and loaded.num_timesteps == 128
    # the envs were reset on resume: the new steps must not extend the last stored episode
    assert not set(new.episode_ids[96:128, 0]) & set(old.episode_ids[:96, 0])


def test_resume_checkpoint_holds_model_replay_and_vecnormalize(tiny, tmp_path):
    from sb3_m3po.zoo.checkpoints import ResumeCheckpointCallback, latest_checkpoint

    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2))
    model = M3PO("MlpPolicy", env, **tiny)
    model.learn(128, callback=ResumeCheckpointCallback(16, str(tmp_path), "Pendulum-v1"))
    assert sorted(os.listdir(tmp_path)) == ["step_128"], "older checkpoints are deleted once a newer one is complete"
    steps, path = latest_checkpoint(str(tmp_path))
    assert steps == 128
    folder = os.path.dirname(path)
    stats = VecNormalize.load(os.path.join(folder, "Pendulum-v1", "vecnormalize.pkl"), make_vec_env("Pendulum-v1", n_envs=2))
    assert np.allclose(stats.obs_rms.mean, env.obs_rms.mean)
    loaded = M3PO.load(path, env=stats)
    loaded.load_replay_buffer(os.path.join(folder, "replay_buffer.pkl"))
    assert loaded.num_timesteps == 128 and loaded.replay_buffer.size() == 128 - 2


# Meta-World built from its id, as rl-zoo3 builds it: no env seed, only SB3's seeded first reset
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "metaworld/reach-v3"])
def test_seeded_runs_are_reproducible(tiny, env_id):
    register_envs()

    def run():
        model = M3PO("MlpPolicy", env_id, seed=3, **tiny)
        model.learn(96)
        return th.cat([p.flatten() for p in model.policy.parameters()]), model.replay_buffer.observations[:96].copy()

    (params, observations), (params_again, observations_again) = run(), run()
    np.testing.assert_array_equal(observations, observations_again)
    assert th.equal(params, params_again)


def test_vecnormalize_and_set_env(tiny):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = M3PO("MlpPolicy", env, **tiny)
    model.learn(128)
    # the replay keeps observations as the env produced them: (cos, sin) stays on the unit circle
    stored = model.replay_buffer.observations[:64].reshape(-1, 3)
    stored_next = model.replay_buffer.next_observations[:64].reshape(-1, 3)
    assert np.allclose(stored[:, 0] ** 2 + stored[:, 1] ** 2, 1.0, atol=1e-4)
    assert np.allclose(stored_next[:, 0] ** 2 + stored_next[:, 1] ** 2, 1.0, atol=1e-4)
    model.set_env(VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=1)))
    model.learn(64, reset_num_timesteps=False)
    params = model.get_parameters()
    assert {"policy", "policy.optimizer", "wm_optimizer"} <= set(params)


def test_callback_stops_training(tiny):
    class StopAfter(BaseCallback):
        def _on_step(self) -> bool:
            return self.num_timesteps < 40

    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    model.learn(10_000, callback=StopAfter())
    assert model.num_timesteps == 40


def test_eval_callback_uses_warm_started_planner(tiny, tmp_path):
    eval_env = DummyVecEnv([lambda: gym.make("Pendulum-v1")])
    cb = EvalCallback(eval_env, eval_freq=64, n_eval_episodes=1, log_path=str(tmp_path))
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny)
    calls = []
    predict = model.policy.predict

    def recording_predict(obs, state=None, episode_start=None, deterministic=False):
        action, new_state = predict(obs, state, episode_start, deterministic)
        calls.append((state, np.array(episode_start), new_state))  # evaluate_policy reuses its array
        return action, new_state

    model.policy.predict = recording_predict
    model.learn(64, callback=cb)
    assert len(calls) == 200, "one evaluation episode of Pendulum"
    assert calls[0][0] is None, "the first step plans from scratch"
    horizon, action_dim = model.planner_config.horizon, 1
    for (_, _, returned), (state, episode_start, _) in zip(calls[:-1], calls[1:]):
        # every later step gets the plan the previous one returned, as a recurrent state
        assert state is not None and state[0].shape == (1, horizon * action_dim)
        assert np.array_equal(state[0], returned[0]) and not episode_start.any()


def test_deterministic_planner_samples_move_with_the_step_and_stay_a_function_of_the_state(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    obs, plan = np.zeros((2, 3), np.float32), np.zeros((2, model.planner_config.horizon * 1), np.float32)
    no_reset = np.zeros(2, dtype=bool)
    act = lambda steps: model.predict(obs, (plan, np.array(steps)), no_reset, deterministic=True)  # noqa: E731
    (a0, (_, after0)), (a0_again, _), (a5, (_, after5)) = act([0, 0]), act([0, 0]), act([5, 5])
    assert np.array_equal(a0, a0_again), "the same observation and state give the same action"
    assert not np.array_equal(a0, a5), "a later step of the episode plans with other samples"
    assert after0.tolist() == [1, 1] and after5.tolist() == [6, 6]
    _, (_, restarted) = model.predict(obs, (plan, np.array([7, 7])), np.array([True, False]), deterministic=True)
    assert restarted.tolist() == [1, 8], "episode_start restarts that env's count"
    assert np.array_equal(model.predict(obs, (plan,), no_reset, deterministic=True)[0], a0), "a plan-only state: step 0"


def test_planner_off_acts_with_the_prior(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", use_planner=False, **tiny)
    model.learn(64)
    # behaviour == prior, so every importance weight is exactly one
    assert np.allclose(model.rollout_buffer.log_probs, model.rollout_buffer.behaviour_log_probs)
    obs = model.env.reset()
    with th.no_grad():
        mean = model.policy.prior_mean(model.policy.encode(th.as_tensor(obs)))
    action, _ = model.predict(obs, deterministic=True)
    assert np.allclose(action, model.policy.unscale_action(np.clip(mean.numpy(), -1, 1)), atol=1e-6)


def test_evaluate_policy_runs_whole_episodes_within_the_reward_bounds(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", **tiny).learn(64)
    returns, lengths = evaluate_policy(model, model.env, n_eval_episodes=2, return_episode_rewards=True)
    # Pendulum-v1: 200 steps, reward in [-16.27, 0] per step
    assert lengths == [200, 200] and all(-16.3 * 200 <= r <= 0 for r in returns), (returns, lengths)


def test_q_guidance_moves_only_the_prior_mean_uphill(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    model.learn(96)
    policy, wm = model.policy, model.policy.world_model
    batch = model.replay_buffer.sample(32, model.planner_config.horizon)
    with th.no_grad():
        latents = wm.encode(batch.next_observations)
        # make Q depend on the action so there is a direction to climb
        wm.q_ensemble.head.weight.normal_()
    q_before = [p.clone() for p in wm.q_ensemble.parameters()]
    value_before = [p.clone() for p in policy.value_net.parameters()]

    def q_of_prior():
        with th.no_grad():
            return wm.q_value(latents, policy.prior_mean(latents)).mean().item()  # num_q=2: both heads

    start, q_scale = q_of_prior(), 1.0
    for _ in range(20):
        q_scale = q_guided_prior_step(policy, latents, None, model.world_model_config, model.max_grad_norm, q_scale)
    assert q_of_prior() > start
    assert all(th.equal(a, b) for a, b in zip(q_before, wm.q_ensemble.parameters()))
    assert all(th.equal(a, b) for a, b in zip(value_before, policy.value_net.parameters()))


def test_torch_compile_matches_eager_and_survives_save_load(tiny, tmp_path):
    eager = M3PO("MlpPolicy", "Pendulum-v1", seed=2, **tiny)
    compiled_kwargs = {**tiny, "policy_kwargs": {**tiny["policy_kwargs"], "torch_compile": True}}
    compiled = M3PO("MlpPolicy", "Pendulum-v1", seed=2, **compiled_kwargs)
    assert compiled.policy.planner.compile and not eager.policy.planner.compile
    compiled.policy.load_state_dict(eager.policy.state_dict())
    obs = eager.env.reset()
    a_eager, _ = eager.predict(obs, deterministic=True)
    a_compiled, _ = compiled.predict(obs, deterministic=True)
    # fused kernels may round differently; the planner's refit amplifies that only slightly at init
    assert np.allclose(a_eager, a_compiled, atol=1e-3), (a_eager, a_compiled)
    # the compiled world-model loss and its gradient match eager on one batch
    gen = th.Generator().manual_seed(0)
    wm = eager.policy.world_model
    horizon, batch = 3, 16
    inputs = (
        th.randn(batch, wm.obs_dim, generator=gen),
        th.rand(horizon, batch, wm.action_dim, generator=gen) * 2 - 1,
        th.randn(horizon, batch, 1, generator=gen),
        th.softmax(th.randn(horizon, batch, wm.latent_dim, generator=gen), -1),
        th.randn(horizon, batch, 1, generator=gen),
        None,
        eager.world_model_config,
    )
    grads = []
    for policy, losses_fn in ((eager.policy, wm.losses), (compiled.policy, compiled.policy.world_model_losses)):
        policy.world_model.zero_grad(set_to_none=True)
        losses = losses_fn(*inputs)
        losses.total.backward()
        grads.append((losses.total.detach(), policy.world_model.dynamics[0].weight.grad.clone()))
    assert th.allclose(grads[0][0], grads[1][0], rtol=1e-4), (grads[0][0], grads[1][0])
    assert th.allclose(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-5)
    compiled.learn(64)
    assert all(th.isfinite(p).all() for p in compiled.policy.parameters())
    compiled.save(tmp_path / "compiled")
    loaded = M3PO.load(tmp_path / "compiled", env=compiled.env)
    assert loaded.policy.torch_compile and loaded.policy.planner.compile
    for (name, p), (_, q) in zip(compiled.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert th.equal(p, q), name


def test_prior_update_without_dual_clip_equals_sb3_ppo_train(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", dual_clip=None, **tiny)
    model.learn(64)  # leaves a collected rollout in the buffer
    policy = model.policy
    start = copy.deepcopy(policy.state_dict()), copy.deepcopy(policy.optimizer.state_dict())
    before = [p.detach().clone() for p in policy.parameters()]

    def run(train) -> list[th.Tensor]:
        policy.load_state_dict(start[0])
        policy.optimizer.load_state_dict(copy.deepcopy(start[1]))  # Adam would update the loaded state in place
        policy.zero_grad(set_to_none=True)
        np.random.seed(0)  # the minibatch order
        train()
        return [p.detach().clone() for p in policy.parameters()]

    ours = run(model._ppo_epochs)
    sb3 = run(lambda: PPO.train(model))
    assert any(not th.equal(a, b) for a, b in zip(ours, before, strict=True)), "the update changed nothing"
    for a, b in zip(ours, sb3, strict=True):
        assert th.allclose(a, b, atol=1e-6)
