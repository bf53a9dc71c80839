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


class SeededTasks(gym.Wrapper):
    """
    Meta-World MT1 draws its task variants (goal and object positions) when it is built, from an unseeded
    generator unless it gets a seed, and picks an episode's variant before the reset's seed reaches the env.
    rl-zoo3 and SB3 seed an env on its first reset only, so a seeded reset here draws the variants anew and
    seeds the pick from that seed: a run's episodes then follow its ``seed``.

    :param env: a ``Meta-World/MT1`` env (its task-selecting wrapper holds ``tasks``)
    :param task: the Meta-World task name, e.g. ``drawer-open-v3``
    :param seed: the seed ``env`` was built with (None: unseeded)
    """

    def __init__(self, env: gym.Env, task: str, seed: int | None = None) -> None:
        super().__init__(env)
        self.task, self.tasks_seed = task, seed
        selector: Any = env
        while not hasattr(selector, "tasks"):
            assert isinstance(selector, gym.Wrapper), f"no task-selecting wrapper in the Meta-World env {env}"
            selector = selector.env
        self.selector = selector

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            if seed != self.tasks_seed:  # drawing builds the env and resets it 50 times: only when needed
                import metaworld

                self.selector.tasks = list(metaworld.MT1(self.task, seed=seed).train_tasks)
                self.tasks_seed = seed
            self.env.unwrapped.seed(seed)  # type: ignore[attr-defined]  # SawyerXYZEnv: seeds the variant pick
        return self.env.reset(seed=seed, options=options)


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
