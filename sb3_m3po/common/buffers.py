"""Rollout buffer with behaviour log-probabilities and bonus terms, and an episodic replay buffer."""

import io
import pathlib
import pickle
from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.save_util import load_from_pkl
from stable_baselines3.common.vec_env import VecNormalize

from sb3_m3po.common.math import importance_corrected_gae
from sb3_m3po.common.task_ids import TaskIdCodec


class M3PORolloutBufferSamples(NamedTuple):
    """A PPO minibatch (field names as SB3's ``RolloutBufferSamples``)."""

    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor


class ReplaySamples(NamedTuple):
    """Contiguous ``H``-step subsequences, time-major."""

    observations: th.Tensor  # (B, obs_dim) first observation
    actions: th.Tensor  # (H, B, A)
    rewards: th.Tensor  # (H, B, 1)
    next_observations: th.Tensor  # (H, B, obs_dim)
    terminated: th.Tensor  # (H, B, 1)
    # (H, B, 1) 1 up to the step that ends the start's episode by a termination, 0 after it; None when every
    # subsequence stays inside its episode (always the case for envs that never terminate)
    mask: th.Tensor | None = None


class M3PORolloutBuffer(RolloutBuffer):
    """
    Rollout buffer for M3PO.

    Besides SB3's fields it stores, per transition, the real next observation (the terminal one
    at episode end), terminated vs done, and the behaviour log-probability of the executed action
    under the distribution it was drawn from (MPPI's Gaussian, or the prior when the planner is
    off). Its returns and advantages are the importance-corrected GAE of
    :func:`~sb3_m3po.common.math.importance_corrected_gae`, bootstrapped from the values of the
    stored next observations. Observations are stored flat, ``(n_steps, n_envs, obs_dim)``.
    """

    def reset(self) -> None:
        shape = (self.buffer_size, self.n_envs)
        self.next_observations = np.zeros((*shape, *self.obs_shape), dtype=np.float32)
        self.behaviour_log_probs = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=np.float32)
        self.dones = np.zeros(shape, dtype=np.float32)
        super().reset()
        # Actions live in the planner's float32 [-1, 1] units whatever the env's dtype
        self.actions = self.actions.astype(np.float32)

    def add(  # type: ignore[override]
        self,
        *,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: th.Tensor,
        log_prob: th.Tensor,
        behaviour_log_prob: th.Tensor,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        done: np.ndarray,
    ) -> None:
        """
        Add one step of all envs.

        :param log_prob: ``(n_envs,)`` prior log-probability of ``action``
        :param behaviour_log_prob: ``(n_envs,)`` its log-probability under the distribution it was drawn from
        :param next_obs: ``(n_envs, obs_dim)`` real next observations (terminal ones where ``done``)
        :param terminated: ``(n_envs,)`` the episode ended in a terminal state (no bootstrap)
        :param done: ``(n_envs,)`` terminated or truncated (the trace is cut)
        """
        self.next_observations[self.pos] = next_obs
        self.behaviour_log_probs[self.pos] = behaviour_log_prob.cpu().numpy()
        self.terminated[self.pos] = terminated
        self.dones[self.pos] = done
        super().add(obs, action, reward, episode_start, value, log_prob)

    def compute_returns_and_advantage(self, next_values: np.ndarray) -> None:  # type: ignore[override]
        """
        Importance-corrected GAE over the whole buffer.

        :param next_values: ``(n_steps, n_envs)`` values of the stored next observations; they cover
            every bootstrap, the last step's included, so SB3's ``last_values`` and ``dones`` are not needed
        """
        self.advantages, self.returns = importance_corrected_gae(
            self.rewards,
            self.values,
            next_values,
            self.terminated,
            self.dones,
            self.log_probs - self.behaviour_log_probs,
            self.gamma,
            self.gae_lambda,
        )

    def add_bonus(self, bonus_coef: float, bonus: np.ndarray) -> None:
        """
        ``A' = A + bonus_coef * std(A) * bonus`` (scale-free in the reward units).

        :param bonus: ``(n_steps, n_envs)`` normalised, clipped gap ``clip(zscore(eps), 0, c)``
        """
        if bonus_coef > 0:
            self.advantages = self.advantages + bonus_coef * self.advantages.std() * bonus

    def get(self, batch_size: int | None = None) -> Generator[M3PORolloutBufferSamples, None, None]:  # type: ignore[override]
        assert self.full, "the rollout buffer must be full before sampling"
        indices = np.random.permutation(self.buffer_size * self.n_envs)
        if not self.generator_ready:
            for name in ["observations", "actions", "values", "log_probs", "advantages", "returns"]:
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
        if batch_size is None:
            batch_size = self.buffer_size * self.n_envs
        start = 0
        while start < self.buffer_size * self.n_envs:
            yield self._get_samples(indices[start : start + batch_size])
            start += batch_size

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> M3PORolloutBufferSamples:  # type: ignore[override]
        data = (
            self.observations[batch_inds],
            self.actions[batch_inds],
            self.values[batch_inds].flatten(),
            self.log_probs[batch_inds].flatten(),
            self.advantages[batch_inds].flatten(),
            self.returns[batch_inds].flatten(),
        )
        return M3PORolloutBufferSamples(*tuple(map(self.to_torch, data)))


class EpisodicReplayBuffer:
    """
    Replay for the world model that samples contiguous ``H``-step subsequences of one episode.

    Storage is ``(capacity_per_env, n_envs, ...)``; every transition carries the id of
    its episode, and a subsequence is valid when its first and last transitions share
    the id (ids only grow along an env's timeline), or when it leaves its episode right after
    a termination (its later steps are then masked), and it does not run over the write
    position. Observations are stored as the env produced them before ``VecNormalize``
    and normalised with the current statistics when sampled.

    With ``num_tasks > 1`` every transition also carries its task id, read from the observation
    (:class:`~sb3_m3po.common.task_ids.TaskIdCodec`), and ``balanced=True``
    samples the same number of subsequences from every task that has data (the batch is split
    as evenly as it divides), whatever the tasks' share of the buffer, so no task starves.

    :param buffer_size: total capacity (split evenly over envs)
    :param obs_dim: flat observation size
    :param action_dim: action size
    :param n_envs: number of parallel envs
    :param device: torch device of the sampled tensors
    :param num_tasks: number of tasks (1: single task)
    :param balanced: per-task balanced sampling when ``num_tasks > 1``
    """

    def __init__(
        self,
        buffer_size: int,
        obs_dim: int,
        action_dim: int,
        n_envs: int,
        device: th.device | str = "cpu",
        num_tasks: int = 1,
        balanced: bool = True,
    ) -> None:
        self.capacity = max(buffer_size // n_envs, 1)
        self.n_envs, self.device = n_envs, device
        self.num_tasks = num_tasks
        self.balanced = balanced and num_tasks > 1
        shape = (self.capacity, n_envs)
        self.observations = np.zeros((*shape, obs_dim), dtype=np.float32)
        self.next_observations = np.zeros((*shape, obs_dim), dtype=np.float32)
        self.actions = np.zeros((*shape, action_dim), dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=np.float32)
        self.episode_ids = np.zeros(shape, dtype=np.int64)
        self.tasks = np.zeros(shape, dtype=np.int64)
        # stored transitions per (env column, task): the proposal weights of balanced sampling
        self.task_counts = np.zeros((n_envs, num_tasks), dtype=np.int64)
        self._current_episode = np.arange(n_envs, dtype=np.int64)
        self._next_episode_id = n_envs
        self.pos = 0
        self.full = False

    def size(self) -> int:
        """Number of stored transitions (all envs)."""
        return (self.capacity if self.full else self.pos) * self.n_envs

    # Per-step arrays: a pickle of a buffer that has not wrapped holds only their filled rows, so a saved
    # replay (checkpoints, ``save_replay_buffer``) is as large as its data rather than its capacity.
    _PER_STEP = ("observations", "next_observations", "actions", "rewards", "terminated", "episode_ids", "tasks")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if not self.full:
            for name in self._PER_STEP:
                state[name] = state[name][: self.pos]
        return state

    def __setstate__(self, state: dict) -> None:
        for name in self._PER_STEP:
            stored = state[name]
            if len(stored) < state["capacity"]:
                whole = np.zeros((state["capacity"], *stored.shape[1:]), dtype=stored.dtype)
                whole[: len(stored)] = stored
                state[name] = whole
        self.__dict__.update(state)

    def truncate_last_trajectory(self) -> None:
        """
        Close every env's current episode, so the next transitions start new ones.

        Needed when the envs were reset since the last ``add`` (e.g. training resumed from
        a saved buffer): without it a subsequence could join the old episode's last steps to
        the new episode's first ones.
        """
        self._current_episode = self._next_episode_id + np.arange(self.n_envs, dtype=np.int64)
        self._next_episode_id += self.n_envs

    @classmethod
    def load(
        cls, path: str | pathlib.Path | io.BufferedIOBase, obs_dim: int, action_dim: int, n_envs: int, num_tasks: int
    ) -> "EpisodicReplayBuffer":
        """
        A buffer pickled with SB3's ``save_to_pkl``, checked against the model that will train on it.

        :raises ValueError: if the file is unreadable, holds something else, or was made for other shapes
        """
        try:
            buffer = load_from_pkl(path)
        except (EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError) as error:
            raise ValueError(f"Cannot load replay buffer {path!s}: it is corrupt or not a pickle ({error})") from error
        if not isinstance(buffer, cls):
            raise ValueError(
                f"Replay buffer {path!s} holds a {type(buffer).__name__}, not an M3PO EpisodicReplayBuffer; "
                "it was saved by another algorithm"
            )
        try:
            buffer.check_compatible(obs_dim, action_dim, n_envs, num_tasks)
        except ValueError as error:
            raise ValueError(f"Cannot load replay buffer {path!s}: {error}") from error
        return buffer

    def check_compatible(self, obs_dim: int, action_dim: int, n_envs: int, num_tasks: int) -> None:
        """
        :raises ValueError: naming the first shape that differs from the model's
        """
        stored = {
            "observation size": self.observations.shape[-1],
            "action size": self.actions.shape[-1],
            "n_envs": self.n_envs,
            "num_tasks": self.num_tasks,
        }
        expected = {"observation size": obs_dim, "action size": action_dim, "n_envs": n_envs, "num_tasks": num_tasks}
        for what, value in stored.items():
            if value != expected[what]:
                raise ValueError(
                    f"the replay buffer has {what} {value} but the model has {expected[what]}; "
                    "load it into a model of the same env and n_envs"
                )

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        done: np.ndarray,
    ) -> None:
        """Add one step of all envs; ``done`` (terminated or truncated) closes the episode."""
        task = TaskIdCodec(self.num_tasks).decode(np.asarray(obs))
        if task is not None:
            envs = np.arange(self.n_envs)
            if self.full:
                self.task_counts[envs, self.tasks[self.pos]] -= 1
            self.tasks[self.pos] = task
            self.task_counts[envs, self.tasks[self.pos]] += 1
        self.observations[self.pos] = obs
        self.next_observations[self.pos] = next_obs
        self.actions[self.pos] = action
        self.rewards[self.pos] = reward
        self.terminated[self.pos] = terminated
        self.episode_ids[self.pos] = self._current_episode
        done_idx = np.flatnonzero(done)
        self._current_episode[done_idx] = self._next_episode_id + np.arange(len(done_idx))
        self._next_episode_id += len(done_idx)
        self.pos = (self.pos + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def sample(
        self, batch_size: int, horizon: int, env: VecNormalize | None = None, across_terminations: bool = True
    ) -> ReplaySamples:
        """
        Sample ``batch_size`` subsequences of ``horizon`` transitions, each inside one episode or ending it with
        a termination: a terminal transition is then a start and not only the last step, so Q learns its target
        on the encoded latent and the termination head sees it at every weight. Steps after it get mask 0.

        :param env: optional ``VecNormalize`` whose statistics normalise observations and rewards
        :param across_terminations: False: only subsequences inside one episode (TD-MPC2's sampling)
        :raises ValueError: if no valid subsequence exists (too little data or episodes shorter than ``horizon``)
        """
        filled = self.capacity if self.full else self.pos
        oldest = self.pos if self.full else 0
        num_starts = filled - horizon + 1
        if num_starts <= 0:
            raise ValueError(f"replay holds {filled} steps per env, fewer than the horizon {horizon}")
        if self.balanced:
            t0, env_idx = self._balanced_starts(batch_size, horizon, oldest, num_starts, across_terminations)
        else:
            t0, env_idx = self._uniform_starts(batch_size, horizon, oldest, num_starts, across_terminations)
        return self._gather(t0, env_idx, self._steps(t0, horizon), env)

    def _steps(self, t0: np.ndarray, horizon: int) -> np.ndarray:
        """``(H, N)`` buffer rows of the subsequences starting at ``t0``."""
        return (t0[None, :] + np.arange(horizon)[:, None]) % self.capacity

    def _in_episode(self, t0: np.ndarray, env_idx: np.ndarray, time_idx: np.ndarray) -> np.ndarray:
        """``(H, N)`` bool: step ``k`` of each subsequence is in the episode of its start (a prefix of True)."""
        return self.episode_ids[time_idx, env_idx[None, :]] == self.episode_ids[t0, env_idx][None, :]

    def _valid(self, t0: np.ndarray, env_idx: np.ndarray, horizon: int, across_terminations: bool) -> np.ndarray:
        """Subsequences inside their start's episode, or (``across_terminations``) leaving it right after a termination."""
        inside = self._in_episode(t0, env_idx, self._steps(t0, horizon))
        if not across_terminations:
            return inside[-1]
        last = (t0 + inside.sum(0) - 1) % self.capacity
        return inside[-1] | (self.terminated[last, env_idx] > 0)

    def _uniform_starts(
        self, batch_size: int, horizon: int, oldest: int, num_starts: int, across_terminations: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Start positions (time, env) drawn uniformly among the valid subsequences (:meth:`_valid`)."""
        starts_t, starts_e = [], []
        found, attempts = 0, 0
        while found < batch_size:
            attempts += 1
            if attempts > 100:
                raise ValueError(
                    f"could not sample {batch_size} subsequences of {horizon} steps inside one episode "
                    f"({found} found): are episodes shorter than the horizon?"
                )
            t0 = (oldest + np.random.randint(0, num_starts, size=2 * batch_size)) % self.capacity
            env_idx = np.random.randint(0, self.n_envs, size=2 * batch_size)
            ok = self._valid(t0, env_idx, horizon, across_terminations)
            starts_t.append(t0[ok])
            starts_e.append(env_idx[ok])
            found += int(ok.sum())
        return np.concatenate(starts_t)[:batch_size], np.concatenate(starts_e)[:batch_size]

    def _balanced_starts(
        self, batch_size: int, horizon: int, oldest: int, num_starts: int, across_terminations: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Start positions with equal counts per task (``batch_size // P`` or one more, for the ``P`` tasks with data).

        Rejection sampling, vectorised over all tasks: a candidate for task ``k`` picks an env
        column in proportion to its stored transitions of task ``k`` and a uniform start, and is
        kept if the start holds task ``k`` and the subsequence is valid (:meth:`_valid`). Each
        round proposes about ``missing / acceptance`` candidates per task.
        """
        totals = self.task_counts.sum(0)
        present = np.flatnonzero(totals >= horizon)
        if len(present) == 0:
            raise ValueError(f"no task holds {horizon} transitions yet (the horizon); collect more before sampling")
        quota = np.zeros(self.num_tasks, dtype=np.int64)
        quota[present] = batch_size // len(present)
        quota[np.random.choice(present, batch_size % len(present), replace=False)] += 1
        cumulative = self.task_counts.cumsum(0)  # (n_envs, num_tasks)
        filled = self.capacity if self.full else self.pos
        # chance that a uniform start in a column drawn by weight holds the task (1 for one task per column)
        acceptance = (self.task_counts.astype(np.float64) ** 2).sum(0) / (np.maximum(totals, 1) * filled)
        found = np.zeros(self.num_tasks, dtype=np.int64)
        starts_t, starts_e = [], []
        for _ in range(100):
            missing = quota - found
            if not missing.any():
                break
            proposals = np.where(missing > 0, np.ceil(1.5 * missing / np.maximum(acceptance, 1e-3)) + 4, 0).astype(np.int64)
            wanted = np.repeat(np.arange(self.num_tasks), np.minimum(proposals, 100_000))
            draw = np.random.random(len(wanted)) * totals[wanted]
            env_idx = (cumulative[:, wanted] <= draw[None, :]).sum(0)
            t0 = (oldest + np.random.randint(0, num_starts, size=len(wanted))) % self.capacity
            ok = (self.tasks[t0, env_idx] == wanted) & self._valid(t0, env_idx, horizon, across_terminations)
            wanted, t0, env_idx = wanted[ok], t0[ok], env_idx[ok]  # already ordered by task
            rank = np.arange(len(wanted)) - np.searchsorted(wanted, wanted, side="left")
            keep = rank < missing[wanted]
            starts_t.append(t0[keep])
            starts_e.append(env_idx[keep])
            found += np.bincount(wanted[keep], minlength=self.num_tasks)
        else:
            if (quota - found).any():
                starving = [int(k) for k in np.flatnonzero(quota > found)]
                raise ValueError(
                    f"could not sample subsequences of {horizon} steps inside one episode for task(s) {starving}: "
                    "are their episodes shorter than the horizon?"
                )
        return np.concatenate(starts_t), np.concatenate(starts_e)

    def _gather(self, t0: np.ndarray, env_idx: np.ndarray, time_idx: np.ndarray, env: VecNormalize | None) -> ReplaySamples:
        obs = self.observations[t0, env_idx]
        next_obs = self.next_observations[time_idx, env_idx[None, :]]
        rewards = self.rewards[time_idx, env_idx[None, :]]
        if env is not None:
            obs = env.normalize_obs(obs)
            next_obs = env.normalize_obs(next_obs)
            rewards = env.normalize_reward(rewards)
        to_torch = lambda x: th.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)  # noqa: E731
        inside = self._in_episode(t0, env_idx, time_idx)
        return ReplaySamples(
            to_torch(obs),
            to_torch(self.actions[time_idx, env_idx[None, :]]),
            to_torch(rewards)[..., None],
            to_torch(next_obs),
            to_torch(self.terminated[time_idx, env_idx[None, :]])[..., None],
            None if inside.all() else to_torch(inside)[..., None],
        )
