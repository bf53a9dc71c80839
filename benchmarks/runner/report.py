"""
A suite's report from its committed raw records: ``runs.csv``, ``summary.md`` and the figures.

Records and curves are read into two pandas tables (one row per run, one row per evaluation). Per-task CIs
are percentile bootstraps over seeds; aggregates (IQM, mean, performance profiles) come from rliable. Every
resampling is seeded, so regenerating a summary from the same records gives the same numbers.
"""

import json
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from runner import BENCH_DIR
from runner.runs import Layout, shown_path, write_atomic
from runner.spec import Run, Suite, current_spec

# Published scores (with their sources). TD-MPC2's result files count simulator steps: the action repeat is
# applied before they are written (maintainer's answer, nicklashansen/tdmpc2 issue #45).
REFERENCES = pd.read_csv(os.path.join(BENCH_DIR, "references.csv"))
REFERENCE_STEPS = 100_000
PLOTTED_REFERENCES = {"TD-MPC2": ("*", "black", 12), "SAC": ("D", "dimgray", 7)}
MAIN_ALGORITHMS = ("m3po", "ppo", "sac", "crossq")  # the main figure's lines, the same colour in every suite
RESAMPLES = 2000
CSV_COLUMNS = (
    "task env algorithm algo seed sim_steps final_score normalised_final_score best_score wall_seconds "
    "sim_steps_per_second peak_rss_mib commit device machine finished_at"
).split()
Finals = Callable[[str, str], pd.Series]  # (task, algorithm) -> final scores of its seeds


def published(env: str, method: str) -> float | None:
    rows = REFERENCES[(REFERENCES.env == env) & (REFERENCES.method == method) & (REFERENCES.sim_steps == REFERENCE_STEPS)]
    return float(rows.score.iloc[0]) if len(rows) else None


def _resampled_means(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Means over the last axis of ``RESAMPLES`` resamples of it with replacement (new last axis)."""
    n = values.shape[-1]
    return values[..., rng.integers(0, n, (RESAMPLES, n))].mean(-1)


def mean_ci(values: Any, axis: int = 0) -> tuple[Any, Any, Any]:
    """Mean over ``axis`` (seeds) with a 95 % percentile-bootstrap interval; a single seed gives a point."""
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    low, high = np.percentile(_resampled_means(values, np.random.default_rng(0)), [2.5, 97.5], axis=-1)
    return values.mean(-1), low, high


def diff_ci(a: Any, b: Any) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` with a 95 % percentile-bootstrap interval, the seeds of each side resampled independently."""
    a, b, rng = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), np.random.default_rng(0)
    low, high = np.percentile(_resampled_means(a, rng) - _resampled_means(b, rng), [2.5, 97.5])
    return float(a.mean() - b.mean()), float(low), float(high)


def load_results(suite: Suite, layout: Layout) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """
    The suite's finished runs (one row per record) and their curves (one row per evaluation), and notes on
    records left out because the suite file now gives another configuration.
    """
    records, curves, notes = [], [], []
    for task in suite.tasks.values():
        for algorithm in suite.algorithms.values():
            folder = os.path.join(layout.results, "raw", task.name)
            mine = re.compile(rf"{re.escape(algorithm.name)}_seed\d+\.json")  # for m3po not m3po_seed5k_seed0.json
            names = sorted(n for n in (os.listdir(folder) if os.path.isdir(folder) else []) if mine.fullmatch(n))
            for path in (os.path.join(folder, name) for name in names):
                with open(path) as f:
                    record = json.load(f)
                if current_spec(record["spec"]) != Run(task, algorithm, record["seed"]).spec():
                    notes.append(f"{shown_path(path)} (made with another configuration)")
                    continue
                records.append({**record, "env": task.env, "algo": algorithm.algo, "sim_steps": task.sim_steps})
                curves.append(pd.read_csv(path[: -len(".json")] + ".csv"))
    runs = pd.DataFrame(records)
    if len(runs):
        runs["normalised_final_score"] = [suite.tasks[t].normalise(s) for t, s in zip(runs.task, runs.final_score)]
        order = {**{n: i for i, n in enumerate(suite.tasks)}, **{n: i for i, n in enumerate(suite.algorithms)}}
        by_suite = lambda column: column.map(order) if column.name in ("task", "algorithm") else column  # noqa: E731
        runs = runs.sort_values(["task", "algorithm", "seed"], key=by_suite, kind="stable", ignore_index=True)
    return runs, pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(), notes


def _fmt(value: float, score: str, sign: bool = False) -> str:
    return f"{value:{'+' if sign else ''}.{2 if score == 'success' else 0}f}"


def _interval(values: Any, score: str) -> str:
    mean, low, high = mean_ci(values)
    return f"{_fmt(mean, score)} [{_fmt(low, score)}, {_fmt(high, score)}] ({len(values)})"


def _colors(suite: Suite) -> dict[str, Any]:
    import matplotlib

    palette = list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors[1::2])
    names = [n for n in MAIN_ALGORITHMS if n in suite.algorithms] + [n for n in suite.algorithms if n not in MAIN_ALGORITHMS]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def plot_curves(
    suite: Suite, curves: pd.DataFrame, path: str, algorithms: list[str], references: bool, title: str = ""
) -> bool:
    """
    One panel per task: the mean over seeds with its 95 % bootstrap band, and the published 100k values.

    :return: False (and no figure) when none of ``algorithms`` has a finished run yet
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    tasks = [t for t in suite.tasks.values() if ((curves.task == t.name) & curves.algorithm.isin(algorithms)).any()]
    if not tasks:
        return False
    ncols = 2 if len(tasks) == 4 else min(len(tasks), 3)
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    colors, handles = _colors(suite), {}
    for ax, task in zip(axes.flat, tasks):
        for algorithm in algorithms:
            table = curves[(curves.task == task.name) & (curves.algorithm == algorithm)]
            if len(table):  # steps every seed reached (they share the evaluation grid)
                grid = table.pivot_table(index="sim_steps", columns="seed", values="score").interpolate().dropna()
                mean, low, high = mean_ci(grid.to_numpy(), axis=1)
                (handles[algorithm],) = ax.plot(grid.index, mean, color=colors[algorithm], lw=1.8)
                ax.fill_between(grid.index, low, high, color=colors[algorithm], alpha=0.2, lw=0)
        for name, (marker, color, size) in PLOTTED_REFERENCES.items():
            value, label = published(task.env, name) if references else None, f"{name} published, 100k"
            if value is not None and task.sim_steps >= REFERENCE_STEPS:
                (handles[label],) = ax.plot([REFERENCE_STEPS], [value], marker, color=color, ms=size, zorder=5)
            elif value is not None:  # the budget ends before 100k: the level instead of a point off the axis
                handles[label] = ax.axhline(value, color=color, ls=":", lw=1)
        ax.set_title(f"{task.name} (action repeat {task.action_repeat})", fontsize=10)
        ax.set(xlabel="simulator steps", ylabel="success rate" if task.score == "success" else "episode return")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    rows = -(-len(handles) // 5)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=-(-len(handles) // rows), fontsize=9, frameon=False)
    fig.suptitle(f"suite {suite.name}{title}: mean over seeds, 95 % bootstrap CI", fontsize=11)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.06 / nrows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def aggregate(suite: Suite, runs: pd.DataFrame) -> tuple[dict[str, np.ndarray], pd.DataFrame, list[str]]:
    """
    rliable's IQM and mean (95 % stratified bootstrap CIs) of the normalised final scores, for algorithms
    with runs on every task (the seeds they have on every task), and notes on those left out.
    """
    from rliable import library as rly
    from rliable import metrics

    matrices, rows, notes = {}, [], []
    for algorithm in suite.algorithms:
        table = runs[runs.algorithm == algorithm].pivot_table(index="seed", columns="task", values="normalised_final_score")
        table = table.reindex(columns=list(suite.tasks)).dropna()
        if not len(table):
            notes += [f"{algorithm}: not yet one seed on every task"] if (runs.algorithm == algorithm).any() else []
            continue
        matrices[algorithm] = matrix = table.to_numpy()
        with warnings.catch_warnings():  # arch deprecates RandomState seeding; rliable 1.2 offers no other way
            warnings.simplefilter("ignore", FutureWarning)
            np.random.seed(0)  # rliable's StratifiedBootstrap draws its indices from numpy's global generator
            point, interval = rly.get_interval_estimates(
                {algorithm: matrix},
                lambda m: np.array([metrics.aggregate_iqm(m), metrics.aggregate_mean(m)]),
                reps=RESAMPLES,
                random_state=np.random.RandomState(0),
            )
        (iqm, mean), (low, high) = point[algorithm], interval[algorithm]
        row: dict[str, Any] = {"algorithm": algorithm, "seeds per task": len(matrix)}
        for i, (key, value) in enumerate((("IQM", iqm), ("mean", mean))):
            row[f"{key} [95 % CI]"] = f"{value:.3f} [{low[i]:.3f}, {high[i]:.3f}]"
            row[key.lower()] = (value, low[i], high[i])
        rows.append(row)
    return matrices, pd.DataFrame(rows), notes


def plot_aggregate(suite: Suite, matrices: dict[str, np.ndarray], table: pd.DataFrame, path: str) -> None:
    """IQM and mean with their CIs (bars) and the performance profile with its CI band."""
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import plot_utils

    colors, names = _colors(suite), list(table.algorithm)
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(names) + 2.6), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, metric in zip(axes[:2], ("iqm", "mean")):
        for y, (name, (point, low, high)) in enumerate(zip(names, table[metric])):
            ax.barh(y, high - low, left=low, height=0.6, color=colors[name], alpha=0.6)
            ax.plot([point, point], [y - 0.3, y + 0.3], color="black", lw=1.5)
        ax.set_yticks(range(len(names)), names if metric == "iqm" else [""] * len(names))
        ax.invert_yaxis()
        ax.set(title="IQM" if metric == "iqm" else "Mean", xlabel="normalised score")
        ax.grid(axis="x", alpha=0.3)
    values = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(min(0.0, values.min()), max(1.0, values.max()), 81)
    np.random.seed(0)  # the profile bootstrap draws from the global generator too
    profiles, cis = rly.create_performance_profile(matrices, taus, reps=RESAMPLES)
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=cis, colors=colors, ax=axes[2], xlabel=r"normalised score $\tau$",
        ylabel=r"fraction of runs with score > $\tau$", labelsize="medium", ticklabelsize="medium",
    )  # fmt: skip
    axes[2].set_title("Performance profile (final scores, all tasks and seeds)", fontsize=10)
    axes[2].legend([plt.Line2D([], [], color=colors[n]) for n in names], names, fontsize=8, loc="lower left")
    fig.suptitle(f"suite {suite.name}: aggregate over {len(suite.tasks)} task(s), 95 % stratified bootstrap CIs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _section(title: str, intro: str, rows: list[dict[str, Any]] | pd.DataFrame, empty: str = "(none yet)") -> list[str]:
    frame = pd.DataFrame(rows)
    table = frame.to_markdown(index=False, tablefmt="github", disable_numparse=True).splitlines() if len(frame) else [empty]
    return ["", f"## {title}", "", intro, "", *table]


def _count(hits: dict[str, list[int]]) -> dict[str, str]:
    return {name: f"{n} of {total}" if total else "-" for name, (n, total) in hits.items()}


def _final_scores(suite: Suite, finals: Finals) -> list[dict[str, str]]:
    rows = []
    for task in suite.tasks.values():
        budget = f"{task.sim_steps // 1000}k" if task.sim_steps % 1000 == 0 else str(task.sim_steps)
        row = {"task": task.name, "budget": budget}
        for algorithm in suite.algorithms:
            scores = finals(task.name, algorithm)
            row[algorithm] = _interval(scores, task.score) if len(scores) else "-"
        for name in PLOTTED_REFERENCES:
            value = published(task.env, name)
            row[f"{name} @100k (published)"] = "-" if value is None else _fmt(value, task.score)
        rows.append(row)
    return rows


def _versus(suite: Suite, finals: Finals) -> list[dict[str, str]]:
    """Each algorithm's baseline (its ``compare_to``, else the first) minus it, task by task, and the count of
    tasks the baseline leads."""
    first, *others = suite.algorithms
    bases = {name: suite.algorithms[name].compare_to or first for name in others}
    pairs = {f"{base} - {name}": (base, name) for name, base in bases.items()}
    rows, ahead = [], {key: [0, 0] for key in pairs}
    for task in suite.tasks.values():
        row = {"task": task.name}
        for key, (base, name) in pairs.items():
            mine, theirs, row[key] = finals(task.name, base), finals(task.name, name), "-"
            if len(mine) and len(theirs):
                diff, low, high = diff_ci(mine, theirs)
                ahead[key] = [ahead[key][0] + (diff > 0), ahead[key][1] + 1]
                interval = f"[{_fmt(low, task.score)}, {_fmt(high, task.score)}]"
                row[key] = f"{_fmt(diff, task.score, True)} {interval} ({len(mine)} vs {len(theirs)})"
        rows.append(row)
    return [*rows, {"task": "the left entry ahead on", **_count(ahead)}]


def _gap(suite: Suite, finals: Finals) -> list[dict[str, str]]:
    """Each algorithm's mean final score minus TD-MPC2's published 100k value."""
    rows, hits = [], {a: [0, 0] for a in suite.algorithms}
    for task in suite.tasks.values():
        reference = published(task.env, "TD-MPC2")
        if reference is None or task.sim_steps != REFERENCE_STEPS:
            continue
        row = {"task": task.name, "TD-MPC2": _fmt(reference, task.score)}
        for algorithm in suite.algorithms:
            scores, row[algorithm] = finals(task.name, algorithm), "-"
            if len(scores):
                gap = float(scores.mean()) - reference
                hits[algorithm] = [hits[algorithm][0] + (gap >= 0), hits[algorithm][1] + 1]
                row[algorithm] = f"{'+' if gap >= 0 else ''}{_fmt(gap, task.score)} ({100 * gap / reference:+.0f} %)"
        rows.append(row)
    return rows and [*rows, {"task": "at or above TD-MPC2", "TD-MPC2": "", **_count(hits)}]


def _wall_clock(runs: pd.DataFrame, curves: pd.DataFrame, finals: Finals) -> list[dict[str, str]]:
    """Mean wall-clock per run, and the time each algorithm's runs took to first reach SAC's mean final score."""
    rows = []
    for (name, algorithm), mine in runs.groupby(["task", "algorithm"], sort=False):
        sac, reach = finals(name, "sac"), "-"
        if len(sac):  # wall-clock scaled by the share of the budget done at the first evaluation at or above it
            times = []
            for record in mine.itertuples():
                curve = curves[(curves.task == name) & (curves.algorithm == algorithm) & (curves.seed == record.seed)]
                # the curves are stored with 6 significant digits, the records' final scores in full
                hit = curve.sim_steps[curve.score >= float(f"{sac.mean():.6g}")]
                times.append(record.wall_seconds * hit.iloc[0] / record.sim_steps / 60 if len(hit) else np.nan)
            reached = [t for t in times if not np.isnan(t)]
            reach = f"{np.mean(reached):.0f}" if reached else "not reached"
            reach += f" ({len(reached)} of {len(times)})"
        rows.append(
            {
                "task": name,
                "algorithm": algorithm,
                "runs": str(len(mine)),
                "wall-clock per run (min)": f"{mine.wall_seconds.mean() / 60:.0f}",
                "sim steps/s": f"{mine.sim_steps_per_second.mean():.1f}",
                "minutes to SAC's final score (runs reaching it)": reach,
            }
        )
    return rows


def _per_task(suite: Suite, runs: pd.DataFrame) -> list[str]:
    """Multi-task envs: every task's final score, and the mean over tasks (its CI from resampling seeds)."""
    lines: list[str] = []
    for task in suite.tasks.values():
        mine = runs[(runs.task == task.name) & runs.per_task_final.notna()] if "per_task_final" in runs else runs[:0]
        if not len(mine):
            continue
        names = list(dict.fromkeys(n for final in mine.per_task_final for n in final))
        table: dict[str, dict[str, str]] = {n: {} for n in [*names, "mean over tasks"]}
        for algorithm, group in mine.groupby("algorithm", sort=False):
            finals = pd.DataFrame(list(group.per_task_final))
            for name in names:
                table[name][algorithm] = _interval(finals[name].dropna(), task.score) if name in finals else "-"
            complete = finals.dropna()
            table["mean over tasks"][algorithm] = _interval(complete.mean(axis=1), task.score) if len(complete) else "-"
        intro = f"Final {task.score} of every task of `{task.env}`, mean over seeds [95 % CI] (seeds)."
        lines += _section(f"Per task: {task.name}", intro, [{"task": n, **cells} for n, cells in table.items()])
    return lines


def _figures(suite: Suite, runs: pd.DataFrame, curves: pd.DataFrame, folder: str) -> list[str]:
    """The aggregate figure, the main algorithms' curves and the other algorithms' (ablations) with ``m3po``."""
    matrices, agg, notes = aggregate(suite, runs)
    intro = "Normalised final scores (score_range of each task), 95 % stratified bootstrap CIs."
    shown = agg.drop(columns=["iqm", "mean"]) if len(agg) else []
    lines = _section("Aggregate (rliable)", intro, shown, empty="No algorithm has runs on every task yet.")
    lines += [f"* {note}" for note in notes]
    if len(agg):
        plot_aggregate(suite, matrices, agg, os.path.join(folder, "aggregate.png"))
        lines += ["", "![aggregate](aggregate.png)"]
    main = [a for a in MAIN_ALGORITHMS if a in suite.algorithms] or list(suite.algorithms)
    lines += ["", "## Learning curves", ""]
    if plot_curves(suite, curves, os.path.join(folder, "learning_curves.png"), main, references=True):
        lines += ["![learning curves](learning_curves.png)"]
    else:
        lines += [f"No finished runs of {', '.join(f'`{a}`' for a in main)} yet."]
    others = [a for a in suite.algorithms if a not in main and a in set(runs.algorithm)]
    if others and "m3po" in main:
        path, title = os.path.join(folder, "ablations.png"), " (ablations, diagnostics)"
        plot_curves(suite, curves, path, ["m3po", *others], False, title)
        lines += ["", "Ablations and diagnostics, with `m3po` for reference:", "", "![ablations](ablations.png)"]
    return lines


def summarize(suite: Suite, layout: Layout) -> str:
    """Write ``runs.csv``, ``summary.md`` and the figures from the finished runs; return the summary."""
    import matplotlib

    matplotlib.use("Agg")
    runs, curves, left_out = load_results(suite, layout)
    groups = {key: group.final_score for key, group in runs.groupby(["task", "algorithm"])} if len(runs) else {}
    finals: Finals = lambda task, algorithm: groups.get((task, algorithm), pd.Series(dtype=float))  # noqa: E731
    os.makedirs(layout.results, exist_ok=True)
    total = len(suite.tasks) * len(suite.algorithms) * len(suite.seeds)
    lines = [f"# Benchmark suite `{suite.name}`", "", *([suite.description, ""] if suite.description else [])]
    lines += [
        f"Produced by `python benchmarks/suite.py {suite.name}` from `{shown_path(suite.path)}`: every run is "
        "`python -m sb3_m3po.zoo.train` (rl-zoo3) with the shipped `hyperparams/<algo>.yml` plus the suite file's "
        "overrides, one torch thread per run (`runs.csv` lists every run). Budgets and steps are simulator steps "
        "(action repeat counted); scores are those of deterministic evaluations, the final score the one at the budget.",
        "",
        f"Finished runs: {len(runs)} of {total} ({len(suite.tasks)} task(s) x {len(suite.algorithms)} algorithm(s) x "
        f"{len(suite.seeds)} seed(s)).",
    ]
    if len(runs):
        lines += ["", "Machines:", "", *[f"* M{i + 1}: {m}" for i, m in enumerate(sorted(set(runs.machine)))], ""]
        commits = ", ".join(f"`{c}`" for c in sorted(set(runs.commit)))
        lines += [f"Devices: {', '.join(sorted(set(runs.device)))}. Code: commit(s) {commits}."]
    if left_out:
        lines += ["", "Left out (delete them, or restore the suite file they were made with):", ""]
        lines += [f"* {n}" for n in left_out]
    lines += _section("Final score", "Mean over seeds [95 % bootstrap CI] (seeds).", _final_scores(suite, finals))
    if len(runs):
        lines += _per_task(suite, runs)
        if len(suite.algorithms) > 1:
            first = next(iter(suite.algorithms))
            intro = "Difference of mean final scores [95 % bootstrap CI, seeds resampled on both sides]; "
            intro += f"> 0: the entry left of the minus ahead (`{first}`, or the entry an algorithm names in `compare_to`)."
            lines += _section(f"`{first}` against the others", intro, _versus(suite, finals))
        gap = _gap(suite, finals)
        if gap:
            intro = "Mean final score minus TD-MPC2's value; TD-MPC2's result files count simulator steps "
            intro += "(nicklashansen/tdmpc2 issue #45)."
            lines += _section("Gap to TD-MPC2 (published, 100k simulator steps)", intro, gap)
        lines += _figures(suite, runs, curves, layout.results)
        intro = (
            "Whole training process (start-up and evaluations included); the time to SAC's final score scales each "
            "run's wall-clock by the share of its budget done at its first evaluation at or above SAC's mean."
        )
        lines += _section("Wall-clock", intro, _wall_clock(runs, curves, finals))
        csv = runs[CSV_COLUMNS].to_csv(index=False, float_format="%.6g", lineterminator="\n")
        write_atomic(os.path.join(layout.results, "runs.csv"), csv)  # the suite file holds what each task is
    text = "\n".join(lines) + "\n"
    write_atomic(os.path.join(layout.results, "summary.md"), text)
    return text
