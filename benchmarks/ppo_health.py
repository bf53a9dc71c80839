"""
Trust-region health of M3PO's PPO updates, read from the console logs of suite runs.

M3PO's PPO epochs update the prior on planner actions, which can sit far in the prior's tails;
when the update leaves its trust region, ``train/approx_kl`` and ``train/clip_fraction`` show it
long before the returns do. This reads every SB3 log table in
``benchmarks/runs/<suite>/<task>/<algorithm>/seed<S>/train.log`` and writes, per run, the median
and the share of updates above thresholds to ``benchmarks/results/<suite>/ppo_health.{csv,md}``.

Usage::

    python benchmarks/ppo_health.py metaworld
    python benchmarks/ppo_health.py metaworld --runs-dirs-extra benchmarks/runs/metaworld_kl
"""

import argparse
import glob
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # also loaded from its path by the tests
    sys.path.insert(0, HERE)
from report import merge_previous, record_names, write_report  # noqa: E402  (same folder)

KEYS = ("approx_kl", "prior_kl", "clip_fraction", "max_abs_log_ratio", "is_weight_mean")
COLUMNS = (
    "task",
    "algorithm",
    "seed",
    "updates",
    "approx_kl_median",
    "approx_kl_gt_0.1",
    "approx_kl_gt_1",
    "prior_kl_median",
    "clip_fraction_median",
    "max_abs_log_ratio_max",
    "is_weight_mean_median",
)


def read_train_tables(log_path: str) -> dict[str, list[float]]:
    """
    Values of the ``train/`` keys in :data:`KEYS`, one per SB3 log table that has them.

    :param log_path: console log of a training run (SB3's human-readable output)
    :return: key -> list of values in log order (keys absent from the log are left out)
    """
    values: dict[str, list[float]] = {}
    section = ""
    with open(log_path, errors="replace") as handle:
        for line in handle:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 2:
                continue
            name, value = cells
            if name.endswith("/"):
                section = name
            elif section == "train/" and name in KEYS:
                try:
                    values.setdefault(name, []).append(float(value))
                except ValueError:
                    continue
    return values


def health_row(values: dict[str, list[float]]) -> dict[str, float | int | None]:
    """Summary statistics of one run's :func:`read_train_tables` output (None where a key is missing)."""
    kl = np.asarray(values.get("approx_kl", []), dtype=np.float64)

    def stat(key: str, fn) -> float | None:  # type: ignore[no-untyped-def]
        data = values.get(key)
        return None if not data else float(fn(np.asarray(data, dtype=np.float64)))

    return {
        "updates": len(kl),
        "approx_kl_median": stat("approx_kl", np.median),
        "approx_kl_gt_0.1": None if len(kl) == 0 else float(np.mean(kl > 0.1)),
        "approx_kl_gt_1": None if len(kl) == 0 else float(np.mean(kl > 1.0)),
        "prior_kl_median": stat("prior_kl", np.median),
        "clip_fraction_median": stat("clip_fraction", np.median),
        "max_abs_log_ratio_max": stat("max_abs_log_ratio", np.max),
        "is_weight_mean_median": stat("is_weight_mean", np.median),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="suite name (its runs folder and results folder)")
    parser.add_argument("--runs-dir", help="runs folder (default benchmarks/runs/<suite>)")
    parser.add_argument("--results-dir", help="output folder (default benchmarks/results/<suite>)")
    parser.add_argument("--algos", nargs="+", help="algorithms to read (default: every one whose name starts with m3po)")
    parser.add_argument("--runs-dirs-extra", nargs="*", default=[], help="further runs folders of the same suite")
    args = parser.parse_args(argv)
    runs_dir = args.runs_dir or os.path.join(HERE, "runs", args.suite)
    out_dir = args.results_dir or os.path.join(HERE, "results", args.suite)
    rows = []
    logs = []
    for folder in [runs_dir, *args.runs_dirs_extra]:
        for algo in args.algos or ["m3po*"]:
            logs += glob.glob(os.path.join(folder, "*", algo, "seed*", "train.log"))
    names = record_names(out_dir)
    for log in sorted(logs):
        seed_dir = os.path.dirname(log)
        task = os.path.basename(os.path.dirname(os.path.dirname(seed_dir)))
        algo = names.get(os.path.realpath(seed_dir), os.path.basename(os.path.dirname(seed_dir)))
        row = {"task": task, "algorithm": algo, "seed": int(os.path.basename(seed_dir)[len("seed") :])}
        row.update(health_row(read_train_tables(log)))
        if row["updates"]:
            rows.append(row)
    if not rows:
        parser.error(f"no train.log with PPO updates under {runs_dir} for {args.algos or 'm3po*'}")
    intro = [
        f"# PPO trust-region health: {args.suite}",
        "",
        "Written by `python benchmarks/ppo_health.py " + args.suite + "` from the runs' console logs (one row per",
        "run; an update is one PPO phase after a rollout). `approx_kl > 1` means the prior moved far outside",
        "PPO's trust region on that rollout; `approx_kl` is SB3's sample estimate over the rollout's (planner)",
        "actions, `prior_kl` the closed-form KL between the prior Gaussians before and during the update (logged",
        "since `kl_estimate` exists; empty for older runs); `is_weight_mean` is the mean truncated importance",
        "weight min(1, prior / planner) of the rollout's actions.",
        "",
    ]
    rows = merge_previous(os.path.join(out_dir, "ppo_health.csv"), rows, ("task", "algorithm", "seed"))
    print(write_report(out_dir, "ppo_health", COLUMNS, rows, intro, []), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
