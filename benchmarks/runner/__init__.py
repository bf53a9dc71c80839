"""The benchmark suite runner: suite files, runs, executors and reports (CLI: ``benchmarks/suite.py``)."""

import os
import sys

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(BENCH_DIR)
# The runner checks suites with this checkout's package, as its training processes (started in the checkout)
# train with it: an editable install of another checkout (a git worktree's main) must not answer instead.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
