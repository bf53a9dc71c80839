"""
A saved M3PO model's deterministic evaluation replayed with other MPPI budgets: is the model or the planner
what limits a final score? Every budget plays the same episodes (env seeds 100, 101, ..., one vec env each).

A budget is ``own`` (the model's planner) or ``SxI``: ``S`` samples and ``I`` iterations, with ``S // 8`` elites
and ``max(own, 3 S // 64)`` prior trajectories (so ``128x3`` is the shipped planner, ``512x6`` TD-MPC2's);
the horizon and the other settings stay the model's.

Usage::

    python benchmarks/replay.py dm_control/finger-spin-v0 benchmarks/runs/dmc/finger-spin/m3po/seed0 --budgets own 512x3

Appends a row per budget to ``benchmarks/results/replay/replay.csv`` and rewrites its ``summary.md``.
"""

import argparse
import dataclasses
import glob
import os
import re
import sys
import time

import numpy as np
import pandas as pd
from runner.runs import code_version, shown_path, write_atomic
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_m3po import M3PO
from sb3_m3po.envs import make_env
from sb3_m3po.m3po.config import PlannerConfig

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "replay")


def budget(name: str, own: PlannerConfig) -> PlannerConfig:
    """The planner settings a budget name stands for (see the module docstring)."""
    if name == "own":
        return own
    match = re.fullmatch(r"(\d+)x(\d+)", name)
    if not match:
        raise SystemExit(f"replay.py: budget '{name}' is neither 'own' nor SAMPLESxITERATIONS (e.g. 512x6)")
    samples, iterations = int(match[1]), int(match[2])
    prior = max(own.num_prior_trajectories, 3 * samples // 64)
    return dataclasses.replace(
        own, num_samples=samples, iterations=iterations, num_elites=max(samples // 8, 1), num_prior_trajectories=prior
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env", help="env id the model was trained on")
    parser.add_argument("run", help="a suite run folder (its final model) or a model .zip")
    parser.add_argument("--budgets", nargs="+", default=["own", "512x3", "512x6"], help="planner budgets to replay")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", default=OUT, help="folder of replay.csv and summary.md")
    args = parser.parse_args(argv)
    pattern = os.path.join(args.run, "seg*", "*", "*", "*-v*.zip")
    found = [args.run] if args.run.endswith(".zip") else sorted(glob.glob(pattern))
    if not found:
        sys.exit(f"replay.py: no final model under {args.run}")
    env = DummyVecEnv([lambda i=i: Monitor(make_env(args.env, seed=100 + i)) for i in range(args.episodes)])
    model = M3PO.load(found[-1], env=env, device="cpu")  # the last segment's
    policy, own = model.policy, model.policy.planner_config
    runs = f"benchmarks{os.sep}runs{os.sep}"  # a suite run, of this checkout or another
    label = found[-1].split(runs)[-1] if runs in found[-1] else shown_path(found[-1])
    rows, successes = [], []

    def at_episode_end(local: dict, _: dict) -> None:
        if local["done"]:
            successes.append(float(local["info"].get("is_success", np.nan)))

    for name in args.budgets:
        policy.set_planner(config := budget(name, own))
        successes.clear()
        env.seed(100)  # after load: loading seeds the env with the model's seed
        started = time.perf_counter()
        episodes = evaluate_policy(model, env, args.episodes, True, return_episode_rewards=True, callback=at_episode_end)
        returns = np.asarray(episodes[0], dtype=np.float64)
        rows.append(
            {"env": args.env, "model": label, "budget": name, "samples": config.num_samples,
             "iterations": config.iterations, "episodes": args.episodes, "mean_return": np.mean(returns),
             "success_rate": np.mean(successes), "returns": " ".join(f"{r:.0f}" for r in returns),
             "seconds": time.perf_counter() - started, "commit": code_version()}
        )  # fmt: skip
    path = os.path.join(args.out, "replay.csv")
    table = pd.concat([pd.read_csv(path), pd.DataFrame(rows)] if os.path.exists(path) else [pd.DataFrame(rows)])
    write_atomic(path, table.to_csv(index=False, float_format="%.4g", lineterminator="\n"))
    intro = (
        "# Final models replayed with other planner budgets\n\nProduced by `python benchmarks/replay.py <env> <run folder> "
        "--budgets ...` on final models of suite runs: deterministic evaluation, the same episodes (env seeds 100, "
        "101, ...) for every budget; `seconds` is the wall-clock of all episodes, planned as one batch.\n\n"
    )
    write_atomic(os.path.join(args.out, "summary.md"), intro + table.to_markdown(index=False, floatfmt=".4g") + "\n")
    print(pd.DataFrame(rows).drop(columns=["model", "commit"]).to_string(index=False))


if __name__ == "__main__":
    main()
