"""Which code produced a benchmark record: shared by the benchmark scripts of this folder."""

import os
import subprocess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_version() -> str:
    """
    Git short hash of the repository, with ``+dirty`` if ``sb3_m3po/`` or ``hyperparams/`` has
    uncommitted changes (a record made from such a tree cannot be reproduced from a commit).

    :return: e.g. ``"957d02f"``, ``"957d02f+dirty"``, or ``"unknown"`` outside a git checkout
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "sb3_m3po", "hyperparams")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
