"""Environments: factories, wrappers, task sets, the multi-task env and gym id registration."""

from sb3_m3po.envs.factory import make_env, make_metaworld
from sb3_m3po.envs.multitask import MultiTaskEnv, make_multitask_vec_env
from sb3_m3po.envs.registration import register_envs
from sb3_m3po.envs.wrappers import ActionRepeat, DMCWrapper, SeededTasks, SuccessInfo

__all__ = [
    "ActionRepeat",
    "DMCWrapper",
    "MultiTaskEnv",
    "SeededTasks",
    "SuccessInfo",
    "make_env",
    "make_metaworld",
    "make_multitask_vec_env",
    "register_envs",
]
