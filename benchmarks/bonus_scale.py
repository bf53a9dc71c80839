"""
Would one task's exploration bonus swamp the others under a single z-score? Measured from multi-task runs.

M3PO's bonus is the gap ``|Q_MB - Q_MF|``, z-scored and clipped to ``[0, bonus_clip]``. Over a multi-task
rollout one z-score for the whole batch puts every task on the scale of the task with the largest value
errors: a task whose raw gaps are small sits below the batch mean and its bonus is clipped to 0.
M3PO therefore z-scores within each task by default (``bonus_per_task=True``); this script measures
how much that matters, from the per-task statistics every multi-task M3PO run logs to tensorboard
(``train/<task>/bonus_mean``, ``train/<task>/bonus_std``, once per rollout).

For each rollout and task ``k`` with mean ``m_k`` and std ``s_k`` of the raw gap (equal sample counts
per task, as with one env per task), a batch z-score has mean ``M = mean_k m_k`` and std
``S = sqrt(mean_k (s_k^2 + (m_k - M)^2))``. Task ``k``'s samples then sit at ``z_k = (m_k - M) / S``
on average, and, taking them as normal with std ``s_k / S``, receive an expected clipped bonus
``E[clip(Z, 0, c)]``; per-task normalisation gives every task the same expectation (``z_k = 0``).
Outputs ``benchmarks/results/<suite>/bonus_scale.{csv,md}``: per task the medians over rollouts.

Usage::

    python benchmarks/bonus_scale.py mt10
"""

import argparse
import glob
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # also loaded from its path by the tests
    sys.path.insert(0, HERE)
from report import merge_previous, record_names, write_report  # noqa: E402  (same folder)

COLUMNS = ("algorithm", "seed", "task", "rollouts", "raw_mean", "raw_std", "batch_z", "batch_bonus", "per_task_bonus")


def expected_clipped(mu: np.ndarray, sigma: np.ndarray, clip: float) -> np.ndarray:
    """
    ``E[min(max(Z, 0), clip)]`` for ``Z ~ N(mu, sigma^2)``, elementwise.

    :param mu: means
    :param sigma: standard deviations (> 0)
    :param clip: upper clip
    """

    def above(t: float) -> np.ndarray:  # E[max(Z - t, 0)]
        u = (mu - t) / sigma
        pdf = np.exp(-0.5 * u**2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))
        return sigma * pdf + (mu - t) * cdf

    return above(0.0) - above(clip)


def batch_view(means: np.ndarray, stds: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Where each task's raw bonus would sit under one batch z-score, per rollout.

    :param means: ``(rollouts, tasks)`` per-task means of the raw gap
    :param stds: ``(rollouts, tasks)`` per-task stds of the raw gap
    :param clip: the bonus clip
    :return: ``batch_z``, the expected clipped bonus under a batch z-score and under per-task z-scores,
        each ``(rollouts, tasks)``
    """
    batch_mean = means.mean(1, keepdims=True)
    batch_std = np.sqrt((stds**2 + (means - batch_mean) ** 2).mean(1, keepdims=True)) + 1e-8
    z = (means - batch_mean) / batch_std
    spread = np.maximum(stds / batch_std, 1e-6)
    batch_bonus = expected_clipped(z, spread, clip)
    per_task_bonus = expected_clipped(np.zeros_like(z), np.ones_like(z), clip)
    return z, batch_bonus, per_task_bonus


def read_task_scalars(tb_dir: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """
    ``train/<task>/bonus_mean`` and ``bonus_std`` of one run, aligned on the rollouts every task logged.

    :param tb_dir: the run's tensorboard folder (searched recursively for event files)
    :return: task names, means and stds ``(rollouts, tasks)``
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {}
    for events in sorted(glob.glob(os.path.join(tb_dir, "**", "events.out.tfevents.*"), recursive=True)):
        accumulator = EventAccumulator(events, size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            parts = tag.split("/")
            if len(parts) == 3 and parts[0] == "train" and parts[2] in ("bonus_mean", "bonus_std"):
                values.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    tasks = sorted({tag.split("/")[1] for tag in values})
    if not tasks:
        return [], np.zeros((0, 0)), np.zeros((0, 0))
    steps = sorted(set.intersection(*(set(values[f"train/{t}/{k}"]) for t in tasks for k in ("bonus_mean", "bonus_std"))))
    means = np.array([[values[f"train/{t}/bonus_mean"][s] for t in tasks] for s in steps]).reshape(len(steps), len(tasks))
    stds = np.array([[values[f"train/{t}/bonus_std"][s] for t in tasks] for s in steps]).reshape(len(steps), len(tasks))
    return tasks, means, stds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="suite name (its runs folder and results folder)")
    parser.add_argument("--runs-dir", help="runs folder (default benchmarks/runs/<suite>)")
    parser.add_argument("--results-dir", help="output folder (default benchmarks/results/<suite>)")
    parser.add_argument("--bonus-clip", type=float, default=3.0, help="M3PO's bonus_clip of the runs (default 3)")
    args = parser.parse_args(argv)
    runs_dir = args.runs_dir or os.path.join(HERE, "runs", args.suite)
    out_dir = args.results_dir or os.path.join(HERE, "results", args.suite)
    rows: list[dict] = []
    names = record_names(out_dir)
    for tb_dir in sorted(glob.glob(os.path.join(runs_dir, "*", "m3po*", "seed*", "tb"))):
        seed_dir = os.path.dirname(tb_dir)
        algo = names.get(os.path.realpath(seed_dir), os.path.basename(os.path.dirname(seed_dir)))
        seed = int(os.path.basename(seed_dir)[len("seed") :])
        tasks, means, stds = read_task_scalars(tb_dir)
        if not tasks or len(means) == 0:
            continue
        z, batch_bonus, per_task_bonus = batch_view(means, stds, args.bonus_clip)
        for k, task in enumerate(tasks):
            rows.append(
                {
                    "algorithm": algo,
                    "seed": seed,
                    "task": task,
                    "rollouts": len(means),
                    "raw_mean": float(np.median(means[:, k])),
                    "raw_std": float(np.median(stds[:, k])),
                    "batch_z": float(np.median(z[:, k])),
                    "batch_bonus": float(np.median(batch_bonus[:, k])),
                    "per_task_bonus": float(np.median(per_task_bonus[:, k])),
                }
            )
    if not rows:
        parser.error(f"no multi-task M3PO run with per-task bonus scalars under {runs_dir}")
    rows = merge_previous(os.path.join(out_dir, "bonus_scale.csv"), rows, ("algorithm", "seed", "task"))
    intro = [
        f"# Per-task exploration bonus scale: {args.suite}",
        "",
        "Written by `python benchmarks/bonus_scale.py " + args.suite + "` from the runs' tensorboard logs.",
        "Medians over rollouts. `raw_mean`/`raw_std`: the raw gap |Q_MB - Q_MF| of the task's samples;",
        "`batch_z`: where the task's samples sit on average under one z-score over all tasks; `batch_bonus`:",
        "their expected clipped bonus under that batch z-score (normal approximation); `per_task_bonus`:",
        f"the same under per-task z-scores (M3PO's default), equal for every task. Bonus clip {args.bonus_clip:g}.",
        "",
    ]
    outro: list[str] = []
    for (algo, seed), group in _by_run(rows).items():
        bonus = np.array([r["batch_bonus"] for r in group])
        raw = np.array([r["raw_mean"] for r in group])
        outro += [
            "",
            f"{algo} seed {seed}: raw gap of the largest task / smallest task = {raw.max() / max(raw.min(), 1e-12):.1f}; "
            f"under a batch z-score the tasks' expected bonus ranges {bonus.min():.3f}-{bonus.max():.3f} "
            f"(per-task z-scores: {group[0]['per_task_bonus']:.3f} for every task).",
        ]
    write_report(out_dir, "bonus_scale", COLUMNS, rows, intro, outro)
    print(f"wrote {os.path.join(out_dir, 'bonus_scale.md')}")
    return 0


def _by_run(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        runs.setdefault((row["algorithm"], row["seed"]), []).append(row)
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
