"""
Benchmark suites: tasks x algorithms x seeds, each run trained through ``python -m sb3_m3po.zoo.train``.

Usage::

    python benchmarks/suite.py dmc                     # run what is missing, then summarize
    python benchmarks/suite.py dmc --workers 2 --only-algos m3po sac --only-tasks cartpole-swingup --seeds 0
    python benchmarks/suite.py dmc --ray-address auto  # on a Ray cluster (pip install -e ".[ray]")
    python benchmarks/suite.py dmc --summarize         # rewrite the summary from the committed records
    python benchmarks/suite.py path/to/my_suite.yml

Suite files are described in ``suites/README.md``; each run's folder, segments and record in ``runner/runs.py``;
executors in ``runner/executor.py``; the summary in ``runner/report.py``. A finished run leaves
``benchmarks/results/<suite>/raw/<task>/<algorithm>_seed<S>.{json,csv}`` and is skipped next time; a run
without a record continues from its latest checkpoint. A record made with another configuration than the
suite file now gives is never overwritten: the runner stops and names it.
"""

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from runner import BENCH_DIR
from runner.executor import execute
from runner.report import summarize
from runner.runs import Layout, shown_path
from runner.spec import SuiteError, check_suite_environment, current_spec, load_suite, select_runs


@contextmanager
def suite_lock(runs_folder: str) -> Iterator[None]:
    """An exclusive lock on a suite's runs folder, so that two runners never restart each other's runs."""
    os.makedirs(runs_folder, exist_ok=True)
    with open(os.path.join(runs_folder, ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SuiteError(f"another runner is working on {shown_path(runs_folder)}; wait for it to finish") from None
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/suite.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", help="suite name (benchmarks/suites/<name>.yml) or path to a suite yml")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local runs at a time (default: cores)")
    parser.add_argument("--ray-address", help="run on this Ray cluster (e.g. auto, host:6379) instead of locally")
    parser.add_argument("--only-algos", nargs="+", metavar="NAME", help="run only these algorithms of the suite")
    parser.add_argument("--only-tasks", nargs="+", metavar="NAME", help="run only these tasks of the suite")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S", help="run these seeds instead of the suite's")
    parser.add_argument("--summarize", action="store_true", help="only write the summary of the finished runs")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run (default 1)")
    parser.add_argument("--device", default="auto", help="torch device of the runs (rl-zoo3 --device)")
    parser.add_argument("--status-every", type=float, default=300.0, metavar="S", help="seconds between progress lines")
    parser.add_argument("--results-dir", help="results folder (default benchmarks/results/<suite>)")
    parser.add_argument("--runs-dir", help="folder of the rl-zoo3 runs (default benchmarks/runs/<suite>)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo, for the env checks here and in the runs
    failed: list[str] = []
    try:
        if args.workers < 1 or args.threads < 1:
            raise SuiteError("--workers and --threads must be >= 1")
        suite = load_suite(args.suite)
        layout = Layout(
            os.path.abspath(args.results_dir or os.path.join(BENCH_DIR, "results", suite.name)),
            os.path.abspath(args.runs_dir or os.path.join(BENCH_DIR, "runs", suite.name)),
        )
        if not args.summarize:
            check_suite_environment(suite)
            with suite_lock(layout.runs):
                runs = select_runs(suite, args.only_tasks, args.only_algos, args.seeds)
                todo = [run for run in runs if not os.path.exists(layout.record_path(run))]
                for run in (run for run in runs if run not in todo):
                    with open(layout.record_path(run)) as f:
                        if current_spec(json.load(f)["spec"]) != run.spec():
                            raise SuiteError(
                                f"{run.label} has a finished record ({shown_path(layout.record_path(run))}) made with another "
                                "configuration than the suite file now gives; delete it and its .csv to run it again"
                            )
                print(
                    f"suite {suite.name}: {len(runs)} selected runs, {len(runs) - len(todo)} finished, {len(todo)} to run",
                    flush=True,
                )
                if todo:
                    say = lambda line: print(line, flush=True)  # noqa: E731
                    options = (args.workers, args.threads, args.device, args.ray_address, args.status_every, say)
                    failed = execute(suite.name, layout, todo, *options)
        summarize(suite, layout)
        print(f"summary: {shown_path(os.path.join(layout.results, 'summary.md'))}")
    except SuiteError as e:
        print(f"benchmarks/suite.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if failed:
        print(f"{len(failed)} run(s) failed (they restart from scratch next time):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
