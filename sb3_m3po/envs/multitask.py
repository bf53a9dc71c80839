"""
Multi-task environments: one env per task set with padded observations, a one-hot task id and masked actions.

Observations follow the convention of :class:`~sb3_m3po.common.task_ids.TaskIdCodec`: the task's
own flat observation zero-padded to the largest size of the set, then the one-hot task id. Actions
live in ``[-1, 1]^max_action_dim``; the env keeps the task's first ``action_dims[task]`` entries,
rescales them to the task's bounds and ignores the rest. Any SB3 algorithm can train on these
observations as they are (PPO and SAC see the one-hot as input); M3PO reads the task id from them
and masks the invalid action dimensions.
"""

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_m3po.common.task_ids import TaskIdCodec
from sb3_m3po.envs.factory import make_env
from sb3_m3po.envs.task_sets import resolve_tasks, task_names

# Every Meta-World v3 task has a 39-dim observation and a 4-dim action in [-1, 1] (SawyerXYZEnv);
# knowing this avoids building ~0.5 s / 23 MB envs just to read their spaces. Checked when a task env is built.
METAWORLD_OBS_DIM = 39
METAWORLD_ACTION_DIM = 4

# Order of construction of cycling envs in this process: their start task when neither a rank
# nor a reset seed says otherwise (DummyVecEnv builds its envs in rank order)
_construction_counter = itertools.count()


class TaskSetSpec(NamedTuple):
    """What a model needs to know about a task set: ids, names and the size of every task's observation and action."""

    env_ids: tuple[str, ...]
    names: tuple[str, ...]
    obs_dims: tuple[int, ...]
    action_dims: tuple[int, ...]

    @property
    def num_tasks(self) -> int:
        return len(self.env_ids)

    @property
    def max_obs_dim(self) -> int:
        return max(self.obs_dims)

    @property
    def max_action_dim(self) -> int:
        return max(self.action_dims)


def _flat_dims(env: gym.Env) -> tuple[int, int]:
    if not isinstance(env.action_space, spaces.Box):
        raise ValueError(f"multi-task envs need Box action spaces, got {env.action_space} for {env.spec and env.spec.id}")
    return spaces.flatdim(env.observation_space), int(np.prod(env.action_space.shape))


@functools.cache
def task_dims(env_id: str) -> tuple[int, int]:
    """Flat observation size and action size of one task (built once per process and cached, except Meta-World)."""
    if env_id.startswith("metaworld/"):
        return METAWORLD_OBS_DIM, METAWORLD_ACTION_DIM
    env = make_env(env_id)
    try:
        return _flat_dims(env)
    finally:
        env.close()


def task_set_spec(tasks: str | Sequence[str]) -> TaskSetSpec:
    """:class:`TaskSetSpec` of a named task set or a list of env ids (see :func:`~sb3_m3po.envs.task_sets.resolve_tasks`)."""
    env_ids = resolve_tasks(tasks)
    dims = [task_dims(env_id) for env_id in env_ids]
    return TaskSetSpec(env_ids, task_names(env_ids), tuple(d[0] for d in dims), tuple(d[1] for d in dims))


class MultiTaskEnv(gym.Env):
    """
    One env of a task set, holding one task or cycling through the tasks across episodes.

    Observations and actions follow the module's task-id convention. Each episode runs one
    task; ``info["task"]`` (index) and ``info["task_name"]`` name it, and Meta-World tasks
    report ``info["is_success"]``. Task envs are built when first needed and kept.

    Which task an episode runs:

    * ``task_index`` given: always that task;
    * otherwise episode ``k`` (counted from the first reset) runs task ``(start + k * task_stride) % num_tasks``,
      where ``start`` is ``rank`` if given, else the seed of the first reset modulo ``num_tasks``
      (SB3 seeds env ``i`` of a VecEnv with ``seed + i``), else the order of construction in this
      process. With ``task_stride = 1`` one env visits every task in turn; with ``n`` envs of
      ranks ``0..n-1`` and ``task_stride = n`` they cover the tasks evenly and each env builds
      only ``num_tasks / n`` task envs (a fixed task each when ``n = num_tasks``), see
      :meth:`set_task_schedule` and :func:`configure_task_schedule`.
    * ``reset(options={"task": k})`` runs task ``k`` for that episode.

    :param tasks: a task set name (``"MT10"``, ``"MT50"``, ``"DMC19"``, ``"MT50-DMC19"``) or a list of env ids
    :param task_index: fixed task of this env (None: cycle)
    :param rank: start task of a cycling env (None: from the first reset seed or the construction order)
    :param task_stride: tasks advanced per episode by a cycling env
    :param action_repeat: simulator steps per decision of every task
    :param spec: precomputed :class:`TaskSetSpec` of ``tasks`` (saves building each task once to read its spaces)
    :param render_mode: passed to every task env
    """

    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array"]}

    def __init__(
        self,
        tasks: str | Sequence[str] = "MT10",
        task_index: int | None = None,
        rank: int | None = None,
        task_stride: int = 1,
        action_repeat: int = 2,
        spec: TaskSetSpec | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.render_mode = render_mode
        env_ids = resolve_tasks(tasks)
        self.task_set_spec = spec if spec is not None else task_set_spec(env_ids)
        if self.task_set_spec.env_ids != env_ids:
            raise ValueError(f"spec is for tasks {self.task_set_spec.env_ids}, not {env_ids}")
        num_tasks = self.task_set_spec.num_tasks
        if task_index is not None and not 0 <= task_index < num_tasks:
            raise ValueError(f"task_index={task_index} is out of range for {num_tasks} tasks")
        if task_stride < 1:
            raise ValueError(f"task_stride must be >= 1, got {task_stride}")
        self.action_repeat = action_repeat
        self.fixed_task = task_index
        self._start = rank if rank is None else rank % num_tasks
        self._stride = task_stride
        self._episode = 0
        self._construction_index = next(_construction_counter)
        self._base_seed: int | None = None
        self._envs: dict[int, gym.Env] = {}
        self._bounds: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.task_index = task_index if task_index is not None else (self._start or 0)
        self.codec = TaskIdCodec(num_tasks)
        max_obs, width = self.task_set_spec.max_obs_dim, self.codec.width
        low = np.concatenate([np.full(max_obs, -np.inf), np.zeros(width)]).astype(np.float32)
        high = np.concatenate([np.full(max_obs, np.inf), np.ones(width)]).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (self.task_set_spec.max_action_dim,), dtype=np.float32)

    # ------------------------------------------------------------------ schedule
    def set_task_schedule(self, start: int, stride: int) -> None:
        """
        Make episodes from the next reset on run tasks ``start, start + stride, ...`` (modulo the number of tasks).

        :raises ValueError: for an env with a fixed ``task_index``
        """
        if self.fixed_task is not None:
            raise ValueError("this MultiTaskEnv has a fixed task_index; it has no schedule to set")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self._start, self._stride, self._episode = start % self.task_set_spec.num_tasks, stride, 0

    def _next_task(self, seed: int | None, options: dict[str, Any] | None) -> int:
        num_tasks = self.task_set_spec.num_tasks
        if options is not None and "task" in options:
            task = int(options["task"])
            if not 0 <= task < num_tasks:
                raise ValueError(f"reset(options={{'task': {task}}}) is out of range for {num_tasks} tasks")
            return task
        if self.fixed_task is not None:
            return self.fixed_task
        if self._start is None:
            self._start = (seed if seed is not None else self._construction_index) % num_tasks
        task = (self._start + self._episode * self._stride) % num_tasks
        self._episode += 1
        return task

    # ------------------------------------------------------------------ task envs
    def _task_env(self, task: int) -> tuple[gym.Env, bool]:
        """The env of ``task`` and whether it was just built."""
        if task in self._envs:
            return self._envs[task], False
        env_id = self.task_set_spec.env_ids[task]
        seed = None if self._base_seed is None else self._base_seed + 7919 * task
        kwargs = {} if self.render_mode is None else {"render_mode": self.render_mode}
        env = make_env(env_id, action_repeat=self.action_repeat, seed=seed, **kwargs)
        dims = _flat_dims(env)
        expected = (self.task_set_spec.obs_dims[task], self.task_set_spec.action_dims[task])
        if dims != expected:
            env.close()
            raise ValueError(
                f"task {env_id} has observation/action sizes {dims}, but the task set spec says {expected}; "
                "rebuild the spec with task_set_spec()"
            )
        action_space = env.action_space
        assert isinstance(action_space, spaces.Box)
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            env.close()
            raise ValueError(
                f"task {env_id} has an unbounded action space {action_space}; multi-task actions are rescaled to its bounds"
            )
        self._bounds[task] = (action_space.low.astype(np.float64).ravel(), action_space.high.astype(np.float64).ravel())
        self._envs[task] = env
        return env, True

    def _observation(self, obs: Any, task: int) -> np.ndarray:
        env = self._envs[task]
        flat = np.asarray(spaces.flatten(env.observation_space, obs), dtype=np.float32).ravel()
        padded = np.zeros(self.task_set_spec.max_obs_dim, dtype=np.float32)
        padded[: flat.shape[0]] = flat
        return self.codec.encode(padded, task)

    def _task_info(self, info: dict[str, Any], task: int) -> dict[str, Any]:
        info["task"] = task
        info["task_name"] = self.task_set_spec.names[task]
        return info

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None and self._base_seed is None:
            self._base_seed = seed
        task = self._next_task(seed, options)
        env, new = self._task_env(task)
        task_seed = seed
        if task_seed is None and new and self._base_seed is not None:
            # a task env built after the seeded first reset gets its own seed, so runs stay reproducible
            task_seed = self._base_seed + 7919 * task
        options = None if options is None else {k: v for k, v in options.items() if k != "task"}
        obs, info = env.reset(seed=task_seed, options=options or None)
        self.task_index = task
        return self._observation(obs, task), self._task_info(info, task)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        task = self.task_index
        env = self._envs[task]
        low, high = self._bounds[task]
        # the task's own dims only: the padded dims never reach the task env
        own = np.clip(np.asarray(action, dtype=np.float64).ravel()[: self.task_set_spec.action_dims[task]], -1.0, 1.0)
        scaled = (low + 0.5 * (own + 1.0) * (high - low)).astype(env.action_space.dtype)
        obs, reward, terminated, truncated, info = env.step(scaled.reshape(env.action_space.shape))
        return self._observation(obs, task), reward, terminated, truncated, self._task_info(info, task)

    def render(self) -> Any:
        return self._envs[self.task_index].render() if self.task_index in self._envs else None

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def make_multitask_vec_env(
    tasks: str | Sequence[str],
    n_envs_per_task: int = 1,
    vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] = DummyVecEnv,
    seed: int | None = None,
    action_repeat: int = 2,
    monitor_dir: str | None = None,
    wrapper_class: Callable[[gym.Env], gym.Env] | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """
    An SB3 VecEnv with ``n_envs_per_task`` envs per task, each holding its task (fixed ``task_index``).

    Env ``i`` holds task ``i % num_tasks``, so the first ``num_tasks`` envs are one per task.
    Every env is wrapped in :class:`~stable_baselines3.common.monitor.Monitor` (recording
    ``is_success``, ``task`` in its CSV when ``monitor_dir`` is set).

    :param tasks: a task set name or a list of env ids (see :func:`~sb3_m3po.envs.task_sets.resolve_tasks`)
    :param n_envs_per_task: envs per task
    :param vec_env_cls: ``DummyVecEnv`` or ``SubprocVecEnv``
    :param seed: env ``i`` is reset with ``seed + i`` (and its action space seeded likewise)
    :param action_repeat: simulator steps per decision
    :param monitor_dir: folder of the Monitor CSV files (None: not written)
    :param wrapper_class: optional wrapper applied after the Monitor
    :param vec_env_kwargs: extra arguments of ``vec_env_cls``
    """
    if n_envs_per_task < 1:
        raise ValueError(f"n_envs_per_task must be >= 1, got {n_envs_per_task}")
    spec = task_set_spec(tasks)  # once here, not in every (sub)process

    def factory(rank: int) -> Callable[[], gym.Env]:
        def _init() -> gym.Env:
            env: gym.Env = MultiTaskEnv(spec.env_ids, task_index=rank % spec.num_tasks, action_repeat=action_repeat, spec=spec)
            if seed is not None:
                env.action_space.seed(seed + rank)
            filename = None if monitor_dir is None else f"{monitor_dir}/{rank}"
            env = Monitor(env, filename=filename, info_keywords=("task",))
            return wrapper_class(env) if wrapper_class is not None else env

        return _init

    n_envs = spec.num_tasks * n_envs_per_task
    vec_env = vec_env_cls([factory(rank) for rank in range(n_envs)], **(vec_env_kwargs or {}))  # type: ignore[arg-type]
    if seed is not None:
        vec_env.seed(seed)
    return vec_env


def get_task_set_spec(env: VecEnv | gym.Env | None) -> TaskSetSpec | None:
    """
    The :class:`TaskSetSpec` of a multi-task env (through VecEnv and gym wrappers), or None for other envs.

    :raises ValueError: if the envs of a VecEnv hold different task sets
    """
    if env is None:
        return None
    if isinstance(env, VecEnv):
        if not env.has_attr("task_set_spec"):
            return None
        specs = env.get_attr("task_set_spec")
        if any(spec != specs[0] for spec in specs[1:]):
            raise ValueError("the envs of this VecEnv hold different task sets; one VecEnv must hold one task set")
        return specs[0]
    try:
        return env.get_wrapper_attr("task_set_spec")
    except AttributeError:
        return None


def configure_task_schedule(venv: VecEnv) -> None:
    """
    Spread the cycling envs of a multi-task VecEnv over the tasks: env ``i`` of ``n`` runs tasks ``i, i + n, ...``.

    With ``n = num_tasks`` every env keeps one task, the cheapest setting (one task env each);
    envs with a fixed ``task_index`` are left as they are. Takes effect at each env's next reset.
    """
    fixed = venv.get_attr("fixed_task")
    for i, task in enumerate(fixed):
        if task is None:
            venv.env_method("set_task_schedule", i, venv.num_envs, indices=[i])


def setup_task_set(
    env: VecEnv, policy_kwargs: dict[str, Any], task_names: tuple[str, ...] | None
) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    """
    A model's view of a (possibly multi-task) env: policy kwargs with ``num_tasks`` and
    ``task_action_dims`` read from the env's task set, and the task names. Cycling envs are
    spread over the tasks (:func:`configure_task_schedule`).

    :param policy_kwargs: the model's policy kwargs (not modified)
    :param task_names: the tasks the model was trained on (None: new model, or single task)
    :raises ValueError: if the policy kwargs or the model's tasks disagree with the env's task set
    """
    spec = get_task_set_spec(env)
    if spec is None:
        if policy_kwargs.get("num_tasks", 1) > 1 and task_names is not None:
            raise ValueError(f"this M3PO model was trained on {len(task_names)} tasks; give it a multi-task env")
        return policy_kwargs, task_names
    given = {"num_tasks": spec.num_tasks, "task_action_dims": list(spec.action_dims)}
    for key, value in given.items():
        if key in policy_kwargs and policy_kwargs[key] != value:
            raise ValueError(
                f"policy_kwargs[{key!r}]={policy_kwargs[key]!r} does not match the env's task set "
                f"({value!r}); leave it out, M3PO reads it from the env"
            )
    if task_names is not None and tuple(spec.names) != tuple(task_names):
        raise ValueError(f"the env holds tasks {spec.names}, but this model was trained on {task_names}")
    configure_task_schedule(env)
    return {**policy_kwargs, **given}, tuple(spec.names)
