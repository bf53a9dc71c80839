"""
Named task sets of the multi-task benchmarks and the resolution of user task lists to env ids.

Env ids are those of :func:`sb3_m3po.envs.make_env`: ``metaworld/<task>-v3`` (Meta-World MT1
of one task), ``dm_control/<domain>-<task>-v0`` (shimmy) or any gymnasium id.
"""

from collections.abc import Sequence

# The tasks of TD-MPC2's MT30 that exist in dm_control's suite, in TD-MPC2's order. TD-MPC2's
# "cup-catch" is dm_control's ball_in_cup-catch; the other 11 MT30 tasks (walker-walk-backwards,
# walker-run-backwards, cheetah-run-backwards, cheetah-run-front, cheetah-run-back, cheetah-jump,
# hopper-hop-backwards, reacher-three-easy, reacher-three-hard, cup-spin, pendulum-spin) are
# TD-MPC2's own custom tasks, not part of dm_control, and are left out.
DMC19_TASKS: tuple[str, ...] = (
    "dm_control/walker-stand-v0",
    "dm_control/walker-walk-v0",
    "dm_control/walker-run-v0",
    "dm_control/cheetah-run-v0",
    "dm_control/reacher-easy-v0",
    "dm_control/reacher-hard-v0",
    "dm_control/acrobot-swingup-v0",
    "dm_control/pendulum-swingup-v0",
    "dm_control/cartpole-balance-v0",
    "dm_control/cartpole-balance_sparse-v0",
    "dm_control/cartpole-swingup-v0",
    "dm_control/cartpole-swingup_sparse-v0",
    "dm_control/ball_in_cup-catch-v0",
    "dm_control/finger-spin-v0",
    "dm_control/finger-turn_easy-v0",
    "dm_control/finger-turn_hard-v0",
    "dm_control/fish-swim-v0",
    "dm_control/hopper-stand-v0",
    "dm_control/hopper-hop-v0",
)

# Names accepted by :func:`resolve_tasks` (and by the ``tasks`` argument of the multi-task envs)
TASK_SET_NAMES: tuple[str, ...] = ("MT10", "MT50", "DMC19", "MT50-DMC19")


def metaworld_task_set(name: str) -> tuple[str, ...]:
    """
    Env ids of a Meta-World benchmark, in the order of Meta-World's own definition (``metaworld.env_dict``).

    :param name: ``"MT10"`` or ``"MT50"``
    """
    from metaworld.env_dict import MT10_V3, MT50_V3

    tasks = {"MT10": MT10_V3, "MT50": MT50_V3}
    if name not in tasks:
        raise ValueError(f"unknown Meta-World task set {name!r}; expected one of {sorted(tasks)}")
    return tuple(f"metaworld/{task}" for task in tasks[name])


def resolve_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
    """
    Env ids of a named task set, or of a user list of env ids.

    :param tasks: one of :data:`TASK_SET_NAMES` (``"MT10"``, ``"MT50"``, ``"DMC19"``, ``"MT50-DMC19"``,
        the union), or a sequence of env ids
    :raises ValueError: for an unknown set name, an empty list or duplicate ids
    """
    if isinstance(tasks, str):
        if tasks in ("MT10", "MT50"):
            return metaworld_task_set(tasks)
        if tasks == "DMC19":
            return DMC19_TASKS
        if tasks == "MT50-DMC19":
            return metaworld_task_set("MT50") + DMC19_TASKS
        raise ValueError(
            f"unknown task set {tasks!r}: expected one of {list(TASK_SET_NAMES)} or a list of env ids "
            "(e.g. ['Pendulum-v1', 'dm_control/cartpole-swingup-v0'])"
        )
    env_ids = tuple(str(env_id) for env_id in tasks)
    if not env_ids:
        raise ValueError("the task list is empty: give at least one env id")
    duplicates = sorted({env_id for env_id in env_ids if env_ids.count(env_id) > 1})
    if duplicates:
        raise ValueError(f"the task list names {duplicates} more than once; every task must appear once")
    return env_ids


def task_name(env_id: str) -> str:
    """Short name of a task used in logger keys and results: the env id without its namespace (``reach-v3``)."""
    return env_id.rsplit("/", 1)[-1]


def task_names(env_ids: Sequence[str]) -> tuple[str, ...]:
    """
    Short names of ``env_ids`` (see :func:`task_name`); the full id where two short names would clash.
    """
    short = [task_name(env_id) for env_id in env_ids]
    return tuple(name if short.count(name) == 1 else env_id for name, env_id in zip(short, env_ids))
