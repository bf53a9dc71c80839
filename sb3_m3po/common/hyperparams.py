"""
The rl-zoo3 hyperparameter files shipped inside the package (``sb3_m3po/hyperparams/``) and the one lookup of
an env id's entry that the CLI, :func:`sb3_m3po.envs.make_env` and the benchmark runner share.

An id's entry is its own, else the first family entry whose pattern matches it (``dm_control/*``,
``metaworld/*``), else, for M3PO, the ``default`` entry. rl-zoo3 itself looks entries up by exact id only, so
an entry found by pattern or default is handed to it in a temporary yml under the id.
"""

import fnmatch
import os
from typing import Any

from sb3_m3po.common.utils import load_yaml


def hyperparams_dir() -> str:
    """Folder of the shipped rl-zoo3 yml files (package data, so installed wheels carry it)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hyperparams")


def shipped_entry(algo: str, env_id: str) -> tuple[str, dict[str, Any]] | None:
    """
    The name and value of the entry our ``hyperparams/<algo>.yml`` gives ``env_id``, or None where we ship none
    (rl-zoo3's own files then apply).
    """
    path = os.path.join(hyperparams_dir(), f"{algo}.yml")
    if not os.path.exists(path):
        return None
    table = load_yaml(path)
    if env_id in table:
        return env_id, table[env_id]
    for pattern, entry in table.items():
        if "*" in pattern and fnmatch.fnmatchcase(env_id, pattern):
            return pattern, entry
    return ("default", table["default"]) if algo == "m3po" and "default" in table else None


def shipped_params(algo: str, env_id: str) -> dict[str, Any] | None:
    """The value of :func:`shipped_entry` (None where we ship no entry)."""
    found = shipped_entry(algo, env_id)
    return found[1] if found else None


def entry_action_repeat(entry: dict[str, Any] | None) -> int:
    """The action repeat an entry's ``DMCWrapper`` applies (1 without one)."""
    repeat = 1
    wrappers = (entry or {}).get("env_wrapper") or []
    for wrapper in wrappers if isinstance(wrappers, list) else [wrappers]:
        name, kwargs = (wrapper, {}) if isinstance(wrapper, str) else next(iter(wrapper.items()))
        if name.endswith("DMCWrapper"):
            repeat *= int((kwargs or {}).get("action_repeat", 2))  # DMCWrapper's default
    return repeat
