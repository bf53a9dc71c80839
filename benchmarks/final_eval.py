"""
Final evaluation of a multi-task suite's trained models with many episodes per task.

The suite's periodic evaluations of a multi-task id (``m3po/MT10-v0``) run one episode per task, so a task's
final success is a single 0/1 draw and the mean over ten tasks moves by 0.1 per episode. This script loads the
final model of every finished run of the suite (the ``<env>.zip`` rl-zoo3 saves at the end of training, in the
run folder its record names), runs ``--episodes`` deterministic episodes of every task on one env per task
(:func:`sb3_m3po.zoo.callbacks.evaluate_tasks`, success at the last step as in training's evaluations, the
same eval seed for every run), and writes ``benchmarks/results/<suite>/final_eval.{csv,md}``: per run and task
the success rate and mean return, and per task the mean over seeds with a 95 % bootstrap CI.

Run folders are not committed, so the CSV keeps the committed rows of runs whose folders are gone.

Usage::

    python benchmarks/final_eval.py mt10                      # 10 episodes per task
    python benchmarks/final_eval.py mt10 --episodes 20 --only-algos m3po --seeds 1 2
"""

import argparse
import csv
import glob
import os
import re
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # also loaded from its path by the tests
    sys.path.insert(0, HERE)
from report import format_cell, merge_previous  # noqa: E402  (same folder)
from suite import REPO_ROOT, bootstrap_mean_ci, load_record, load_suite, shown_path  # noqa: E402

COLUMNS = ("algorithm", "seed", "task", "episodes", "success_rate", "mean_return", "eval_seed", "model", "run_commit")
KEY = ("algorithm", "seed", "task")


def final_model_path(run_folder: str, env_id: str) -> str:
    """
    The model rl-zoo3 saves at the end of training, ``<run_folder>/<env id with '/' as '-'>.zip``.

    :raises FileNotFoundError: if it is not there (a run folder without its final model cannot be evaluated)
    """
    path = os.path.join(run_folder, env_id.replace("/", "-") + ".zip")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no final model {path!r}: was the run folder moved or the training interrupted?")
    return path


def find_run_folder(record: Any, runs_dir: str | None) -> str:
    """
    The rl-zoo3 folder of a finished run: the one its record names, else the one under ``runs_dir``.

    Records name folders inside the repository relative to it; runs made elsewhere (``suite.py --runs-dir``
    outside the repository) are found again under ``<runs_dir>/<task>/<algorithm>/seed<S>/``.

    :raises FileNotFoundError: if neither exists
    """
    named = os.path.join(REPO_ROOT, record.run_folder)
    if os.path.isdir(named):
        return named
    if runs_dir is not None:
        seed_dir = os.path.join(runs_dir, record.task, record.algorithm, f"seed{record.seed}")
        found = sorted(glob.glob(os.path.join(seed_dir, "**", "evaluations.npz"), recursive=True))
        if len(found) == 1:
            return os.path.dirname(found[0])
        # a resumed run (benchmarks/resume.py): its last segment, seg<N>, holds the final model
        segments = {int(m.group(1)): path for path in found if (m := re.match(r"seg(\d+)/", os.path.relpath(path, seed_dir)))}
        if segments:
            return os.path.dirname(segments[max(segments)])
    raise FileNotFoundError(f"run folder {record.run_folder!r} is gone (run folders are not committed)")


def evaluate_run(record: Any, episodes: int, eval_seed: int, runs_dir: str | None = None) -> list[dict[str, Any]]:
    """
    Evaluate the final model of one finished multi-task run on every task.

    :param record: the run's :class:`suite.RunRecord`
    :param episodes: episodes per task
    :param eval_seed: seed of the eval envs (env ``i`` gets ``eval_seed + i``)
    :param runs_dir: where to look for the run folder if the record's is gone (see :func:`find_run_folder`)
    :return: one row per task (see ``COLUMNS``)
    """
    import gymnasium as gym
    from rl_zoo3.utils import ALGOS
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_m3po.envs.multitask import get_task_set_spec, make_multitask_vec_env
    from sb3_m3po.zoo import register
    from sb3_m3po.zoo.callbacks import evaluate_tasks

    register()  # M3PO in rl-zoo3's ALGOS, our env ids in gymnasium
    spec = record.spec
    run_folder = find_run_folder(record, runs_dir)
    model_path = final_model_path(run_folder, spec["env"])
    probe = gym.make(spec["env"], **spec["env_kwargs"])
    task_set = get_task_set_spec(probe)
    action_repeat = int(probe.unwrapped.action_repeat)  # type: ignore[attr-defined]
    probe.close()
    if task_set is None:
        raise ValueError(f"{spec['env']} is not a multi-task env: final_eval.py is for multi-task suites")
    env = make_multitask_vec_env(task_set.env_ids, seed=eval_seed, action_repeat=action_repeat)
    stats = os.path.join(run_folder, spec["env"].replace("/", "-"), "vecnormalize.pkl")
    if os.path.isfile(stats):
        env = VecNormalize.load(stats, env)
        env.training, env.norm_reward = False, False
    model = ALGOS[spec["algo"]].load(model_path, device="cpu")
    result = evaluate_tasks(model, env, n_eval_episodes=episodes, deterministic=True, success="final")
    env.close()
    rows = []
    for k, name in enumerate(task_set.names):
        success = result.successes[k]
        rows.append(
            {
                "algorithm": record.algorithm,
                "seed": record.seed,
                "task": name,
                "episodes": episodes,
                "success_rate": None if np.isnan(success).any() else round(float(success.mean()), 4),
                "mean_return": round(float(result.returns[k].mean()), 2),
                "eval_seed": eval_seed,
                "model": shown_path(model_path),
                "run_commit": record.commit,
            }
        )
    return rows


def per_task_table(rows: list[dict[str, Any]], algorithms: list[str], metric: str) -> list[str]:
    """Markdown table: tasks x algorithms, mean over seeds [95 % bootstrap CI] (seeds), then the mean over tasks."""
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    lines = ["| task | " + " | ".join(algorithms) + " |", "|---|" + "---|" * len(algorithms)]
    matrices: dict[str, np.ndarray] = {}
    for algorithm in algorithms:
        seeds = sorted({row["seed"] for row in rows if row["algorithm"] == algorithm})
        values = {(row["seed"], row["task"]): row[metric] for row in rows if row["algorithm"] == algorithm}
        complete = [s for s in seeds if all(isinstance(values.get((s, t)), (int, float)) for t in tasks)]
        matrix = np.array([[values[(s, t)] for t in tasks] for s in complete], dtype=np.float64)
        matrices[algorithm] = matrix.reshape(len(complete), len(tasks))  # (0, tasks) when no seed is complete

    def cell(values: np.ndarray) -> str:
        if len(values) == 0:
            return "-"
        mean, low, high = bootstrap_mean_ci(values)
        return f"{format_cell(float(mean))} [{format_cell(float(low))}, {format_cell(float(high))}] ({len(values)})"

    for j, task in enumerate(tasks):
        lines.append(f"| {task} | " + " | ".join(cell(matrices[a][:, j]) for a in algorithms) + " |")
    lines.append("| mean over tasks | " + " | ".join(cell(matrices[a].mean(1)) for a in algorithms) + " |")
    return lines


def write_outputs(results_dir: str, suite_name: str, rows: list[dict[str, Any]], algorithm_order: list[str]) -> str:
    """Write ``final_eval.csv`` (one row per run and task) and ``final_eval.md``; returns the markdown."""
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "final_eval.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    present = {row["algorithm"] for row in rows}
    algorithms = [a for a in algorithm_order if a in present] + sorted(present - set(algorithm_order))
    episodes = sorted({int(row["episodes"]) for row in rows})
    with_success = any(isinstance(row["success_rate"], (int, float)) for row in rows)
    metric = "success_rate" if with_success else "mean_return"
    lines = [
        f"# Final evaluation: {suite_name}",
        "",
        f"Written by `python benchmarks/final_eval.py {suite_name}`. The final model of every finished run (saved at "
        f"the end of its budget) played {', '.join(map(str, episodes))} deterministic episode(s) of every task, one "
        "env per task, the same eval seed for every run; "
        + ("success is `info['is_success']` at the last step, as in the training evaluations." if with_success else "")
        + " The suite's own evaluations run one episode per task, so this is the less noisy final score.",
        "",
        f"{'Success rate' if with_success else 'Mean return'} per task: mean over seeds [95 % bootstrap CI] (seeds); "
        "the last row is the mean over tasks, its CI from resampling seeds.",
        "",
        *per_task_table(rows, algorithms, metric),
        "",
        "Per run: `final_eval.csv`.",
    ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(results_dir, "final_eval.md"), "w") as handle:
        handle.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("suite", help="suite name (benchmarks/suites/<name>.yml) or path")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the eval envs (default 1000)")
    parser.add_argument("--only-algos", nargs="+", metavar="NAME", help="evaluate only these algorithms")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S", help="evaluate only these seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--runs-dir", help="where runs moved or made outside the repository are (suite.py --runs-dir)")
    parser.add_argument("--results-dir", help="results folder (default benchmarks/results/<suite>)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")

    import torch

    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    results_dir = os.path.abspath(args.results_dir or os.path.join(REPO_ROOT, "benchmarks", "results", suite.name))
    rows: list[dict[str, Any]] = []
    for path in sorted(glob.glob(os.path.join(results_dir, "raw", "*", "*.json"))):
        record = load_record(path)
        if record.per_task_final is None or (args.only_algos and record.algorithm not in args.only_algos):
            continue
        if args.seeds is not None and record.seed not in args.seeds:
            continue
        label = f"{record.task}/{record.algorithm}/seed{record.seed}"
        try:
            start = time.perf_counter()
            run_rows = evaluate_run(record, args.episodes, args.eval_seed, args.runs_dir)
        except FileNotFoundError as e:
            print(f"skipped {label}: {e}")
            continue
        mean = np.mean([r["success_rate"] if r["success_rate"] is not None else r["mean_return"] for r in run_rows])
        print(f"{label}: mean over tasks {mean:.3f} ({time.perf_counter() - start:.0f} s)")
        rows += run_rows
    if not rows and not os.path.exists(os.path.join(results_dir, "final_eval.csv")):
        print(f"no finished multi-task runs with a final model under {results_dir}")
        return 1
    rows = merge_previous(os.path.join(results_dir, "final_eval.csv"), rows, KEY)
    print(write_outputs(results_dir, suite.name, rows, list(suite.algorithms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
