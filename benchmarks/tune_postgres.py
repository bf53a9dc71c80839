"""
Distributed tuning check: two rl-zoo3 tuning workers (separate processes) share one Optuna study on PostgreSQL.

By default a throwaway local PostgreSQL server is started (``LocalPostgres`` of the tests, ``tests/postgres.py``);
pass ``--storage postgresql://user:password@host:5432/db`` to use a real shared server (then run this
script, or the printed worker command, on each machine). Writes ``trials.csv`` and ``summary.md``
(trial table, commands, wall-clock) to ``--out``.

Usage::

    python benchmarks/tune_postgres.py --workers 2 --trials-per-worker 4 --timesteps 3000
"""

import argparse
import os
import platform
import subprocess
import sys
import time

import optuna

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from postgres import LocalPostgres  # the test helper that starts a throwaway server

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tuning")


def worker_command(args: argparse.Namespace, storage: str, worker: int) -> list[str]:
    return [
        sys.executable, "-m", "sb3_m3po.zoo.train", "--algo", "m3po", "--env", args.env, "-optimize",
        "--storage", storage, "--study-name", args.study_name, "--n-trials", str(args.trials_per_worker),
        "--sampler", "tpe", "--pruner", "median", "--n-startup-trials", "2", "-n", str(args.timesteps),
        "--n-evaluations", "2", "--eval-episodes", "3", "--seed", str(worker), "--no-optim-plots",
        "-f", os.path.join(args.log_dir, f"worker{worker}"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="PostgreSQL URL; default: start a local throwaway server")
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--timesteps", type=int, default=3000)
    parser.add_argument("--study-name", default="m3po-pendulum")
    parser.add_argument("--log-dir", default=os.path.join("logs", "tune_postgres"))
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()

    server = None
    storage = args.storage
    if storage is None:
        server = LocalPostgres()
        storage = server.start()
    try:
        optuna.create_study(study_name=args.study_name, storage=storage, direction="maximize", load_if_exists=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        commands = [worker_command(args, storage, i) for i in range(args.workers)]
        start = time.time()
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
        errors = [p.communicate()[1] for p in procs]
        wall = time.time() - start
        for proc, err in zip(procs, errors):
            if proc.returncode != 0:
                raise RuntimeError(f"a tuning worker failed ({proc.returncode}):\n{err[-3000:]}")
        study = optuna.load_study(study_name=args.study_name, storage=storage)
        table = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params"))
        best = study.best_trial  # read before a local server is stopped
    finally:
        if server is not None:
            server.stop()

    os.makedirs(args.out, exist_ok=True)
    table.to_csv(os.path.join(args.out, "trials.csv"), index=False)
    shown = table.copy()
    shown["duration"] = shown["duration"].dt.total_seconds().round(1)
    shown.columns = [c.replace("params_", "") for c in shown.columns]
    storage_note = "local throwaway PostgreSQL server" if args.storage is None else "the PostgreSQL server given"
    worker_line = (
        " ".join(c if " " not in c else repr(c) for c in commands[0])
        .replace(storage, "<storage>")
        .replace(args.log_dir, "<log-dir>")
    )
    lines = [
        "# Distributed tuning on PostgreSQL",
        "",
        f"Produced by `python benchmarks/tune_postgres.py --workers {args.workers} --trials-per-worker "
        f"{args.trials_per_worker} --timesteps {args.timesteps}` ({storage_note}; {args.workers} worker processes "
        f"sharing study `{args.study_name}`, TPE sampler, median pruner).",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Wall-clock: {wall:.0f} s for {len(table)} trials.",
        "",
        f"Worker command (worker i uses `--seed i` and its own log folder): `{worker_line.replace(sys.executable, 'python')}`",
        "",
        f"Best trial: #{best.number}, mean eval return {best.value:.1f}.",
        "",
        shown.to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
