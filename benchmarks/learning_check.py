"""
Learning check: M3PO with default hyperparameters against SB3 PPO and SAC on the same budget.

Tasks (budgets in simulator steps, TD-MPC2's convention):

* ``pendulum``: Pendulum-v1, 20k steps, goal: M3PO mean eval return >= -300 on every seed
* ``cartpole``: dm_control/cartpole-swingup-v0 with action repeat 2, 100k simulator steps
  (50k decisions), goal: M3PO mean eval return >= 700 on every seed

Each (task, algo, seed) run is a separate worker process with one torch thread and writes
``<out>/<task>/<algo>_seed<seed>.json`` (curve, wall-clock); finished runs are skipped, so the
check can be continued later. ``--summarize`` (also run at the end) writes ``summary.md``,
``runs.csv`` and one PNG per task.

Usage::

    python benchmarks/learning_check.py --tasks pendulum cartpole --algos m3po ppo sac --seeds 0 1 2 --workers 2
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
from provenance import code_version  # same folder

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "learning_check")


@dataclass(frozen=True)
class Task:
    env_id: str
    action_repeat: int
    sim_budget: int
    eval_every_sim: int
    eval_episodes: int
    goal: float


TASKS = {
    "pendulum": Task("Pendulum-v1", 1, 20_000, 2_000, 5, -300.0),
    "cartpole": Task("dm_control/cartpole-swingup-v0", 2, 100_000, 10_000, 3, 700.0),
}


# name -> (class, non-default hyperparameters); ablations change exactly one thing
ALGOS: dict[str, tuple[str, dict]] = {
    # M3PO's shipped configuration: 8 envs planned in one batch (the package defaults otherwise)
    "m3po": ("M3PO", {"n_envs": 8}),
    "ppo": ("PPO", {}),
    "sac": ("SAC", {}),
    "m3po_ppo_prior": ("M3PO", {"n_envs": 8, "prior_q_coef": 0.0}),
    # without PPO's KL early stop on the prior update (the default before target_kl=0.05)
    "m3po_no_target_kl": ("M3PO", {"n_envs": 8, "target_kl": None}),
    # the defaults before the speed work (issue 3): one env, one world-model step per transition
    "m3po_utd1": ("M3PO", {"n_steps": 512, "wm_update_ratio": 1.0, "wm_batch_size": 128, "mppi_iterations": 3}),
    # the first 8-env configuration: twice the world-model steps on half the batch, 3 MPPI iterations
    "m3po_r4": ("M3PO", {"n_envs": 8, "wm_update_ratio": 0.25, "wm_batch_size": 128, "mppi_iterations": 3}),
    # the fastest 8-env configuration (the defaults of commit 957d02f): it fails the check
    "m3po_r8": ("M3PO", {"n_envs": 8, "wm_update_ratio": 0.125, "wm_batch_size": 256, "mppi_iterations": 2}),
    # half the world-model steps and a third of the planner's arithmetic (64 samples x 2 iterations), about half
    # the matmul FLOPs per env step of "m3po" (benchmarks/results/throughput); it fails the check on cartpole
    "m3po_lean": ("M3PO", {"n_envs": 8, "wm_update_ratio": 0.5, "num_samples": 64, "mppi_iterations": 2}),
    # one world-model step per transition on a quarter of the batch (32 subsequences), with m3po_lean's planner:
    # fewer FLOPs per env step without fewer world-model steps
    "m3po_b32": ("M3PO", {"n_envs": 8, "wm_batch_size": 32, "num_samples": 64, "mppi_iterations": 2}),
}


def run_one(task_name: str, algo: str, seed: int, out_dir: str) -> str:
    """Train one run and write its JSON; returns the path."""
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_m3po import M3PO
    from sb3_m3po.envs import make_env

    task = TASKS[task_name]
    path = os.path.join(out_dir, task_name, f"{algo}_seed{seed}.json")

    def env_fn():
        return make_env(task.env_id, action_repeat=task.action_repeat)

    commit = code_version()  # now, not at the end: the tree may change while a run trains
    algo_cls, kwargs = ALGOS[algo]
    kwargs = dict(kwargs)
    env = make_vec_env(env_fn, n_envs=kwargs.pop("n_envs", 1), seed=seed)
    eval_env = make_vec_env(env_fn, n_envs=1, seed=seed + 10_000)
    model = {"M3PO": M3PO, "PPO": PPO, "SAC": SAC}[algo_cls]("MlpPolicy", env, seed=seed, verbose=0, **kwargs)
    curve: list[dict] = []
    start = time.perf_counter()
    eval_seconds = [0.0]

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            sim_steps = self.num_timesteps * task.action_repeat
            if sim_steps % task.eval_every_sim == 0:
                t0 = time.perf_counter()
                returns, _ = evaluate_policy(
                    model, eval_env, n_eval_episodes=task.eval_episodes, deterministic=True, return_episode_rewards=True
                )
                eval_seconds[0] += time.perf_counter() - t0
                curve.append(
                    {
                        "sim_steps": sim_steps,
                        "mean_return": float(np.mean(returns)),
                        "std_return": float(np.std(returns)),
                        "train_seconds": time.perf_counter() - start - eval_seconds[0],
                    }
                )
            return True

    model.learn(task.sim_budget // task.action_repeat, callback=Evaluate())
    wall = time.perf_counter() - start
    reached = [p["sim_steps"] for p in curve if p["mean_return"] >= task.goal]
    result = {
        "task": task_name,
        "env_id": task.env_id,
        "action_repeat": task.action_repeat,
        "algo": algo,
        "seed": seed,
        "sim_budget": task.sim_budget,
        "goal": task.goal,
        "curve": curve,
        "final_return": curve[-1]["mean_return"],
        "best_return": max(p["mean_return"] for p in curve),
        "first_step_at_goal": reached[0] if reached else None,
        "wall_seconds_total": wall,
        "wall_seconds_train": wall - eval_seconds[0],
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {th.__version__}",
        "commit": commit,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    return path


def _run(args: tuple) -> str:
    return run_one(*args)


def load_runs(out_dir: str) -> list[dict]:
    runs = []
    for task_name in TASKS:
        folder = os.path.join(out_dir, task_name)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                with open(os.path.join(folder, name)) as f:
                    runs.append(json.load(f))
    return runs


def summarize(out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(out_dir)
    if not runs:
        print("no finished runs yet")
        return
    relabelled = [f"* {r['task']} {r['algo']} seed {r['seed']}: {r['relabelled']}" for r in runs if r.get("relabelled")]
    if relabelled:
        relabelled = ["Relabelled runs (renamed when a default changed):", "", *relabelled, ""]
    lines = [
        "# Learning check",
        "",
        "Produced by `python benchmarks/learning_check.py` (default hyperparameters for every algorithm:",
        "M3PO's defaults, SB3's PPO and SAC defaults; deterministic evaluation; one torch thread per run,",
        "two runs in parallel). Budgets and steps are simulator steps (action repeat counted).",
        "",
        f"Machine: {runs[0]['machine']}. Code: commit(s) {sorted({r.get('commit', 'unknown') for r in runs})}.",
        "",
        *relabelled,
        "| task | algo | seed | final return | best return | first step at goal | train wall-clock (s) "
        "| total incl. eval (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    csv = ["task,algo,seed,final_return,best_return,first_step_at_goal,wall_seconds_train,wall_seconds_total"]
    for r in sorted(runs, key=lambda r: (r["task"], r["algo"], r["seed"])):
        at_goal = r["first_step_at_goal"] if r["first_step_at_goal"] is not None else "not reached"
        lines.append(
            f"| {r['task']} | {r['algo']} | {r['seed']} | {r['final_return']:.1f} | {r['best_return']:.1f} | "
            f"{at_goal} | {r['wall_seconds_train']:.0f} | {r['wall_seconds_total']:.0f} |"
        )
        csv.append(
            f"{r['task']},{r['algo']},{r['seed']},{r['final_return']:.3f},{r['best_return']:.3f},"
            f"{r['first_step_at_goal']},{r['wall_seconds_train']:.1f},{r['wall_seconds_total']:.1f}"
        )
    lines += ["", "## Per task and algorithm (mean over seeds)", ""]
    images: list[str] = []
    lines += [
        "| task | algo | seeds | final return mean (min) | goal | final return >= goal on every seed |",
        "|---|---|---|---|---|---|",
    ]
    for task_name, task in TASKS.items():
        for algo in ALGOS:
            sel = [r for r in runs if r["task"] == task_name and r["algo"] == algo]
            if not sel:
                continue
            finals = [r["final_return"] for r in sel]
            met = all(r["final_return"] >= task.goal for r in sel)
            lines.append(
                f"| {task_name} | {algo} | {len(sel)} | {np.mean(finals):.1f} ({np.min(finals):.1f}) | {task.goal:g} | "
                f"{'yes' if met else 'no'} |"
            )
        sel_task = [r for r in runs if r["task"] == task_name]
        if not sel_task:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for algo, color in zip(ALGOS, [f"C{i}" for i in range(len(ALGOS))]):
            for i, r in enumerate(x for x in sel_task if x["algo"] == algo):
                steps = [p["sim_steps"] for p in r["curve"]]
                rets = [p["mean_return"] for p in r["curve"]]
                ax.plot(steps, rets, color=color, alpha=0.8, label=algo.upper() if i == 0 else None)
        ax.axhline(task.goal, color="k", ls="--", lw=1, label="goal")
        ax.set_xlabel("simulator steps")
        ax.set_ylabel("eval return")
        ax.set_title(f"{task.env_id} (one line per seed)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"{task_name}.png"), dpi=100)
        plt.close(fig)
        images += ["", f"![{task_name}]({task_name}.png)"]
    lines += images
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "runs.csv"), "w") as f:
        f.write("\n".join(csv) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--algos", nargs="+", default=["m3po", "ppo", "sac"], choices=list(ALGOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--summarize", action="store_true", help="only write the summary of finished runs")
    args = parser.parse_args()
    if not args.summarize:
        jobs = [
            (t, a, s, args.out)
            for t in args.tasks
            for s in args.seeds
            for a in args.algos
            if not os.path.exists(os.path.join(args.out, t, f"{a}_seed{s}.json"))
        ]
        print(f"{len(jobs)} runs to do: {[j[:3] for j in jobs]}", flush=True)
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
            for path in pool.imap_unordered(_run, jobs):
                print("finished", path, flush=True)
    summarize(args.out)


if __name__ == "__main__":
    main()
