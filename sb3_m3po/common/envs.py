"""Env construction for the benchmark suites: DMControl (via shimmy) and Meta-World, with action repeat."""

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np


class ActionRepeat(gym.Wrapper):
    """
    Repeat each action ``repeat`` times and sum the rewards.

    Budgets in this package count simulator steps (TD-MPC2's convention), so
    ``info["sim_steps"]`` reports how many were taken.
    """

    def __init__(self, env: gym.Env, repeat: int = 2) -> None:
        assert repeat >= 1, f"action repeat must be >= 1, got {repeat}"
        super().__init__(env)
        self.repeat = repeat

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        total, sim_steps = 0.0, 0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            sim_steps += 1
            if terminated or truncated:
                break
        info["sim_steps"] = sim_steps
        return obs, total, terminated, truncated, info


class SuccessInfo(gym.Wrapper):
    """Expose Meta-World's ``info["success"]`` as SB3's ``info["is_success"]``."""

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["is_success"] = bool(info.get("success", 0.0) > 0)
        return obs, reward, terminated, truncated, info


class DMCWrapper(gym.Wrapper):
    """
    DMControl through shimmy made SB3-friendly: flat float32 observations and action repeat.

    One class so that an rl-zoo3 ``env_wrapper`` entry can name it with its kwargs.

    :param env: a ``dm_control/...`` env made by shimmy (Dict observations)
    :param action_repeat: simulator steps per decision
    """

    def __init__(self, env: gym.Env, action_repeat: int = 2) -> None:
        env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.DtypeObservation(env, np.float32)
        if action_repeat > 1:
            env = ActionRepeat(env, action_repeat)
        super().__init__(env)


def make_metaworld(task: str, seed: int | None = None, **kwargs: Any) -> gym.Env:
    """Meta-World MT1 task (v3) with float32 observations and ``info["is_success"]``."""
    import metaworld  # noqa: F401  (registers Meta-World/MT1)

    env = gym.make("Meta-World/MT1", env_name=task, seed=seed, **kwargs)
    return gym.wrappers.DtypeObservation(SuccessInfo(env), np.float32)


def register_envs() -> None:
    """
    Register ``metaworld/<task>-v3`` for the 50 Meta-World v3 tasks (MT1), import shimmy's ``dm_control/...`` ids
    and register the multi-task ids (``m3po/MT10-v0``, ... see :mod:`sb3_m3po.common.multitask`).

    Safe to call more than once.
    """
    import shimmy  # noqa: F401  (registers the dm_control ids)
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    from sb3_m3po.common.multitask import register_multitask_envs

    register_multitask_envs()

    for task in ALL_V3_ENVIRONMENTS:
        env_id = f"metaworld/{task}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="sb3_m3po.common.envs:make_metaworld", kwargs={"task": task})


def make_env(env_id: str, action_repeat: int = 1, seed: int | None = None, **kwargs: Any) -> gym.Env:
    """
    Build one env from an id: ``dm_control/<domain>-<task>-v0``, ``metaworld/<task>-v3``
    (Meta-World MT1) or any gymnasium id.

    DMControl Dict observations are flattened to float32. Meta-World success is
    reported as ``info["is_success"]``.

    :param env_id: the env id
    :param action_repeat: simulator steps per agent decision
    :param seed: seed of Meta-World's task sampling
    """
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
