"""
Speed of M3PO: the planner alone, training, and a one-invocation check of a device.

``planner``: ``policy.act`` on random cartpole-sized observations per preset, planner budget and n_envs:
planned actions/s, and matmul FLOPs (``FlopCounterMode``; they depend on the shapes only) over the time.
``train``: each algorithm trains on one env; after a warm-up the wall-clock is split by wrapping the methods
doing the work: ``env`` (``VecEnv.step``), ``act`` (planner / policy forward / ``predict``), ``update``, ``other``.
``device``: ``tests/test_device.py --device`` first, then planner rows of three presets (eager and compiled)
and M3PO training rows at several n_envs (``--dry-run``: tiny sizes, to check the script on a CPU).
Each mode writes ``<out>/<mode>_<label>.json`` and ``.md``. Usage::

    python benchmarks/speed.py planner --presets cpu 5M --planners cpu paper --n-envs 1 8 64 256 1024
    python benchmarks/speed.py train --env dm_control/cartpole-swingup-v0 --algos m3po sac ppo --steps 2048
    python benchmarks/speed.py device --device cuda
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch as th
from runner import BENCH_DIR, REPO_ROOT
from runner.runs import code_version, device_description, machine_description, write_atomic
from torch.utils.flop_counter import FlopCounterMode

from sb3_m3po.m3po.config import PlannerConfig
from sb3_m3po.m3po.policies import M3POPolicy

# "cpu": M3PO's defaults; "paper": TD-MPC2's MPPI (512 samples, 64 elites, 24 prior trajectories, 6 iterations)
PLANNERS = {
    "cpu": PlannerConfig(),
    "paper": PlannerConfig(num_samples=512, num_elites=64, num_prior_trajectories=24, iterations=6),
}
OBS_DIM, ACT_DIM = 5, 1  # cartpole-swingup's


def seconds_per_call(fn: Callable[[], Any], device: str, min_seconds: float) -> float:
    """Mean wall-clock of ``fn`` after three warm-up calls, over at least ``min_seconds`` (CUDA synchronised)."""
    sync = th.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
        if calls % 5 == 0:
            sync()
    sync()
    return (time.perf_counter() - start) / calls


def planner_row(preset: str, planner: str, n_envs: int, args: argparse.Namespace) -> dict[str, Any]:
    th.manual_seed(0)
    spaces = (gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32))

    def make(compiled: bool) -> M3POPolicy:
        made = M3POPolicy(*spaces, lambda _: 3e-4, model_size=preset, planner=PLANNERS[planner], torch_compile=compiled)
        return made.to(args.device).eval()

    timed = make(args.compile)
    eager = make(False) if args.compile else timed  # the FLOP counter sees no ops inside compiled graphs
    obs, plan = th.randn(n_envs, OBS_DIM, device=args.device), timed.initial_plan(n_envs)
    with th.inference_mode(), FlopCounterMode(display=False) as counter:
        eager.act(obs, plan)

    def act() -> None:
        with th.inference_mode():
            timed.act(obs, plan)

    seconds, flops = seconds_per_call(act, args.device, args.min_seconds), counter.get_total_flops()
    return {
        "preset": preset, "planner": planner, "compiled": args.compile, "n_envs": n_envs,
        "ms_per_call": 1e3 * seconds, "planned_actions_per_s": n_envs / seconds,
        "gflop_per_call": flops / 1e9, "achieved_gflop_per_s": flops / seconds / 1e9,
    }  # fmt: skip


class Stopwatch:
    """Wall-clock seconds per named bucket of wrapped methods (a nested call counts in the outer bucket only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.busy = False

    def wrap(self, obj: object, method: str, bucket: str) -> None:
        original = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.busy:
                return original(*args, **kwargs)
            self.busy, start = True, time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.busy = False
                self.seconds[bucket] = self.seconds.get(bucket, 0.0) + time.perf_counter() - start

        setattr(obj, method, timed)


def train_row(algo: str, args: argparse.Namespace) -> dict[str, Any]:
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_m3po import M3PO
    from sb3_m3po.envs import make_env

    n_envs = args.n_envs if algo == "m3po" else 1  # SB3's defaults: one env
    env = make_vec_env(lambda: make_env(args.env), n_envs=n_envs, seed=0)
    kwargs: dict[str, Any] = {}
    if algo == "m3po":
        kwargs = {"policy_kwargs": {"model_size": args.preset, "torch_compile": args.compile}}
        kwargs.update({"n_steps": args.n_steps} if args.n_steps else {})
    model = {"m3po": M3PO, "ppo": PPO, "sac": SAC}[algo]("MlpPolicy", env, seed=0, device=args.device, **kwargs)
    watch = Stopwatch()
    watch.wrap(env, "step", "env")
    watch.wrap(model, "train", "update")
    watch.wrap(model.policy, "act" if algo == "m3po" else "forward", "act")
    if algo == "sac":
        watch.wrap(model, "predict", "act")
    marks: list[tuple[int, float, dict[str, float]]] = []

    class Mark(BaseCallback):
        def _on_rollout_start(self) -> None:
            if not marks and self.num_timesteps >= args.warmup:
                marks.append((self.num_timesteps, time.perf_counter(), dict(watch.seconds)))

        def _on_step(self) -> bool:
            return True

    per_rollout = getattr(model, "n_steps", 1) * model.n_envs  # on-policy algorithms end on a rollout boundary
    model.learn((-(-args.warmup // per_rollout) + -(-args.steps // per_rollout)) * per_rollout, callback=Mark())
    steps, start, before = marks[0]
    steps, wall = model.num_timesteps - steps, time.perf_counter() - start
    split = {k: v - before.get(k, 0.0) for k, v in watch.seconds.items()}
    split["other"] = wall - sum(split.values())
    return {
        "env": args.env, "algo": algo, "n_envs": n_envs, "measured_env_steps": steps, "env_steps_per_s": steps / wall,
        **{f"s_per_1k_steps_{k}": 1e3 * split.get(k, 0.0) / steps for k in ("env", "act", "update", "other")},
    }  # fmt: skip


def device_checks(device: str) -> dict[str, Any]:
    """``tests/test_device.py`` on ``device``: learn/predict, no host sync in the planner, save/load, first losses."""
    tests = os.path.join(REPO_ROOT, "tests", "test_device.py")
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", tests, "--device", device]
    result = subprocess.run(command, capture_output=True, text=True)
    outcome = (result.stdout.strip().splitlines() or [result.stderr.strip()[-300:]])[-1]
    return {"command": f"pytest tests/test_device.py --device {device}", "passed": result.returncode == 0, "outcome": outcome}


def device_sections(args: argparse.Namespace) -> dict[str, Any]:
    """The ``device`` mode: checks (first: they stop the run), planner rows (eager and compiled), training rows."""
    checks = device_checks(args.device)
    if not checks["passed"]:
        raise SystemExit(f"speed.py: the device checks failed: {checks['outcome']} ({checks['command']})")
    dry, planner, train = args.dry_run, [], []
    n_envs = [1, 8] if dry else [1, 8, 64, 256, 1024]
    # compiled at the largest n_envs only: each batch shape compiles anew (tens of seconds each)
    for compiled in [False] if dry else [False, True]:
        run = argparse.Namespace(**{**vars(args), "compile": compiled, "min_seconds": 0.2 if dry else 1.0})
        for preset in ["cpu"] if dry else ["cpu", "1M", "5M"]:
            planner += [planner_row(preset, q, n, run) for q in PLANNERS for n in (n_envs[-1:] if compiled else n_envs)]
    for env_id in ["Pendulum-v1", "dm_control/cartpole-swingup-v0"]:
        for n in [8] if dry else [8, 64, 256]:
            # rollouts of about 2k transitions whatever n_envs (the package's n_steps=64 at 256 envs would be 16k)
            sizes = {"n_envs": n, "n_steps": max(2048 // n, 1) if n > 8 else 64, "env": env_id, "compile": False}
            sizes.update({"steps": 128, "warmup": 64} if dry else {"steps": 4096, "warmup": 1024})
            train.append(train_row("m3po", argparse.Namespace(**{**vars(args), **sizes})))
    return {"Checks": checks, "Planner": planner, "Training": train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("mode", choices=["planner", "train", "device"])
    add("--device", default="cuda" if th.cuda.is_available() else "cpu")
    add("--threads", type=int, default=os.cpu_count() or 1)
    add("--compile", action="store_true", help="torch.compile the planner rollouts / world-model loss")
    add("--label", default="", help="names the output files (default: the device)")
    add("--out", help="output folder (default: results/throughput; device mode: results/gpu)")
    add("--presets", nargs="+", default=["cpu", "5M"], help="planner: model presets")
    add("--planners", nargs="+", choices=list(PLANNERS), default=["cpu", "paper"])
    add("--n-envs", nargs="+", type=int, default=[1, 8, 64, 256, 1024])
    add("--min-seconds", type=float, default=1.0, help="planner: time each row at least this long")
    add("--env", default="dm_control/cartpole-swingup-v0", help="train: env id")
    add("--algos", nargs="+", choices=["m3po", "ppo", "sac"], default=["m3po", "sac", "ppo"])
    add("--preset", default="cpu", help="train: M3PO's model preset")
    add("--steps", type=int, default=2048, help="train: env steps measured after the warm-up")
    add("--n-steps", type=int, default=None, help="train: M3PO's n_steps (default: the package's)")
    add("--warmup", type=int, default=1024, help="train: env steps before the measurement")
    add("--dry-run", action="store_true", help="device: tiny sizes (checks the script, measures nothing)")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    started = time.time()
    if args.mode == "planner":
        sections: dict[str, Any] = {
            "rows": [planner_row(p, q, n, args) for p in args.presets for q in args.planners for n in args.n_envs]
        }
    elif args.mode == "train":
        args.n_envs = args.n_envs[0] if len(args.n_envs) == 1 else 8  # M3PO's shipped 8 envs unless one is given
        sections = {"rows": [train_row(algo, args) for algo in args.algos]}
    else:
        sections = device_sections(args)
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    driver = subprocess.run(query, capture_output=True, text=True).stdout.strip() if shutil.which(query[0]) else "none"
    header = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(), "device": f"{device_description(args.device)}, driver {driver}",
        "torch": f"{th.__version__} (CUDA {th.version.cuda})", "threads": args.threads, "commit": code_version(),
        "wall_seconds": round(time.time() - started, 1),
    }  # fmt: skip
    out = args.out or os.path.join(BENCH_DIR, "results", "gpu" if args.mode == "device" else "throughput")
    path = os.path.join(out, f"{args.mode}_{args.label or args.device.split(':')[0]}")
    write_atomic(path + ".json", json.dumps({**header, **sections}, indent=1) + "\n")
    dry = " (dry run: tiny sizes, nothing measured here means anything)" if args.dry_run else ""
    lines = [f"# Speed: {args.mode}{dry}"]
    lines += ["", *[f"* {k}: {v}" for k, v in header.items()]]
    for title, content in sections.items():
        lines += ["", *([] if title == "rows" else [f"## {title}", ""])]
        lines += (
            [f"* {k}: {v}" for k, v in content.items()]
            if isinstance(content, dict)
            else [pd.DataFrame(content).to_markdown(index=False, floatfmt=".4g")]
        )
    write_atomic(path + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
