"""
Handing a suite's runs to an executor: a local pool (default) or a Ray cluster (``--ray-address``).

Locally, ``workers`` runs train at a time, each a process of its own watched by a thread of a
``ThreadPoolExecutor``. On Ray each run is a task needing ``threads`` CPUs on any node; when a node dies Ray
runs it again elsewhere (``max_retries``), from its checkpoint if the run folders are on a filesystem every
node sees. Every node needs the repository at the same path and sb3-m3po installed. Either way only the
runner writes records, as each run comes back.
"""

import concurrent.futures as cf
import glob
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from runner import BENCH_DIR
from runner.runs import Layout, RunFailed, read_segments, resume_point, train_run, write_result
from runner.spec import Run


def _progress(run: Run, layout: Layout) -> str:
    """Where an active run is: the step of its latest evaluation (readable where the run folders are shared)."""
    steps = 0
    for path in glob.glob(os.path.join(layout.run_folder(run), "seg*", "**", "evaluations.npz"), recursive=True):
        try:
            steps = max(steps, int(np.load(path)["timesteps"][-1]) * run.task.action_repeat)
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return f"running {run.label}: evaluated at {steps}/{run.task.sim_steps} sim steps"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def execute(
    suite: str,
    layout: Layout,
    runs: list[Run],
    workers: int,
    threads: int,
    device: str,
    ray_address: str | None = None,
    status_every: float = 300.0,
    say: Callable[[str], None] = print,
) -> list[str]:
    """
    Train the runs and write each finished one's record.

    :param suite: suite name (for the records)
    :param layout: results and run folders
    :param runs: runs without a record
    :param workers: runs at a time (local pool only; Ray schedules by CPUs)
    :param threads: torch/OpenMP threads (and Ray CPUs) per run
    :param device: torch device of the runs
    :param ray_address: address of a Ray cluster (``auto``, ``host:6379``); None: local pool
    :param status_every: seconds between progress lines
    :param say: where progress lines go
    :return: the failed runs, each with its reason
    """
    for run in runs:
        point = read_segments(layout.run_folder(run), run.spec()) and resume_point(layout.run_folder(run), run.task.decisions)
        if point:
            say(f"resuming {run.label} from its checkpoint at {point[0] * run.task.action_repeat} sim steps")
    stop, failed, last = threading.Event(), [], time.monotonic()
    if ray_address:
        import ray

        ray.init(address=ray_address, runtime_env={"env_vars": {"PYTHONPATH": BENCH_DIR}}, log_to_driver=False)
        say(f"ray cluster: {len(ray.nodes())} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs")
        remote = ray.remote(num_cpus=threads, max_retries=3)(train_run)
        pending: dict[Any, Run] = {remote.remote(run, layout, suite, threads, device): run for run in runs}
        wait = lambda handles: ray.wait(handles, num_returns=1, timeout=1.0)[0]  # noqa: E731
        result, failure, active = ray.get, ray.exceptions.RayTaskError, lambda handle: True
        cancel, close = lambda ref: ray.cancel(ref, force=True), ray.shutdown  # the processes die with their workers
    else:
        pool = cf.ThreadPoolExecutor(max_workers=workers)
        pending = {pool.submit(train_run, run, layout, suite, threads, device, stop): run for run in runs}
        wait = lambda handles: cf.wait(handles, timeout=1.0, return_when=cf.FIRST_COMPLETED)[0]  # noqa: E731
        result, failure, active = cf.Future.result, RunFailed, cf.Future.running
        cancel, close = cf.Future.cancel, pool.shutdown
    # SIGTERM/SIGHUP stop the runner like Ctrl-C (a background runner's machine going away)
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while pending:
            for handle in wait(list(pending)):
                run = pending.pop(handle)
                try:
                    record, curve = result(handle)
                except failure as e:
                    cause = getattr(e, "cause", e)  # Ray wraps the task's exception
                    failed.append(f"{run.label}: {cause if isinstance(cause, RunFailed) else e}")
                    say(f"failed {failed[-1]}")
                    continue
                write_result(layout, run, record, curve)
                say(
                    f"done {run.label}: score {record['final_score']:.4g} at {record['final_sim_steps']} sim steps, "
                    f"{record['wall_seconds']:.0f} s, {record['sim_steps_per_second']:.1f} sim steps/s"
                )
            if time.monotonic() - last >= status_every:
                last = time.monotonic()
                for handle in filter(active, list(pending)):
                    say(_progress(pending[handle], layout))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stop.set()
        for handle in pending:
            cancel(handle)
        say("interrupted: unfinished runs stopped; next time they continue from their last checkpoint")
        raise
    finally:
        close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return failed
