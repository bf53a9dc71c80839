"""M3PO for Stable-Baselines3."""

import os

from sb3_m3po.envs import make_env, register_envs
from sb3_m3po.m3po import M3PO, M3POPolicy

with open(os.path.join(os.path.dirname(__file__), "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = ["M3PO", "M3POPolicy", "__version__", "make_env", "register_envs"]
