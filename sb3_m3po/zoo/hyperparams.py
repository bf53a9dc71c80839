"""The rl-zoo3 hyperparameter files shipped inside the package (``sb3_m3po/hyperparams/``)."""

import os
import tempfile

import yaml


def hyperparams_dir() -> str:
    """Folder of the shipped rl-zoo3 yml files (package data, so installed wheels carry it)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hyperparams")


def shipped_config(algo: str, env_id: str) -> str | None:
    """
    Path of a yml holding our hyperparameters for ``(algo, env_id)``, or None if we ship none.

    For M3PO an env id without its own entry gets the ``default`` entry (written to a
    temporary yml, since rl-zoo3 looks hyperparameters up by env id).
    """
    path = os.path.join(hyperparams_dir(), f"{algo}.yml")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        table = yaml.safe_load(f)
    if env_id in table:
        return path
    if algo != "m3po":
        return None
    handle, tmp_path = tempfile.mkstemp(prefix=f"m3po-{env_id.replace('/', '_')}-", suffix=".yml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump({env_id: table["default"]}, f)
    return tmp_path
