"""Build one env from an id: DMControl (through shimmy), Meta-World MT1 or any gymnasium id, with action repeat."""

from typing import Any

import gymnasium as gym
import numpy as np

from sb3_m3po.common.hyperparams import entry_action_repeat, shipped_params
from sb3_m3po.envs.registration import register_envs
from sb3_m3po.envs.wrappers import ActionRepeat, DMCWrapper, SeededTasks, SuccessInfo


def make_metaworld(task: str, seed: int | None = None, action_repeat: int = 1, **kwargs: Any) -> gym.Env:
    """
    Meta-World MT1 task (v3) with float32 observations and ``info["is_success"]``.

    ``gym.make("metaworld/drawer-open-v3", action_repeat=2, max_episode_steps=100)`` is TD-MPC2's protocol
    (two simulator steps per decision, 100 decisions per episode), reachable through rl-zoo3's ``--env-kwargs``.

    :param action_repeat: simulator steps per decision
    """
    import metaworld  # noqa: F401  (registers Meta-World/MT1)

    env: gym.Env = SeededTasks(gym.make("Meta-World/MT1", env_name=task, seed=seed, **kwargs), task, seed)
    env = gym.wrappers.DtypeObservation(SuccessInfo(env), np.float32)
    return ActionRepeat(env, action_repeat) if action_repeat > 1 else env


def make_env(env_id: str, action_repeat: int | None = None, seed: int | None = None, **kwargs: Any) -> gym.Env:
    """
    Build one env from an id: ``dm_control/<domain>-<task>-v0``, ``metaworld/<task>-v3``
    (Meta-World MT1) or any gymnasium id, as ``sb3-m3po train --algo m3po`` builds it.

    DMControl Dict observations are flattened to float32. Meta-World success is
    reported as ``info["is_success"]``.

    :param env_id: the env id
    :param action_repeat: simulator steps per agent decision (None: that of the id's entry in the shipped
        ``hyperparams/m3po.yml``, found as the CLI finds it: 2 for ``dm_control/*``, 1 otherwise)
    :param seed: seed of Meta-World's task sampling
    """
    if action_repeat is None:
        action_repeat = entry_action_repeat(shipped_params("m3po", env_id))
    if env_id.startswith("dm_control/"):
        register_envs()
        return DMCWrapper(gym.make(env_id, **kwargs), action_repeat)
    if env_id.startswith("metaworld/"):
        register_envs()
        env = gym.make(env_id, seed=seed, **kwargs)
    else:
        env = gym.make(env_id, **kwargs)
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
    return env
