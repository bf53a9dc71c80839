"""
One benchmark run: the rl-zoo3 training process, its resumable segments, and the record it leaves.

A run is the command a user would type, ``python -m sb3_m3po.zoo.train ...``, in its own folder
``<runs>/<task>/<algorithm>/seed<S>/``, saving a resumable checkpoint at every evaluation. Each start is a
*segment* with its own rl-zoo3 log folder (``seg1``, ``seg2``, ...), listed in ``segments.json`` (rewritten
while it runs, so that a killed segment's time still counts); a run cut off continues from its latest
checkpoint, and its curve takes every segment's evaluations up to the step a later segment resumed from.
"""

import ctypes
import dataclasses
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from runner import REPO_ROOT
from runner.spec import Run
from sb3_m3po.zoo.checkpoints import latest_checkpoint

CURVE_COLUMNS = ["sim_steps", "decisions", "score", "return_mean", "return_std", "success_rate", "episode_length"]


class RunFailed(Exception):
    """The training process of a run exited with an error, or stopped short of its budget."""


@dataclass(frozen=True)
class Layout:
    """Folders of one suite: committed results (``raw/`` records) and the gitignored rl-zoo3 run folders."""

    results: str
    runs: str

    def record_path(self, run: Run, suffix: str = ".json") -> str:
        return os.path.join(self.results, "raw", run.task.name, f"{run.algorithm.name}_seed{run.seed}{suffix}")

    def run_folder(self, run: Run) -> str:
        return os.path.join(self.runs, run.task.name, run.algorithm.name, f"seed{run.seed}")


@dataclass
class Segment:
    """One start of a run's training process; ``resumed_from`` in agent decisions (0: the first)."""

    resumed_from: int
    wall_seconds: float
    commit: str
    machine: str
    peak_rss_mib: float | None = None
    node: str | None = None  # the Ray node it ran on (None: the runner's machine)


def shown_path(path: str) -> str:
    """Path as written into results: relative to the repository when inside it (no machine-specific prefix)."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else os.path.basename(path)


def code_version() -> str:
    """Git short hash, ``+dirty`` if ``sb3_m3po/`` has uncommitted changes, ``unknown`` outside a checkout."""
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "sb3_m3po") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description() -> str:
    """Platform, CPU model and cores, Python and torch versions."""
    import torch as th

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    python = f"Python {platform.python_version()}, torch {th.__version__}"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, {python}"


def device_description(device: str) -> str:
    """The device a run with ``--device device`` trains on, with the GPU name."""
    import torch as th

    device = ("cuda" if th.cuda.is_available() else "cpu") if device == "auto" else device
    gpu = device.startswith("cuda") and th.cuda.is_available()
    return f"{device} ({th.cuda.get_device_name(th.device(device))})" if gpu else device


def zoo_command(
    run: Run, folder: str, threads: int, device: str, resume: tuple[int, str] | None = None, segment: int = 0
) -> list[str]:
    """rl-zoo3 training command of a run's ``segment`` (from 0), continuing from ``resume=(decisions, model.zip)``."""
    task, algorithm, eval_freq = run.task, run.algorithm, str(run.task.eval_every // run.task.action_repeat)
    command = ["-m", "sb3_m3po.zoo.train", "--algo", algorithm.algo, "--env", task.env, "--seed", str(run.seed)]
    command += ["-n", str(task.decisions - (resume[0] if resume else 0)), "-f", os.path.join(folder, f"seg{segment + 1}")]
    command += ["--eval-freq", eval_freq, "--checkpoint-freq", eval_freq, "--eval-episodes", str(task.eval_episodes)]
    command += ["--num-threads", str(threads), "--device", device, "-tb", os.path.join(folder, "tb")]
    command += ["-i", resume[1]] if resume else []
    command += ["--env-kwargs", *(f"{k}:{v!r}" for k, v in task.env_kwargs.items())] if task.env_kwargs else []
    command += ["-params", *(f"{k}:{v!r}" for k, v in algorithm.params.items())] if algorithm.params else []
    return command + list(task.extra_args) + list(algorithm.extra_args)


def read_segments(folder: str, spec: dict[str, Any]) -> list[Segment]:
    """Segments of the run in ``folder``; none when there is no file or it was written for another configuration."""
    try:
        with open(os.path.join(folder, "segments.json")) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return []
    return [Segment(**s) for s in raw.get("segments", [])] if raw.get("spec") == spec else []


def write_atomic(path: str, text: str) -> None:
    """Write a file so that a killed process leaves the old version, not half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_segments(folder: str, spec: dict[str, Any], segments: list[Segment]) -> None:
    text = json.dumps({"spec": spec, "segments": [dataclasses.asdict(s) for s in segments]}, indent=1) + "\n"
    write_atomic(os.path.join(folder, "segments.json"), text)


def _checkpoint_folders(folder: str) -> list[str]:
    return glob.glob(os.path.join(folder, "**", "checkpoints"), recursive=True)


def drop_checkpoints(folder: str) -> None:
    """Delete every segment's checkpoints (the largest files of a run; only a resume needs them)."""
    for path in _checkpoint_folders(folder):
        shutil.rmtree(path, ignore_errors=True)


def resume_point(folder: str, budget: int) -> tuple[int, str] | None:
    """Latest complete checkpoint of any segment short of ``budget`` decisions: ``(decisions, model.zip)``."""
    found = [p for p in map(latest_checkpoint, _checkpoint_folders(folder)) if p is not None and 0 < p[0] < budget]
    return max(found) if found else None


def segment_masks(decisions: list[np.ndarray | None], resumed_from: list[int]) -> list[np.ndarray | None]:
    """Per segment, the evaluations that make up the run: after its start, up to the earliest later resume."""
    if len(decisions) != len(resumed_from):
        raise ValueError(f"{len(decisions)} segments' evaluations for {len(resumed_from)} segments")
    ends = [min(resumed_from[i + 1 :], default=np.inf) for i in range(len(decisions))]
    return [
        None if s is None else (np.asarray(s) > start) & (np.asarray(s) <= end)
        for s, start, end in zip(decisions, resumed_from, ends)
    ]


def read_curve(npz_path: str, run: Run) -> pd.DataFrame:
    """A run's evaluations from rl-zoo3's ``evaluations.npz`` up to the budget (one row per evaluation)."""
    task, data = run.task, np.load(npz_path)
    decisions = np.asarray(data["timesteps"], dtype=np.int64)
    per_eval = lambda key: np.asarray(data[key], dtype=np.float64).reshape(len(decisions), -1)  # noqa: E731
    results, success = per_eval("results"), np.full(len(decisions), np.nan)
    if "successes" in data.files and np.size(data["successes"]) == results.size:
        success = per_eval("successes").mean(1)
    if task.score == "success" and np.isnan(success).any():
        raise RunFailed(f"{shown_path(npz_path)} holds no 'successes': does {task.env} report info['is_success']?")
    curve = pd.DataFrame(
        {"sim_steps": decisions * task.action_repeat, "decisions": decisions,
         "score": success if task.score == "success" else results.mean(1), "return_mean": results.mean(1),
         "return_std": results.std(1), "success_rate": success, "episode_length": per_eval("ep_lengths").mean(1)}
    )  # fmt: skip
    # PPO finishes its last rollout past the budget and may evaluate there: the final score is the one at the budget
    return curve[curve.decisions <= task.decisions]


def per_task_final(npz_path: str, run: Run) -> dict[str, float] | None:
    """Multi-task envs: each task's score at the last evaluation (``tasks``/``task_names`` of sb3-m3po's callback)."""
    data = np.load(npz_path)
    if "tasks" not in data.files or "task_names" not in data.files:
        return None
    decisions = np.asarray(data["timesteps"], dtype=np.int64)
    last = int(np.flatnonzero(decisions <= run.task.decisions)[-1])
    tasks = np.asarray(data["tasks"])[last]
    values = np.asarray(data["successes" if run.task.score == "success" else "results"], dtype=np.float64)
    values = values.reshape(len(decisions), -1)[last]
    return {str(data["task_names"][k]): float(values[tasks == k].mean()) for k in sorted(set(tasks.tolist()))}


def _peak_rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, ValueError, StopIteration):
        return None


def _shell_word(token: str) -> str:
    """A token as a shell reads it back: bare when safe, else in double quotes (params hold single quotes)."""
    if re.fullmatch(r"[\w@%+=:,./-]+", token):
        return token
    return f'"{token}"' if not re.search(r'["$`\\!]', token) else shlex.quote(token)


def _die_with_parent() -> None:
    """Linux: the training process is killed when the thread that started it dies (a Ray worker killed with its node)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen) -> None:
    """Stop a run's process group (the run may have started vec-env workers)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def train_run(
    run: Run, layout: Layout, suite: str, threads: int, device: str, stop: threading.Event | None = None
) -> tuple[dict, pd.DataFrame]:
    """
    Train a run to its budget (continuing from its latest checkpoint if it has one) and build its record.

    :param run: the run
    :param layout: its folders (the run folder must be reachable from the executing machine)
    :param suite: suite name, for the record
    :param threads: torch/OpenMP threads of the training process
    :param device: torch device (``auto``, ``cpu``, ``cuda``)
    :param stop: when set, the training process is stopped and ``KeyboardInterrupt`` raised (its checkpoints stay)
    :return: the record (``raw/<task>/<algorithm>_seed<S>.json``) and the curve (the ``.csv``)
    :raises RunFailed: the process failed or stopped short (its checkpoints are deleted: next time it starts over)
    """
    folder, spec = layout.run_folder(run), run.spec()
    earlier = read_segments(folder, spec)
    resume = resume_point(folder, run.task.decisions) if earlier else None
    if resume is None:  # left by a failed attempt or another configuration: start over
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        earlier = []
    ray = sys.modules.get("ray")
    node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
    segment = Segment(resume[0] if resume else 0, 0.0, code_version(), machine_description(), node=node)
    segments = [*earlier, segment]
    write_segments(folder, spec, segments)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_path, started, written = os.path.join(folder, "train.log"), time.monotonic(), 0.0
    with open(log_path, "ab" if resume else "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *zoo_command(run, folder, threads, device, resume, len(earlier))], cwd=REPO_ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            stop = stop or threading.Event()  # never set: a plain one-second wait
            while process.poll() is None:
                if stop.wait(1.0):
                    raise KeyboardInterrupt
                segment.peak_rss_mib = _peak_rss_mib(process.pid) or segment.peak_rss_mib
                segment.wall_seconds = round(time.monotonic() - started, 1)
                if time.monotonic() - written > 30:
                    written = time.monotonic()
                    write_segments(folder, spec, segments)
        finally:
            _stop(process)
            segment.wall_seconds = round(time.monotonic() - started, 1)
            write_segments(folder, spec, segments)
    try:
        if process.returncode != 0:
            with open(log_path, "rb") as f:
                lines = [line for line in f.read()[-4096:].decode(errors="replace").splitlines() if line.strip()]
            raise RunFailed(f"exit code {process.returncode}: {lines[-1].strip()[:300] if lines else 'empty log'}")
        return _finish(run, folder, suite, segments, threads, device)
    except RunFailed as e:
        drop_checkpoints(folder)
        raise RunFailed(f"{e} (log: {shown_path(log_path)})") from None


def _finish(
    run: Run, folder: str, suite: str, segments: list[Segment], threads: int, device: str
) -> tuple[dict, pd.DataFrame]:
    paths = []
    for i in range(len(segments)):  # None: the segment was cut off before its first evaluation
        found = glob.glob(os.path.join(folder, f"seg{i + 1}", "**", "evaluations.npz"), recursive=True)
        if len(found) > 1:
            raise RunFailed(f"segment {i + 1} of {shown_path(folder)} holds {len(found)} evaluations.npz")
        paths.append(found[0] if found else None)
    if paths[-1] is None:
        raise RunFailed(f"no evaluations.npz in the last segment under {shown_path(folder)}")
    pieces = [None if path is None else read_curve(path, run) for path in paths]
    masks = segment_masks([None if p is None else p.decisions.to_numpy() for p in pieces], [s.resumed_from for s in segments])
    curve = pd.concat([p[m] for p, m in zip(pieces, masks) if p is not None and m is not None], ignore_index=True)
    expected = run.task.sim_steps // run.task.eval_every
    if len(curve) < expected:
        raise RunFailed(f"only {len(curve)} of {expected} evaluations: the run stopped before its budget")
    wall = sum(s.wall_seconds for s in segments)
    peaks = [s.peak_rss_mib for s in segments if s.peak_rss_mib is not None]
    from_scratch = [
        "python",
        *(shown_path(a) if a.startswith(folder) else a for a in zoo_command(run, folder, threads, device)),
    ]
    record = {
        "suite": suite, "task": run.task.name, "algorithm": run.algorithm.name, "seed": run.seed, "spec": run.spec(),
        "final_score": float(curve.score.iloc[-1]), "best_score": float(curve.score.max()),
        "final_sim_steps": int(curve.sim_steps.iloc[-1]), "n_evaluations": len(curve), "wall_seconds": round(wall, 1),
        "sim_steps_per_second": round(run.task.sim_steps / wall, 2),
        "commit": ",".join(dict.fromkeys(s.commit for s in segments)),
        "machine": ",".join(dict.fromkeys(s.machine for s in segments)), "device": device_description(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(map(_shell_word, from_scratch)),
        "run_folder": shown_path(os.path.dirname(paths[-1])), "peak_rss_mib": round(max(peaks), 1) if peaks else None,
        "per_task_final": per_task_final(paths[-1], run),
        "resumed_at": [s.resumed_from * run.task.action_repeat for s in segments[1:]] or None,
        "nodes": sorted({s.node for s in segments if s.node}) or None,
    }  # fmt: skip
    drop_checkpoints(folder)
    return record, curve


def write_result(layout: Layout, run: Run, record: dict, curve: pd.DataFrame) -> None:
    """The run's curve CSV and record JSON under ``raw/`` (the curve first: a record always has its curve)."""
    table = curve[CURVE_COLUMNS].assign(task=run.task.name, algorithm=run.algorithm.name, seed=run.seed)
    write_atomic(
        layout.record_path(run, ".csv"),
        table[["task", "algorithm", "seed", *CURVE_COLUMNS]].to_csv(index=False, float_format="%.6g", lineterminator="\n"),
    )
    write_atomic(layout.record_path(run), json.dumps(record, indent=1) + "\n")
