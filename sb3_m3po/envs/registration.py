"""
Gym ids of sb3-m3po: ``metaworld/<task>-v3`` (Meta-World MT1), shimmy's ``dm_control/...`` and the
multi-task ids (``m3po/MT10-v0``, ...). Registering is an explicit call (:func:`register_envs`), made
by :func:`~sb3_m3po.envs.make_env` and the CLI, never a side effect of importing the package.
"""

import os

import gymnasium as gym

# Gym ids registered by :func:`register_multitask_envs`: id -> task set (all with action repeat 2)
MULTITASK_ENV_IDS: dict[str, str] = {
    "m3po/MT10-v0": "MT10",
    "m3po/MT50-v0": "MT50",
    "m3po/DMC19-v0": "DMC19",
    "m3po/MT50-DMC19-v0": "MT50-DMC19",
}


def headless_rendering() -> None:
    """
    Without a display and without ``MUJOCO_GL``, pick MuJoCo's EGL backend (or none when EGL is missing).

    dm_control otherwise tries GLFW first, which prints ``GLFWError: X11: The DISPLAY environment
    variable is missing`` at every start on a headless machine, the normal case for training.
    """
    if "MUJOCO_GL" in os.environ or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    import ctypes.util

    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "off"


def register_multitask_envs() -> None:
    """
    Register the gym ids of :data:`MULTITASK_ENV_IDS` (``m3po/MT10-v0``, ...); cheap, safe to call more than once.

    ``gym.make("m3po/MT10-v0")`` gives one env cycling through the ten tasks (action repeat 2);
    ``kwargs`` of ``gym.make`` reach :class:`MultiTaskEnv` (e.g. ``action_repeat=1``).
    """
    for env_id, task_set in MULTITASK_ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="sb3_m3po.envs.multitask:MultiTaskEnv",
                kwargs={"tasks": task_set, "action_repeat": 2},
            )


def register_envs() -> None:
    """
    Register ``metaworld/<task>-v3`` for the 50 Meta-World v3 tasks (MT1), import shimmy's ``dm_control/...`` ids
    and register the multi-task ids (``m3po/MT10-v0``, ... see :mod:`sb3_m3po.envs.multitask`).

    Safe to call more than once.
    """
    headless_rendering()
    import shimmy  # noqa: F401  (registers the dm_control ids)
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    register_multitask_envs()

    for task in ALL_V3_ENVIRONMENTS:
        env_id = f"metaworld/{task}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="sb3_m3po.envs.factory:make_metaworld", kwargs={"task": task})
