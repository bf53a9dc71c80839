"""Which code produced a benchmark record: shared by the benchmark scripts of this folder."""

import os
import platform
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """Platform, CPU model and cores, Python and torch versions."""
    import torch as th

    return (
        f"{platform.system()} {platform.machine()}, {_cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {th.__version__}"
    )
