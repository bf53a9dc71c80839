"""
Training throughput: env steps per second of M3PO (CPU and paper-scale presets), SB3 PPO and SB3 SAC.

Every run trains on the same env (action repeat 2, default hyperparameters of each algorithm,
M3PO in its shipped 8-env configuration, SB3's SAC and PPO with their default single env) in a
fresh process; runs alternate between algorithms so that drift of the machine
hits all of them. Time is measured after a warm-up (``--warmup`` env steps, so that every
algorithm is past its ``learning_starts``) from the start of a rollout to the end of training,
and split by wrapping the methods that do the work:

* ``env``: ``VecEnv.step`` (simulation, wrappers);
* ``act``: action selection (M3PO: the MPPI planner incl. encoder/prior/value, PPO: the policy
  forward pass, SAC: ``predict``);
* ``policy_update``: M3PO: bonus pass + PPO epochs, PPO: its epochs, SAC: its gradient steps;
* ``wm_update``: M3PO's world-model (and Q-guidance) gradient steps;
* ``other``: the rest (buffers, callbacks, logging).

After the timed window each run trains a little longer (one rollout for PPO/M3PO, 512 steps for SAC)
under ``torch.utils.flop_counter.FlopCounterMode``, which counts the matmul FLOPs (forward and
backward) per bucket. The counts depend only on the layer sizes and the algorithm's settings, not on
the machine or its load; with the timed rate they give each algorithm's achieved GFLOP/s, which tells
whether M3PO is slow because it computes inefficiently or because it computes more.

Writes ``runs.json`` and ``summary.md`` to ``--out``.

Usage::

    python benchmarks/throughput.py --tasks cartpole reach --algos m3po sac ppo m3po_5M
"""

import argparse
import functools
import json
import multiprocessing as mp
import os
import resource
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:  # also loaded from its path (tests), not only run as a script
    sys.path.insert(0, BENCH_DIR)
from provenance import code_version, machine_description  # noqa: E402  (same folder)

DEFAULT_OUT = os.path.join(BENCH_DIR, "results", "throughput")

TASKS = {"cartpole": "dm_control/cartpole-swingup-v0", "reach": "metaworld/reach-v3"}
ACTION_REPEAT = 2

# name -> (class, kwargs, env steps measured after the warm-up). "m3po" is the shipped configuration
# (hyperparams/m3po.yml: 8 envs, package defaults); SAC and PPO run SB3's defaults (one env).
ALGOS: dict[str, tuple[str, dict, int]] = {
    "m3po": ("M3PO", {"n_envs": 8}, 4096),
    "m3po_1env": ("M3PO", {}, 1024),
    # half the world-model steps, a third of the planner's arithmetic (it fails the learning check)
    "m3po_lean": (
        "M3PO",
        {"n_envs": 8, "world_model_kwargs": {"update_ratio": 0.5}, "planner_kwargs": {"num_samples": 64, "iterations": 2}},
        4096,
    ),
    "m3po_5M": ("M3PO", {"n_envs": 8, "policy_kwargs": {"model_size": "5M"}}, 512),
    # the shipped configuration with torch_compile=True: planner rollouts and world-model loss as compiled graphs
    # (compilation falls in the warm-up)
    "m3po_compile": ("M3PO", {"n_envs": 8, "policy_kwargs": {"torch_compile": True}}, 4096),
    "sac": ("SAC", {}, 2048),
    "ppo": ("PPO", {}, 4096),
}


class Stopwatch:
    """Accumulates wall-clock seconds, and matmul FLOPs while a ``FlopCounterMode`` is set, per named bucket."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self.counter = None  # a torch.utils.flop_counter.FlopCounterMode while FLOPs are counted

    def wrap(self, obj: object, method: str, bucket: str) -> None:
        original = getattr(obj, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            counter = self.counter
            flops = counter.get_total_flops() if counter is not None else 0
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[bucket] = self.seconds.get(bucket, 0.0) + time.perf_counter() - start
                if counter is not None:
                    self.flops[bucket] = self.flops.get(bucket, 0) + counter.get_total_flops() - flops

        setattr(obj, method, timed)


def split_buckets(totals: dict, total: float) -> dict:
    """Per-bucket amounts with M3PO's nested ``update_total`` (PPO epochs + world model) split, and the rest as ``other``."""
    split = dict(totals)
    if "update_total" in split:  # M3PO: train() = PPO epochs + world model
        split["policy_update"] = split.get("policy_update", 0) + split.pop("update_total") - split.get("wm_update", 0)
    split["other"] = total - sum(split.values())
    return split


def run_one(
    task: str, algo: str, warmup: int, threads: int, measured: int | None = None, flop_steps: int | None = None
) -> dict:
    import torch as th
    from torch.utils.flop_counter import FlopCounterMode

    th.set_num_threads(threads)
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_m3po import M3PO
    from sb3_m3po.envs import make_env

    cls_name, kwargs, default_measured = ALGOS[algo]
    kwargs = dict(kwargs)
    env = make_vec_env(lambda: make_env(TASKS[task], action_repeat=ACTION_REPEAT), n_envs=kwargs.pop("n_envs", 1), seed=0)
    measured = measured or default_measured
    model = {"M3PO": M3PO, "PPO": PPO, "SAC": SAC}[cls_name]("MlpPolicy", env, seed=0, verbose=0, **kwargs)
    watch = Stopwatch()
    watch.wrap(env, "step", "env")
    if cls_name == "M3PO":
        watch.wrap(model.policy, "act", "act")
        watch.wrap(model, "_returns_advantages_and_bonus", "policy_update")
        watch.wrap(model, "_update_world_model", "wm_update")
        watch.wrap(model, "train", "update_total")
    elif cls_name == "PPO":
        watch.wrap(model.policy, "forward", "act")
        watch.wrap(model, "train", "policy_update")
    else:
        watch.wrap(model, "predict", "act")
        watch.wrap(model, "train", "policy_update")

    marks: list[tuple[int, float, dict[str, float]]] = []

    class Mark(BaseCallback):
        def _on_rollout_start(self) -> None:
            if not marks and self.num_timesteps >= warmup:
                marks.append((self.num_timesteps, time.perf_counter(), dict(watch.seconds)))

        def _on_step(self) -> bool:
            return True

    # on-policy algorithms collect whole rollouts: end the run on a rollout boundary
    n_steps = getattr(model, "n_steps", 1) * model.n_envs
    total = (-(-warmup // n_steps) + -(-measured // n_steps)) * n_steps
    model.learn(total, callback=Mark())
    end_time, end_seconds = time.perf_counter(), dict(watch.seconds)
    assert marks, f"warm-up {warmup} never ended within {total} steps"
    start_steps, start_time, start_seconds = marks[0]
    steps = model.num_timesteps - start_steps
    wall = end_time - start_time
    split = split_buckets({k: end_seconds.get(k, 0.0) - start_seconds.get(k, 0.0) for k in end_seconds}, wall)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the slower counting pass

    # FLOPs of whole rollouts + updates (on-policy algorithms update once per rollout)
    count_steps = flop_steps or (n_steps if n_steps > 1 else 512)
    counter = FlopCounterMode(display=False)
    counted_from = model.num_timesteps
    # eager while counting (the dispatch mode sees no ops inside compiled graphs); FLOPs depend on shapes only
    with th._dynamo.config.patch(disable=True), counter:
        watch.counter = counter
        model.learn(count_steps, reset_num_timesteps=False)
        watch.counter = None
    counted = model.num_timesteps - counted_from
    flops = split_buckets(watch.flops, counter.get_total_flops())
    return {
        "task": task,
        "algo": algo,
        "env_id": TASKS[task],
        "measured_env_steps": steps,
        "measured_sim_steps": steps * ACTION_REPEAT,
        "wall_seconds": wall,
        "env_steps_per_s": steps / wall,
        "seconds_per_1k_steps": {k: 1000 * v / steps for k, v in sorted(split.items())},
        "gflop_per_1k_steps": {k: 1000 * v / counted / 1e9 for k, v in sorted(flops.items())},
        "flop_counted_env_steps": counted,
        "peak_rss_mib": peak_rss,
        "threads": threads,
    }


def median_runs(runs: list[dict]) -> list[dict]:
    """One row per (task, algo): the run with the median env steps/s, with the range over repeats."""
    rows = []
    keys = list(dict.fromkeys((r["task"], r["algo"]) for r in runs))
    for key in keys:
        group = sorted((r for r in runs if (r["task"], r["algo"]) == key), key=lambda r: r["env_steps_per_s"])
        row = dict(group[(len(group) - 1) // 2])
        row["repeats"] = len(group)
        row["range"] = (group[0]["env_steps_per_s"], group[-1]["env_steps_per_s"])
        rows.append(row)
    return rows


def summarize(runs: list[dict], out: str, args: argparse.Namespace) -> str:
    """Write ``summary.md``: the throughput table, the ratios to SAC/PPO, and the planner/profile tables found in ``out``."""
    buckets = ["env", "act", "policy_update", "wm_update", "other"]
    rows = median_runs(runs)
    lines = [
        "# Training throughput",
        "",
        f"Produced by `python benchmarks/throughput.py --tasks {' '.join(args.tasks)} --algos {' '.join(args.algos)} "
        f"--threads {args.threads} --repeats {args.repeats}"
        f"{f' --measured {args.measured}' if getattr(args, 'measured', None) else ''}`. "
        f"Machine: {machine_description()}, {args.threads} torch threads, one run at a time, algorithms alternating within "
        f"each repeat. Action repeat 2 for every algorithm; default hyperparameters: M3PO in its shipped "
        f"configuration (`m3po`: 8 envs, package defaults), SB3's SAC and PPO with their defaults (one env); the "
        f"other rows are variants (see ALGOS in the script). Measured after {args.warmup} env steps of warm-up "
        f"(every algorithm past its `learning_starts`). Env steps are agent decisions (x2 simulator steps). "
        f"Each row is the median of the repeats (range in brackets); the last column is the commit that measured it "
        f"(rows of other invocations are kept with `--merge`; ratios are meaningful between rows of one commit).",
        "",
        "| task | algo | env steps/s (range) | s per 1k env steps: " + " / ".join(buckets) + " | peak RSS (MiB) | commit |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        split = " / ".join(f"{r['seconds_per_1k_steps'].get(b, 0.0):.1f}" for b in buckets)
        lo, hi = r["range"]
        lines.append(
            f"| {r['task']} | {r['algo']} | {r['env_steps_per_s']:.1f} ({lo:.1f}-{hi:.1f}) | {split} | "
            f"{r['peak_rss_mib']:.0f} | {r.get('commit', 'unknown')} |"
        )
    lines += ["", "| task | M3PO variant | / SAC steps/s | / PPO steps/s |", "|---|---|---|---|"]
    for task in args.tasks:
        rate = {r["algo"]: r["env_steps_per_s"] for r in rows if r["task"] == task}
        for variant in (a for a in rate if a.startswith("m3po")):
            vs = [f"{rate[variant] / rate[b]:.2f}x" if b in rate else "n/a" for b in ("sac", "ppo")]
            lines.append(f"| {task} | {variant} | {vs[0]} | {vs[1]} |")
    counted = [r for r in rows if "gflop_per_1k_steps" in r]
    if counted:
        lines += [
            "",
            "## Arithmetic per env step",
            "",
            "Matmul GFLOP (forward and backward, counted by `FlopCounterMode` over whole rollouts and their updates "
            "right after the timed window) per 1k env steps, and the achieved rate: GFLOP per 1k steps x env steps/s "
            "of the timed window. `x SAC` compares the arithmetic per env step with SAC's on the same task: at equal "
            "achieved GFLOP/s, an algorithm with `x SAC` = k runs at 1/k of SAC's env steps/s.",
            "",
            "| task | algo | GFLOP per 1k env steps: act / policy_update / wm_update / total | x SAC | achieved GFLOP/s |",
            "|---|---|---|---|---|",
        ]
        for r in counted:
            g = r["gflop_per_1k_steps"]
            total = sum(g.values())
            sac = next((x for x in counted if x["task"] == r["task"] and x["algo"] == "sac"), None)
            vs = f"{total / sum(sac['gflop_per_1k_steps'].values()):.2f}x" if sac is not None else "n/a"
            parts = " / ".join(f"{g.get(b, 0.0):.1f}" for b in ("act", "policy_update", "wm_update"))
            lines.append(
                f"| {r['task']} | {r['algo']} | {parts} / {total:.1f} | {vs} | {total * r['env_steps_per_s'] / 1000:.1f} |"
            )
    # tables written by planner_bench.py and profile_m3po.py into the same folder
    for prefix, title in (("planner_", "Planner microbenchmark"), ("profile_", "Operator profiles")):
        found = sorted(n for n in os.listdir(out) if n.startswith(prefix) and n.endswith(".md"))
        if found:
            lines += ["", f"## {title}", ""]
            for name in found:
                with open(os.path.join(out, name)) as f:
                    body = f.read().strip().replace("\n# ", "\n### ").replace("\n## ", "\n#### ")
                lines += [f"From `{name}`:", "", body.removeprefix("# "), ""]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--algos", nargs="+", default=["m3po", "sac", "ppo", "m3po_5M"], choices=list(ALGOS))
    parser.add_argument("--warmup", type=int, default=1024, help="env steps before measuring (past learning_starts)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each run")
    parser.add_argument("--measured", type=int, help="env steps to measure (default: per algorithm, see ALGOS)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (task, algo); the summary takes the median")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--summarize", action="store_true", help="only rewrite summary.md from runs.json")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of runs.json for (task, algo) pairs not measured now (their commits are listed in the summary)",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.summarize:
        with open(os.path.join(args.out, "runs.json")) as f:
            print(summarize(json.load(f), args.out, args))
        return
    commit = code_version()
    kept: list[dict] = []
    if args.merge and os.path.exists(os.path.join(args.out, "runs.json")):
        with open(os.path.join(args.out, "runs.json")) as f:
            kept = [r for r in json.load(f) if not (r["task"] in args.tasks and r["algo"] in args.algos)]
    runs: list[dict] = []
    ctx = mp.get_context("spawn")
    for repeat in range(args.repeats):
        for task, algo in ((t, a) for t in args.tasks for a in args.algos):  # alternate algorithms in each repeat
            with ctx.Pool(1) as pool:
                run = pool.apply(run_one, (task, algo, args.warmup, args.threads, args.measured))
            run["repeat"] = repeat
            run["commit"] = commit
            runs.append(run)
            print(f"{task} {algo}: {run['env_steps_per_s']:.1f} env steps/s {run['seconds_per_1k_steps']}", flush=True)
            with open(os.path.join(args.out, "runs.json"), "w") as f:
                json.dump(kept + runs, f, indent=1)
    print(summarize(kept + runs, args.out, args))


if __name__ == "__main__":
    main()
