"""
A saved M3PO model's deterministic evaluation with the planner's samples fixed across steps, as sb3-m3po
evaluated before the samples were seeded with the step (``fixed``: the recurrent state carries the plan only,
so every call seeds alike), and with the package's evaluation (``step``). Both play the same episodes.

Usage::

    python benchmarks/eval_modes.py dm_control/finger-spin-v0 benchmarks/runs/dmc/finger-spin/<algo>/seed0 --episodes 10

Appends a row per mode to ``benchmarks/results/eval_modes/eval_modes.csv`` and rewrites its ``summary.md``.
"""

import argparse
import glob
import os
import sys

import numpy as np
import pandas as pd
from runner.runs import code_version, shown_path, write_atomic
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_m3po import M3PO
from sb3_m3po.envs import make_env

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "eval_modes")


def evaluate(model: M3PO, env: DummyVecEnv, mode: str, episodes: int) -> tuple[list[float], list[float]]:
    """Returns and final-step successes of ``episodes`` deterministic episodes (env seeds 100, 101, ...)."""
    predict, successes = model.policy.predict, []

    def plan_only(obs, state=None, episode_start=None, deterministic=False):  # type: ignore[no-untyped-def]
        return predict(obs, None if state is None else state[:1], episode_start, deterministic)

    def at_episode_end(local: dict, _: dict) -> None:
        if local["done"]:
            successes.append(float(local["info"].get("is_success", np.nan)))

    model.policy.predict = plan_only if mode == "fixed" else predict  # type: ignore[method-assign]
    env.seed(100)
    returns, _ = evaluate_policy(model, env, episodes, True, return_episode_rewards=True, callback=at_episode_end)
    model.policy.predict = predict  # type: ignore[method-assign]
    return [float(r) for r in returns], successes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env", help="env id the model was trained on")
    parser.add_argument("run", help="a suite run folder (its final model) or a model .zip")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", default=OUT, help="folder of eval_modes.csv and summary.md")
    args = parser.parse_args(argv)
    pattern = os.path.join(args.run, "seg*", "*", "*", "*-v*.zip")
    found = [args.run] if args.run.endswith(".zip") else sorted(glob.glob(pattern))
    if not found:
        sys.exit(f"eval_modes.py: no final model under {args.run}")
    env = DummyVecEnv([lambda i=i: make_env(args.env, seed=100 + i) for i in range(args.episodes)])
    model = M3PO.load(found[-1], env=env, device="cpu")  # the last segment's
    runs = f"benchmarks{os.sep}runs{os.sep}"  # a suite run, of this checkout or another
    label = found[-1].split(runs)[-1] if runs in found[-1] else shown_path(found[-1])
    rows = []
    for mode in ("fixed", "step"):
        returns, successes = evaluate(model, env, mode, args.episodes)
        rows.append(
            {"env": args.env, "model": label, "mode": mode, "episodes": args.episodes,
             "mean_return": np.mean(returns), "zero_return_episodes": int(np.sum(np.asarray(returns) == 0)),
             "success_rate": np.mean(successes), "returns": " ".join(f"{r:.0f}" for r in returns), "commit": code_version()}
        )  # fmt: skip
    path = os.path.join(args.out, "eval_modes.csv")
    table = pd.concat([pd.read_csv(path), pd.DataFrame(rows)] if os.path.exists(path) else [pd.DataFrame(rows)])
    write_atomic(path, table.to_csv(index=False, float_format="%.4g", lineterminator="\n"))
    intro = (
        "# Deterministic evaluation: planner samples fixed across steps (`fixed`) or seeded with the step (`step`)\n\n"
        "Produced by `python benchmarks/eval_modes.py <env> <run folder>` on final models of suite runs; the same "
        "episodes (env seeds 100, 101, ...) in both modes.\n\n"
    )
    write_atomic(os.path.join(args.out, "summary.md"), intro + table.to_markdown(index=False, floatfmt=".4g") + "\n")
    print(pd.DataFrame(rows).drop(columns=["model", "commit"]).to_string(index=False))


if __name__ == "__main__":
    main()
