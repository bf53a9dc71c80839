"""M3PO for Stable-Baselines3."""

import os

from sb3_m3po.common.multitask import register_multitask_envs
from sb3_m3po.m3po import M3PO, M3POPolicy

# the multi-task ids (m3po/MT10-v0, ...) only name an entry point: registering them is cheap
register_multitask_envs()

with open(os.path.join(os.path.dirname(__file__), "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = ["M3PO", "M3POPolicy", "__version__"]
