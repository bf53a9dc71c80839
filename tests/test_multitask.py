"""Multi-task M3PO: task sets, padding and one-hot convention, action masks, balanced replay, per-task metrics."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_m3po import M3PO, register_envs
from sb3_m3po.common.buffers import EpisodicReplayBuffer
from sb3_m3po.common.math import exploration_bonus, masked_gaussian_log_prob
from sb3_m3po.common.task_ids import TaskIdCodec
from sb3_m3po.envs.multitask import (
    MultiTaskEnv,
    configure_task_schedule,
    get_task_set_spec,
    make_multitask_vec_env,
)
from sb3_m3po.envs.task_sets import DMC19_TASKS, resolve_tasks
from sb3_m3po.m3po.config import PlannerConfig
from sb3_m3po.m3po.policies import M3POPolicy
from sb3_m3po.m3po.world_model_update import world_model_targets
from sb3_m3po.zoo.callbacks import MultiTaskEvalCallback, MultiTaskRolloutLogger, TaskEpisodeStats, evaluate_tasks

# two tasks with different observation and action sizes and short episodes:
# Pendulum-v1 (obs 3, action 1 in [-2, 2], 200 steps) and Reacher-v5 (obs 10, action 2, 50 steps)
TOY = ["Pendulum-v1", "Reacher-v5"]
CODEC3 = TaskIdCodec(3)


class ActionRecorder(gym.Wrapper):
    """Records the actions a task env receives."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.actions: list[np.ndarray] = []

    def step(self, action):
        self.actions.append(np.array(action, copy=True))
        return self.env.step(action)


def header_of(path) -> list[str]:
    return (path / "progress.csv").read_text().splitlines()[0].split(",")


def test_task_sets_come_from_the_benchmark_definitions():
    from metaworld.env_dict import MT10_V3, MT50_V3

    assert resolve_tasks("MT10") == tuple(f"metaworld/{t}" for t in MT10_V3)
    assert len(resolve_tasks("MT50")) == len(MT50_V3) == 50
    assert len(DMC19_TASKS) == 19 and resolve_tasks("DMC19") == DMC19_TASKS
    import shimmy  # noqa: F401  (registers the dm_control ids)

    for env_id in DMC19_TASKS:
        gym.spec(env_id)  # every task exists in dm_control's suite
    assert resolve_tasks("MT50-DMC19") == resolve_tasks("MT50") + DMC19_TASKS
    assert resolve_tasks(TOY) == tuple(TOY)
    for bad, message in [("MT11", "unknown task set"), ([], "empty"), (["Pendulum-v1", "Pendulum-v1"], "more than once")]:
        with pytest.raises(ValueError, match=message):
            resolve_tasks(bad)


def test_padding_and_one_hot_convention():
    env = MultiTaskEnv(TOY, task_index=0, action_repeat=1)
    check_env(env, warn=False)
    spec = env.task_set_spec
    assert spec.obs_dims == (3, 10) and spec.action_dims == (1, 2) and spec.names == ("Pendulum-v1", "Reacher-v5")
    assert env.observation_space.shape == (10 + 2,) and env.action_space.shape == (2,)
    for task in (0, 1):
        obs, info = env.reset(seed=task, options={"task": task})
        own = spec.obs_dims[task]
        assert info["task"] == task and info["task_name"] == spec.names[task]
        assert np.all(obs[own:10] == 0), "observations are zero-padded to the largest task"
        assert np.array_equal(obs[-2:], np.eye(2)[task]), "the last num_tasks entries are the one-hot task id"
        assert TaskIdCodec(2).decode(obs[None])[0] == task
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert info["task"] == task and np.array_equal(obs[-2:], np.eye(2)[task])
    policy = M3POPolicy(env.observation_space, env.action_space, lambda _: 3e-4, num_tasks=2, task_action_dims=[1, 2])
    one_hots = th.as_tensor(np.stack([np.r_[np.zeros(10), 1, 0], np.r_[np.zeros(10), 0, 1]]), dtype=th.float32)
    assert policy.task_ids(one_hots).tolist() == [0, 1]
    # the encoder sees the padded observation and the task embedding, not the one-hot
    assert policy.world_model.encoder[0].in_features == 10 + policy.model_config.task_dim


def test_task_schedules_cycle_and_spread():
    env = MultiTaskEnv(TOY, rank=1, action_repeat=1)
    tasks = [env.reset()[1]["task"] for _ in range(4)]
    assert tasks == [1, 0, 1, 0], "a cycling env starts at its rank and visits every task"
    seeded = MultiTaskEnv(TOY, action_repeat=1)
    assert seeded.reset(seed=3)[1]["task"] == 1, "without a rank the first reset seed picks the start task"
    venv = DummyVecEnv([lambda: MultiTaskEnv(TOY, action_repeat=1) for _ in range(2)])
    configure_task_schedule(venv)
    for _ in range(3):
        venv.reset()
        assert venv.get_attr("task_index") == [0, 1], "n_envs = num_tasks cycling envs keep one task each"
    with pytest.raises(ValueError, match="fixed task_index"):
        MultiTaskEnv(TOY, task_index=0).set_task_schedule(0, 1)


def test_actions_are_truncated_and_rescaled_for_the_task_env():
    env = MultiTaskEnv(TOY, task_index=0, action_repeat=1)
    env.reset(seed=0)
    recorder = env._envs[0] = ActionRecorder(env._envs[0])
    env.step(np.array([0.5, 0.9], dtype=np.float32))
    env.step(np.array([-3.0, 0.0], dtype=np.float32))
    assert [a.shape for a in recorder.actions] == [(1,), (1,)], "padded action dims never reach the task env"
    assert np.allclose(np.concatenate(recorder.actions), [1.0, -2.0]), "rescaled from [-1, 1] to Pendulum's [-2, 2], clipped"


def _policy(use_planner: bool = True) -> tuple[M3POPolicy, th.Tensor]:
    th.manual_seed(0)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (10 + 2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    planner = PlannerConfig(horizon=2, num_samples=16, num_elites=4, num_prior_trajectories=4, iterations=2)
    policy = M3POPolicy(
        obs_space,
        action_space,
        lambda _: 3e-4,
        num_tasks=2,
        task_action_dims=[1, 2],
        planner=planner,
        use_planner=use_planner,
        architecture=dict(latent_dim=16, enc_dim=32, mlp_dim=32, prior_dim=32, num_bins=21),
    )
    obs = th.randn(6, 12)
    obs[:, -2:] = th.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)  # 3 envs of task 0, 3 of task 1
    return policy, obs


@pytest.mark.parametrize("use_planner", [True, False])
def test_masked_action_dims_never_change_a_log_probability(use_planner):
    policy, obs = _policy(use_planner)
    with th.no_grad():
        out = policy.act(obs, policy.initial_plan(6))
        assert th.all(out.action[:3, 1] == 0), "task 0 has one action dim: the second is 0 in execution"
        assert th.all(out.plan[:3, :, 1] == 0), "and in the planner's refitted plan"
        assert th.isfinite(out.behaviour_log_prob).all() and th.isfinite(out.log_prob).all()
        _, log_prob, entropy = policy.evaluate_actions(obs, out.action)
        assert th.allclose(log_prob, out.log_prob, atol=1e-5)
        # any value in the invalid dim: same prior log-probability and behaviour log-probability
        changed = out.action.clone()
        changed[:3, 1] = th.tensor([0.7, -0.3, 5.0])
        _, log_prob_changed, _ = policy.evaluate_actions(obs, changed)
        assert th.equal(log_prob_changed[:3], log_prob[:3])
        if use_planner:
            # the behaviour density of MPPI's refitted Gaussian (std 0 on the masked dim) ignores that dim too
            mask = policy.action_mask(policy.task_ids(obs))
            recomputed = masked_gaussian_log_prob(changed, out.plan[:, 0], out.behaviour_std, mask)
            assert th.allclose(recomputed, out.behaviour_log_prob, atol=1e-5)
        else:
            assert th.equal(out.behaviour_log_prob, out.log_prob)
        # task 0's log-prob and entropy are those of a 1-dim Gaussian
        dist = policy.prior_distribution(policy.encode(obs), policy.task_ids(obs))
        one_dim = dist.log_prob(out.action)[:3, 0]
        assert th.allclose(log_prob[:3], one_dim, atol=1e-5)
        assert th.allclose(entropy[:3], dist.entropy()[:3, 0], atol=1e-6)
        assert th.allclose(entropy[3:], dist.entropy()[3:].sum(-1), atol=1e-6)


def test_seed_phase_random_actions_leave_masked_dims_at_zero():
    policy, obs = _policy(True)
    th.manual_seed(0)
    with th.no_grad():
        out = policy.random_act(obs, policy.initial_plan(6))
        _, log_prob, _ = policy.evaluate_actions(obs, out.action)
    assert th.all(out.action[:3, 1] == 0) and th.all(out.action[3:] != 0), "task 0's second dim is padding"
    assert th.all(out.action.abs() <= 1)
    # the uniform density on [-1, 1] of the valid dims only: 1/2 for task 0's one dim, 1/4 for task 1's two
    expected = -th.log(th.tensor([2.0] * 3 + [4.0] * 3))
    assert th.allclose(out.behaviour_log_prob, expected) and th.allclose(out.log_prob, log_prob, atol=1e-5)


def test_masked_log_prob_ignores_zero_std_of_masked_dims():
    x = th.tensor([[0.3, 9.0]])
    mean, std = th.tensor([[0.1, 0.0]]), th.tensor([[0.5, 0.0]])  # MPPI's refit leaves std 0 on masked dims
    value = masked_gaussian_log_prob(x, mean, std, th.tensor([[1.0, 0.0]]))
    expected = th.distributions.Normal(0.1, 0.5).log_prob(th.tensor(0.3))
    assert th.allclose(value, expected.reshape(1))


def test_balanced_replay_returns_equal_counts_per_task():
    np.random.seed(0)
    # 4 env columns: three hold task 0, one cycles tasks 1 and 2 in episodes of 10 steps
    buffer = EpisodicReplayBuffer(4 * 200, obs_dim=5, action_dim=1, n_envs=4, num_tasks=3)
    for t in range(200):
        cycling_task = 1 + (t // 10) % 2
        tasks = np.array([0, 0, 0, cycling_task])
        obs = np.zeros((4, 5), np.float32)
        obs[np.arange(4), 2 + tasks] = 1.0  # one-hot in the last 3 entries
        done = np.array([False, False, False, t % 10 == 9])
        buffer.add(obs, obs, np.zeros((4, 1)), np.zeros(4), np.zeros(4), done)
    for batch_size in (30, 31, 256):
        batch = buffer.sample(batch_size, horizon=3)
        counts = np.bincount(CODEC3.decode(batch.observations.numpy()), minlength=3)
        assert counts.sum() == batch_size and counts.max() - counts.min() <= (batch_size % 3 > 0)
        # a subsequence never crosses a task switch
        first, later = batch.observations.numpy(), batch.next_observations.numpy()
        assert np.all(CODEC3.decode(later) == CODEC3.decode(first))
    buffer.balanced = False
    counts = np.bincount(CODEC3.decode(buffer.sample(3000, 3).observations.numpy()), minlength=3)
    assert counts[0] > 4 * counts[1], "uniform sampling follows the data (task 0 holds 3/4 of it)"


def test_per_task_bonus_normalisation():
    q_mf = th.zeros(8)
    q_mb = th.tensor([100.0, 110.0, 120.0, 130.0, 0.1, 0.2, 0.3, 0.4])  # task 0's gaps are 1000x task 1's
    task = th.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    _, pooled = exploration_bonus(q_mb, q_mf, 3.0)
    assert pooled[4:].sum() == 0, "a batch z-score gives task 1 no bonus at all"
    _, per_task = exploration_bonus(q_mb, q_mf, 3.0, task, 2)
    assert th.allclose(per_task[:4], per_task[4:], atol=1e-4), "within each task the bonus depends on its own scale"


def test_task_episode_stats_record_per_task_and_mean(tmp_path):
    stats = TaskEpisodeStats(["a", "b"])
    infos = [
        {"task": 0, "episode": {"r": 1.0, "l": 5}, "is_success": True},
        {"task": 1, "episode": {"r": 3.0, "l": 5}, "is_success": False},
        {"task": 1, "episode": {"r": 9.0, "l": 5}},
    ]
    stats.update(infos, np.array([True, True, False]))
    logger = configure(str(tmp_path), ["csv"])
    stats.record(logger)
    values = logger.name_to_value
    assert values["rollout/a/ep_rew_mean"] == 1.0 and values["rollout/b/ep_rew_mean"] == 3.0
    assert values["rollout/a/success_rate"] == 1.0 and values["rollout/b/success_rate"] == 0.0
    assert values["rollout/task_mean/ep_rew_mean"] == 2.0 and values["rollout/task_mean/success_rate"] == 0.5


def test_two_task_toy_set_trains_end_to_end_with_per_task_metrics(tiny, tmp_path):
    venv = make_multitask_vec_env(TOY, seed=0, action_repeat=2)
    model = M3PO("MlpPolicy", venv, seed=0, **tiny)
    assert model.policy.num_tasks == 2 and model.policy.task_action_dims == [1, 2]
    assert model.task_names == ("Pendulum-v1", "Reacher-v5")
    task_env = venv.envs[0].unwrapped
    task_env.reset(seed=0)
    inner = task_env._envs[0] = ActionRecorder(task_env._envs[0])
    evaluation = MultiTaskEvalCallback(eval_freq=256, log_path=str(tmp_path), verbose=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(512, callback=evaluation)
    header = header_of(tmp_path)
    for key in [
        "rollout/Pendulum-v1/ep_rew_mean",
        "rollout/Reacher-v5/ep_rew_mean",
        "rollout/task_mean/ep_rew_mean",
        "train/Pendulum-v1/bonus_mean",
        "eval/Pendulum-v1/mean_reward",
        "eval/Reacher-v5/mean_reward",
        "eval/mean_reward",
        "train/wm_consistency_loss",
    ]:
        assert key in header, key
    assert all(a.shape == (1,) for a in inner.actions) and inner.actions, "Pendulum only ever sees its own action dim"
    assert model.rollout_buffer.generator_ready  # after PPO's epochs the buffer is env-major: (envs * steps, dims)
    stored = model.rollout_buffer.actions.reshape(2, -1, 2)[0]  # env 0 holds Pendulum
    assert np.all(stored[:, 1] == 0), "the executed action is 0 in the masked dim"
    npz = np.load(tmp_path / "multitask_evaluations.npz")
    assert npz["results"].shape == (2, 2, 1) and list(npz["task_names"]) == ["Pendulum-v1", "Reacher-v5"]
    counts = model.replay_buffer.task_counts.sum(0)
    assert counts[0] == counts[1] > 0


def test_evaluate_tasks_runs_the_asked_episodes_of_every_task(tmp_path):
    venv = make_multitask_vec_env(TOY, seed=0, action_repeat=2)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=16, seed=0)
    returns, lengths, successes = evaluate_tasks(model, venv, n_eval_episodes=2)
    assert returns.shape == lengths.shape == successes.shape == (2, 2)
    assert np.all(lengths[0] == 100) and np.all(lengths[1] == 25), "Pendulum 200 and Reacher 50 steps, action repeat 2"
    assert np.isnan(successes).all(), "neither toy task reports success"
    with pytest.raises(ValueError, match="multi-task eval env"):
        evaluate_tasks(model, DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    with pytest.raises(ValueError, match="n_eval_episodes"):
        evaluate_tasks(model, venv, n_eval_episodes=0)


def test_task_embeddings_receive_gradients(tiny):
    model = M3PO("MlpPolicy", make_multitask_vec_env(TOY, seed=0, action_repeat=2), seed=0, **tiny)
    model.learn(64)
    policy, wm = model.policy, model.policy.world_model
    batch = model.replay_buffer.sample(8, model.planner_config.horizon)
    task = policy.task_ids(batch.observations)
    assert sorted(set(task.tolist())) == [0, 1]
    target_z, td_targets = world_model_targets(policy, batch, task, model.gamma)
    losses = wm.losses(batch.observations, batch.actions, batch.rewards, target_z, td_targets, task, model.world_model_config)
    wm.zero_grad(set_to_none=True)
    losses.total.backward()
    grad = wm.task_embedding.weight.grad
    assert grad is not None and th.all(grad.abs().sum(1) > 0), "every task's embedding row gets a gradient"
    assert any(p is wm.task_embedding.weight for g in model.wm_optimizer.param_groups for p in g["params"])


def test_save_load_round_trip_of_a_multitask_model(tiny, tmp_path):
    venv = make_multitask_vec_env(TOY, seed=0, action_repeat=2)
    model = M3PO("MlpPolicy", venv, seed=1, **tiny)
    model.learn(64)
    obs = venv.reset()
    actions, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "mt")
    for loaded in (M3PO.load(tmp_path / "mt"), M3PO.load(tmp_path / "mt", env=venv)):
        assert loaded.policy.num_tasks == 2 and loaded.policy.task_action_dims == [1, 2]
        assert loaded.task_names == model.task_names
        assert th.equal(loaded.policy.action_masks, model.policy.action_masks)
        assert np.array_equal(loaded.predict(obs, deterministic=True)[0], actions)
    loaded.learn(64, reset_num_timesteps=False)
    with pytest.raises(ValueError, match="does not match the env's task set"):
        M3PO("MlpPolicy", venv, policy_kwargs={"num_tasks": 3}, **{k: v for k, v in tiny.items() if k != "policy_kwargs"})


def test_vecnormalize_keeps_task_ids(tiny):
    venv = VecNormalize(make_multitask_vec_env(TOY, seed=0, action_repeat=2))
    model = M3PO("MlpPolicy", venv, seed=0, **tiny)
    assert model.policy.num_tasks == 2, "the task set is found through VecNormalize"
    model.learn(96)
    np.random.seed(0)
    batch = model.replay_buffer.sample(16, model.planner_config.horizon, venv)
    np.random.seed(0)
    raw = model.replay_buffer.sample(16, model.planner_config.horizon)
    task = model.policy.task_ids(raw.observations)
    assert not np.allclose(batch.observations[:, -2:].numpy(), np.eye(2)[task]), "VecNormalize changed the one-hot"
    assert th.equal(model.policy.task_ids(batch.observations), task)
    obs = venv.normalize_obs(venv.get_original_obs())
    assert model.policy.task_ids(th.as_tensor(obs)).tolist() == [0, 1], "argmax of the normalised one-hot is the task"


def test_multitask_ppo_and_sac_baselines_log_per_task_metrics(tmp_path):
    for algo, kwargs in [(PPO, {"n_steps": 64, "batch_size": 32, "n_epochs": 1}), (SAC, {"learning_starts": 32})]:
        model = algo("MlpPolicy", make_multitask_vec_env(TOY, seed=0, action_repeat=2), seed=0, **kwargs)
        folder = tmp_path / algo.__name__
        model.set_logger(configure(str(folder), ["csv"]))
        model.learn(256, callback=MultiTaskRolloutLogger())
        header = header_of(folder)
        assert "rollout/Reacher-v5/ep_rew_mean" in header and "rollout/task_mean/ep_rew_mean" in header, algo


def test_importing_the_package_registers_no_env_id():
    import subprocess
    import sys

    code = "import gymnasium, sb3_m3po; print(sorted(i for i in gymnasium.registry if i.startswith(('m3po/', 'metaworld/'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_registered_id_gives_a_multitask_m3po(tiny):
    register_envs()
    env = gym.make("m3po/MT10-v0")
    spec = get_task_set_spec(env)
    assert spec is not None and spec.num_tasks == 10 and spec.max_action_dim == 4
    assert env.observation_space.shape == (39 + 10,)
    model = M3PO("MlpPolicy", "m3po/MT10-v0", **tiny)
    assert model.policy.num_tasks == 10 and model.task_names[0] == "reach-v3"


def test_mt10_builds_and_m3po_trains_a_few_hundred_steps(tiny, tmp_path, capsys):
    venv = make_multitask_vec_env("MT10", seed=0, action_repeat=2)
    assert venv.num_envs == 10 and venv.observation_space.shape == (49,) and venv.action_space.shape == (4,)
    assert venv.get_attr("task_index") == list(range(10))
    model = M3PO("MlpPolicy", venv, seed=0, **tiny)
    # the console table too: SB3 cuts its keys at 36 characters, which made long task names collide
    model.set_logger(configure(str(tmp_path), ["csv", "stdout"]))
    model.learn(320)
    console = capsys.readouterr().out
    assert "train/" in console and "button-press-topdown" not in console, "per-task keys stay out of the console"
    assert model.num_timesteps == 320 and model.replay_buffer.task_counts.sum(0).tolist() == [32] * 10
    assert "train/reach-v3/bonus_mean" in header_of(tmp_path)
    batch = model.replay_buffer.sample(20, model.planner_config.horizon)
    assert np.bincount(model.policy.task_ids(batch.observations).numpy(), minlength=10).tolist() == [2] * 10


def test_task_aware_eval_callback_records_the_task_of_every_episode(tiny, tmp_path):
    from stable_baselines3.common.monitor import Monitor

    from sb3_m3po.zoo.callbacks import TaskAwareEvalCallback

    eval_env = DummyVecEnv([lambda: Monitor(MultiTaskEnv(TOY, rank=0, action_repeat=2))])  # cycles the 2 tasks
    callback = TaskAwareEvalCallback(eval_env, eval_freq=64, n_eval_episodes=2, log_path=str(tmp_path), verbose=0)
    model = M3PO("MlpPolicy", make_multitask_vec_env(TOY, seed=0, action_repeat=2), seed=0, **tiny)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(128, callback=callback)
    npz = np.load(tmp_path / "evaluations.npz")
    assert npz["results"].shape == npz["tasks"].shape == (1, 2)
    assert sorted(npz["tasks"][0]) == [0, 1] and list(npz["task_names"]) == ["Pendulum-v1", "Reacher-v5"]
    assert {"eval/Pendulum-v1/mean_reward", "eval/Reacher-v5/mean_reward", "eval/mean_reward"} <= set(header_of(tmp_path))


@pytest.mark.slow
def test_zoo_trains_sac_on_mt10_with_the_shipped_multitask_entry(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    args = ["--algo", "sac", "--env", "m3po/MT10-v0", "-n", "40", "-f", str(tmp_path), "--seed", "0"]
    args += ["--eval-freq", "-1", "-params", "learning_starts:20", "gradient_steps:2"]
    command = [sys.executable, "-m", "sb3_m3po.zoo.train", *args]
    out = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MultiTaskRolloutLogger" in out.stdout and "'n_envs', 10" in out.stdout, "the shipped m3po/MT10-v0 entry was used"


def test_per_task_metrics_of_long_task_names_dump_to_every_format(tmp_path, capsys):
    from sb3_m3po.zoo.callbacks import record_task_metric

    logger = configure(str(tmp_path), ["stdout", "csv"])
    for task in ["button-press-topdown-v3", "button-press-topdown-wall-v3"]:
        for metric in ["bonus_mean", "bonus_std", "bonus_normalised_mean"]:
            record_task_metric(logger, "train", task, metric, 1.0)
    logger.record("train/bonus_mean", 1.0)
    logger.dump(0)
    assert "button-press" not in capsys.readouterr().out
    assert "train/button-press-topdown-wall-v3/bonus_normalised_mean" in header_of(tmp_path)
