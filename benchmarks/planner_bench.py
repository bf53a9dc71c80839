"""
Planner microbenchmark: planned actions per second and achieved FLOP/s vs batch size (n_envs) and preset.

"Useful" FLOPs are the matmul FLOPs of one ``policy.act`` call, counted from the layer sizes by
forward hooks on every ``nn.Linear`` and ``EnsembleLinear`` (2 * rows * in * out per call). The
reference is a plain ``x @ w`` on the planner's dominant shape (rows = n_envs * num_samples,
in = out = mlp_dim), timed in the same process. Writes ``planner_<device>.json`` and a markdown
table to ``--out``.

Usage::

    python benchmarks/planner_bench.py --presets cpu 5M --n-envs 1 4 16 64 256 1024 --device cpu
    python benchmarks/planner_bench.py --presets 1M 5M --planner paper --device cuda --tf32
"""

import argparse
import json
import os
import platform
import time

import gymnasium as gym
import numpy as np
import torch as th
from provenance import code_version  # same folder: the commit that produced the table
from torch import nn

from sb3_m3po.common.layers import EnsembleLinear
from sb3_m3po.m3po.config import PlannerConfig
from sb3_m3po.m3po.policies import M3POPolicy

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "throughput")


def shipped_planner() -> PlannerConfig:
    """The MPPI settings of M3PO's defaults."""
    return PlannerConfig()


# "cpu": M3PO's defaults; "paper": TD-MPC2's MPPI (512 samples, 64 elites, 24 prior trajectories, 6 iterations)
PLANNERS = {
    "cpu": shipped_planner(),
    "paper": PlannerConfig(horizon=3, num_samples=512, num_elites=64, num_prior_trajectories=24, iterations=6),
}


def make_policy(
    preset: str, obs_dim: int, act_dim: int, device: str, planner: PlannerConfig, torch_compile: bool = False
) -> M3POPolicy:
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
    policy = M3POPolicy(obs_space, act_space, lambda _: 3e-4, model_size=preset, planner=planner, torch_compile=torch_compile)
    return policy.to(device).eval()


def count_matmul_flops(policy: M3POPolicy, obs: th.Tensor, plan: th.Tensor) -> int:
    """Matmul FLOPs of one act() call, from the shapes seen by the linear layers."""
    total = 0

    def linear_hook(module: nn.Module, args: tuple, output: th.Tensor) -> None:
        nonlocal total
        rows = output.numel() // output.shape[-1]
        in_dim = module.in_features if isinstance(module, nn.Linear) else module.weight.shape[1]
        total += 2 * rows * in_dim * output.shape[-1]

    handles = [m.register_forward_hook(linear_hook) for m in policy.modules() if isinstance(m, (nn.Linear, EnsembleLinear))]
    try:
        with th.inference_mode():
            policy.act(obs, plan)
    finally:
        for h in handles:
            h.remove()
    return total


def timed(fn, device: str, min_seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds per call (after warm-up), averaged over at least ``min_seconds``."""
    sync = th.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if calls % 5 == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return elapsed / calls


def bench(preset: str, n_envs: int, args: argparse.Namespace, planner: PlannerConfig) -> dict:
    th.manual_seed(0)
    policy = make_policy(preset, args.obs_dim, args.act_dim, args.device, planner, args.compile)
    obs = th.randn(n_envs, args.obs_dim, device=args.device)
    plan = policy.initial_plan(n_envs)
    # forward hooks do not fire inside compiled graphs: count on an eager twin (FLOPs depend on shapes only)
    counted = make_policy(preset, args.obs_dim, args.act_dim, args.device, planner) if args.compile else policy
    flops = count_matmul_flops(counted, obs, plan)

    def act() -> None:
        with th.inference_mode():
            policy.act(obs, plan)

    seconds = timed(act, args.device, args.min_seconds)
    width = policy.world_model.dynamics[0].out_features
    x = th.randn(n_envs * planner.num_samples, width, device=args.device)
    w = th.randn(width, width, device=args.device)

    def matmul() -> None:
        with th.inference_mode():
            x @ w

    mm_seconds = timed(matmul, args.device, args.min_seconds / 2)
    mm_flops = 2 * x.shape[0] * width * width / mm_seconds
    return {
        "preset": preset,
        "n_envs": n_envs,
        "ms_per_call": 1e3 * seconds,
        "actions_per_s": n_envs / seconds,
        "matmul_gflop_per_call": flops / 1e9,
        "planner_gflops": flops / seconds / 1e9,
        "reference_matmul_shape": [x.shape[0], width, width],
        "reference_matmul_gflops": mm_flops / 1e9,
        "efficiency": flops / seconds / mm_flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["cpu", "5M"])
    parser.add_argument("--n-envs", nargs="+", type=int, default=[1, 4, 16, 64, 256, 1024])
    parser.add_argument("--device", default="cuda" if th.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--obs-dim", type=int, default=5, help="5, 1: cartpole-swingup")
    parser.add_argument("--act-dim", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds-per-call", type=float, default=2.0, help="skip larger batches beyond this")
    parser.add_argument("--planner", choices=list(PLANNERS), default="cpu", help="MPPI population and iterations")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (policy torch_compile=True)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    if args.tf32:
        th.backends.cuda.matmul.allow_tf32 = True
    planner = PLANNERS[args.planner]

    rows = []
    for preset in args.presets:
        for n_envs in sorted(args.n_envs):
            row = bench(preset, n_envs, args, planner)
            rows.append(row)
            print(
                f"{preset:>4} n_envs={n_envs:5d}: {row['ms_per_call']:8.2f} ms/call, {row['actions_per_s']:9.1f} actions/s, "
                f"planner {row['planner_gflops']:7.1f} GFLOP/s vs matmul {row['reference_matmul_gflops']:7.1f} "
                f"({100 * row['efficiency']:.0f} %)",
                flush=True,
            )
            if row["ms_per_call"] / 1e3 > args.max_seconds_per_call:
                break
    if args.device.startswith("cuda"):
        name = th.cuda.get_device_name().replace(" ", "_") + ("_tf32" if args.tf32 else "")
    else:
        name = f"cpu{args.threads}t"
    name += f"_{args.planner}" + ("_compile" if args.compile else "")
    machine = {
        "device": args.device if not args.device.startswith("cuda") else th.cuda.get_device_name(),
        "cpu": f"{platform.machine()} {os.cpu_count()} cores",
        "threads": args.threads,
        "tf32": args.tf32,
        "compile": args.compile,
        "torch": th.__version__,
        "planner": planner.__dict__,
        "commit": code_version(),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"planner_{name}.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=1)
    options = (", TF32" if args.tf32 else "") + (", torch.compile" if args.compile else "")
    flags = (" --tf32" if args.tf32 else "") + (" --compile" if args.compile else "")
    lines = [
        f"Planner on {machine['device']} ({machine['cpu']}, {args.threads} threads, torch {th.__version__}"
        f"{options}, commit {machine['commit']}); `{args.planner}` planner: H={planner.horizon}, "
        f"{planner.num_samples} samples ({planner.num_prior_trajectories} from the prior) x {planner.iterations} "
        f"iterations. Command: `python benchmarks/planner_bench.py --presets {' '.join(args.presets)} --planner "
        f"{args.planner} --n-envs {' '.join(map(str, args.n_envs))} --device {args.device} --threads {args.threads}{flags}`.",
        "",
        "| preset | n_envs | ms / call | actions/s | planner GFLOP/s | matmul GFLOP/s (same shape) | efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['preset']} | {r['n_envs']} | {r['ms_per_call']:.2f} | {r['actions_per_s']:.0f} | {r['planner_gflops']:.1f} | "
        f"{r['reference_matmul_gflops']:.1f} | {100 * r['efficiency']:.0f} % |"
        for r in rows
    ]
    with open(os.path.join(args.out, f"planner_{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
