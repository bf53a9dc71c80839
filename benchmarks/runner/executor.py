"""
Handing a suite's runs to an executor: a local pool (default) or a Ray cluster (``--ray-address``).

Locally, ``workers`` runs train at a time, each a training process of its own supervised by a thread of a
``ThreadPoolExecutor`` (the work is in the processes; the threads only wait on them and can stop them).
On Ray each run is a task needing ``threads`` CPUs: Ray places it on any node and, when a node dies, runs
it again elsewhere (``max_retries``), where it continues from its checkpoint if the run folders are on a
filesystem every node sees (otherwise it starts over). Every node needs the repository at the same path
and sb3-m3po installed. In both cases only the runner writes records, as each run comes back.
"""

import concurrent.futures as cf
import glob
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.runs import Layout, RunFailed, read_segments, resume_point, train_run, write_result
from runner.spec import Run

Report = Callable[[str], None]


def _progress(run: Run, layout: Layout) -> str:
    """Where an active run is: the step of its latest evaluation (readable where the run folders are shared)."""
    found = glob.glob(os.path.join(layout.run_folder(run), "seg*", "**", "evaluations.npz"), recursive=True)
    steps = 0
    for path in found:
        try:
            steps = max(steps, int(np.load(path)["timesteps"][-1]) * run.task.action_repeat)
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return f"running {run.label}: evaluated at {steps}/{run.task.sim_steps} sim steps"


def _interruptible() -> dict[int, Any]:
    """SIGTERM/SIGHUP stop the runner like Ctrl-C (a background runner's machine going away)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    handled = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
    return {signum: signal.signal(signum, interrupt) for signum in handled}


def execute(
    suite: str,
    layout: Layout,
    runs: list[Run],
    workers: int,
    threads: int,
    device: str,
    ray_address: str | None = None,
    status_every: float = 300.0,
    say: Report = print,
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
    job = _Job(suite, layout, threads, device, status_every, say)
    for run in runs:
        if read_segments(layout.run_folder(run), run.spec()):
            point = resume_point(layout.run_folder(run), run.task.decisions)
            if point:
                say(f"resuming {run.label} from its checkpoint at {point[0] * run.task.action_repeat} sim steps")
    previous = _interruptible()
    try:
        if ray_address:
            _on_ray(job, runs, ray_address)
        else:
            _on_pool(job, runs, workers)
    except KeyboardInterrupt:
        say("interrupted: unfinished runs stopped; next time they continue from their last checkpoint")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return job.failed


@dataclass
class _Job:
    """What every run of one invocation shares, and the failures collected so far."""

    suite: str
    layout: Layout
    threads: int
    device: str
    status_every: float
    say: Report
    failed: list[str] = field(default_factory=list)

    def done(self, run: Run, result: Callable[[], tuple[dict, Any]], failure: type[BaseException]) -> None:
        try:
            record, curve = result()
        except failure as e:
            cause = getattr(e, "cause", e)  # Ray wraps the task's exception
            self.failed.append(f"{run.label}: {cause if isinstance(cause, RunFailed) else e}")
            self.say(f"failed {self.failed[-1]}")
            return
        write_result(self.layout, run, record, curve)
        self.say(
            f"done {run.label}: score {record['final_score']:.4g} at {record['final_sim_steps']} sim steps, "
            f"{record['wall_seconds']:.0f} s, {record['sim_steps_per_second']:.1f} sim steps/s"
        )


def _on_pool(job: _Job, runs: list[Run], workers: int) -> None:
    stop, last = threading.Event(), time.monotonic()
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(train_run, run, job.layout, job.suite, job.threads, job.device, stop): run for run in runs}
        try:
            while futures:
                finished, _ = cf.wait(futures, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    job.done(futures.pop(future), future.result, RunFailed)
                if time.monotonic() - last >= job.status_every:
                    last = time.monotonic()
                    for future, run in futures.items():
                        if future.running():
                            job.say(_progress(run, job.layout))
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            stop.set()
            for future in futures:
                future.cancel()
            raise


def _on_ray(job: _Job, runs: list[Run], address: str) -> None:
    import ray

    bench_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": bench_dir}}, log_to_driver=False)
    job.say(f"ray cluster: {len(ray.nodes())} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs")
    remote = ray.remote(num_cpus=job.threads, max_retries=3)(train_run)
    pending = {remote.remote(run, job.layout, job.suite, job.threads, job.device): run for run in runs}
    last = time.monotonic()
    try:
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in finished:
                job.done(pending.pop(ref), lambda ref=ref: ray.get(ref), ray.exceptions.RayTaskError)
            if time.monotonic() - last >= job.status_every:
                last = time.monotonic()
                for run in pending.values():
                    job.say(_progress(run, job.layout))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)  # the training processes die with their workers
        raise
    finally:
        ray.shutdown()
