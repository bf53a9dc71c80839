"""Gymnasium wrappers that make DMControl and Meta-World envs SB3-friendly, and action repeat."""

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
