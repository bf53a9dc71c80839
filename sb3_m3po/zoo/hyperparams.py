"""rl-zoo3's view of the shipped hyperparameter files: a yml it can read for an env id (:mod:`sb3_m3po.common.hyperparams`)."""

import os
import tempfile

import yaml

from sb3_m3po.common.hyperparams import hyperparams_dir, shipped_entry


def shipped_config(algo: str, env_id: str) -> tuple[str, bool] | None:
    """
    A yml holding our hyperparameters for ``(algo, env_id)`` under the id, or None if we ship none.

    :return: its path, and whether it is a temporary file (an entry found by pattern or default) that the
        caller deletes
    """
    found = shipped_entry(algo, env_id)
    if found is None:
        return None
    name, entry = found
    if name == env_id:
        return os.path.join(hyperparams_dir(), f"{algo}.yml"), False
    print(f"sb3-m3po: hyperparams/{algo}.yml has no entry for {env_id}; using its '{name}' entry")
    handle, tmp_path = tempfile.mkstemp(prefix=f"{algo}-{env_id.replace('/', '_')}-", suffix=".yml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump({env_id: entry}, f)
    return tmp_path, True
