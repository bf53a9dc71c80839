"""
Operator-level profile of M3PO's two hot paths on cartpole-swingup: acting (MPPI planning) and
world-model gradient steps, with ``torch.profiler`` (CPU).

The model first trains briefly (so the replay buffer is past ``learning_starts``), then
``--calls`` planner calls and ``--calls`` world-model steps are profiled. Writes
``profile_<label>.md`` (wall-clock per call and the top operators by self CPU time) to ``--out``.

Usage::

    python benchmarks/profile_m3po.py --label before --threads 1
"""

import argparse
import dataclasses
import os
import platform
import time

import torch as th
from provenance import code_version  # same folder: the commit that produced the profile
from stable_baselines3.common.env_util import make_vec_env
from torch.profiler import ProfilerActivity, profile

from sb3_m3po import M3PO
from sb3_m3po.envs import make_env
from sb3_m3po.m3po.planner import shift_plan

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "throughput")


def top_ops(prof: profile, calls: int, rows: int) -> list[str]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    lines = ["| operator | calls / step | self CPU ms / step | share |", "|---|---|---|---|"]
    for e in events:
        lines.append(
            f"| `{e.key}` | {e.count / calls:.0f} | {e.self_cpu_time_total / 1e3 / calls:.3f} | "
            f"{100 * e.self_cpu_time_total / total:.1f} % |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="current")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--n-envs", type=int, default=8, help="envs planned in one batch (8: the shipped configuration)")
    parser.add_argument("--compile", action="store_true", help="policy torch_compile=True (compiled rollouts and loss)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    th.set_num_threads(args.threads)

    env = make_vec_env(lambda: make_env("dm_control/cartpole-swingup-v0", action_repeat=2), n_envs=args.n_envs, seed=0)
    policy_kwargs = {"torch_compile": True} if args.compile else None
    model = M3PO("MlpPolicy", env, seed=0, world_model_kwargs={"gradient_steps": 8}, policy_kwargs=policy_kwargs)
    model.learn(2048)  # past learning_starts, so the world model has trained a little
    policy = model.policy
    obs = th.as_tensor(model._flat(model._last_obs))
    plan = shift_plan(model._plan, None)

    def act() -> None:
        with th.inference_mode():
            policy.act(obs, plan)

    model.world_model_config = dataclasses.replace(model.world_model_config, gradient_steps=1)

    sections = []
    paths = [("acting (one MPPI plan)", act), ("world-model gradient step (incl. Q-guided prior)", model._update_world_model)]
    for name, fn in paths:
        for _ in range(5):
            fn()
        start = time.perf_counter()
        for _ in range(args.calls):
            fn()
        ms = 1e3 * (time.perf_counter() - start) / args.calls
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.calls):
                fn()
        sections += [f"## {name}: {ms:.2f} ms per call (unprofiled)", "", *top_ops(prof, args.calls, args.rows), ""]

    header = [
        f"# Profile `{args.label}`",
        "",
        f"`python benchmarks/profile_m3po.py --label {args.label} --threads {args.threads} --n-envs {args.n_envs}"
        f"{' --compile' if args.compile else ''}`: cartpole-swingup, default M3PO (cpu preset"
        f"{', torch_compile=True' if args.compile else ''}), {args.n_envs} env(s) planned per call, "
        f"{platform.machine()} {os.cpu_count()} cores, torch {th.__version__}, "
        f"{args.threads} torch thread(s), {args.calls} calls each, commit {code_version()}.",
        "",
    ]
    text = "\n".join(header + sections)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"profile_{args.label}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
