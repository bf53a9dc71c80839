"""
Benchmark suite runner: tasks x algorithms x seeds, trained through ``python -m sb3_m3po.zoo.train`` (rl-zoo3).

Usage::

    python benchmarks/suite.py dmc                       # run what is missing, then summarize
    python benchmarks/suite.py dmc --workers 2 --only-algos m3po sac --only-tasks cartpole-swingup --seeds 0
    python benchmarks/suite.py dmc --summarize           # only rewrite the summary of finished runs
    python benchmarks/suite.py path/to/my_suite.yml      # a suite file outside benchmarks/suites/

Each run is the command a user would type, started as a subprocess in its own folder
``benchmarks/runs/<suite>/<task>/<algorithm>/seed<S>/`` (models, tensorboard, ``train.log``; gitignored)::

    python -m sb3_m3po.zoo.train --algo <algo> --env <env> -n <sim_steps / action_repeat> --seed <S> -f <folder>
        --eval-freq <eval_every / action_repeat> --eval-episodes <eval_episodes> --num-threads 1 -tb <folder>/tb
        --checkpoint-freq <eval_every / action_repeat> [--env-kwargs k:v ...] [-params k:v ...] [extra args]

so the hyperparameters are those of ``hyperparams/<algo>.yml`` (rl-zoo3's own files for env ids we ship
none for) plus the algorithm's ``params``. Up to ``--workers`` runs (default: number of cores) execute at
once, each with one torch/OpenMP thread. A finished run leaves ``benchmarks/results/<suite>/raw/<task>/
<algorithm>_seed<S>.csv`` (its evaluation curve) and ``.json`` (its record: score, wall-clock, simulator
steps/s, commit, machine) and is skipped next time. Every run saves a resumable checkpoint at each
evaluation (``--checkpoint-freq``); a run without a record continues from its latest checkpoint, when it
has one, and is otherwise restarted from scratch (``benchmarks/resume.py``).
A record made with a different configuration than the suite file now gives is never overwritten: the
runner stops and names it. At the end (or with ``--summarize``) the results folder gets ``runs.csv``,
``summary.md``, ``learning_curves.png`` and ``aggregate.png`` (rliable IQM and performance profile).

Suite file format (``benchmarks/suites/<name>.yml``)::

    description: free text, copied into summary.md          # optional
    seeds: [0, 1, 2]                                         # required
    defaults:                                                # optional: task fields shared by all tasks
      action_repeat: 2
      sim_steps: 100000
    tasks:                                                   # required: short name -> task
      cartpole-swingup:
        env: dm_control/cartpole-swingup-v0                  # required: env id given to --env
        action_repeat: 2        # simulator steps per decision (default 1); checked against what is applied: the
                                # DMCWrapper of hyperparams/<algo>.yml or the env's own action_repeat kwarg
        sim_steps: 100000       # required: budget in simulator steps (a multiple of eval_every)
        eval_every: 10000       # required: simulator steps between evaluations (a multiple of action_repeat)
        eval_episodes: 5        # required: episodes per evaluation (deterministic)
        score: return           # required: "return" (mean episode return) or "success" (mean of the
                                # evaluations' ``successes``, i.e. info["is_success"] at episode end)
        score_range: [0, 1000]  # optional: [worst, best] for normalised scores in the aggregate
                                # (default [0, 1000] for return, [0, 1] for success)
        env_kwargs: {}          # optional: --env-kwargs of rl-zoo3 (values are Python literals)
        extra_args: []          # optional: more rl-zoo3 train flags for every run of this task
    algorithms:                                              # required: name -> algorithm
      m3po_no_bonus:
        algo: m3po              # required: rl-zoo3 algorithm
        params: {bonus_coef: 0.0}   # optional: hyperparameter overrides (-params), Python literals
        extra_args: []          # optional: more rl-zoo3 train flags for every run of this algorithm

Budgets and evaluation steps are simulator steps (TD-MPC2's convention): with action repeat 2,
100k simulator steps are 50k agent decisions, which is what rl-zoo3's ``-n`` counts. The flags the
runner sets itself (``--algo --env -n --seed -f --eval-freq --eval-episodes --num-threads -params
--env-kwargs``) cannot appear in ``extra_args``.
"""

import argparse
import csv
import dataclasses
import difflib
import glob
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import yaml

from sb3_m3po.common.utils import load_yaml
from sb3_m3po.m3po.save_util import migrate_settings

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
SUITES_DIR = os.path.join(BENCH_DIR, "suites")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
RUNS_DIR = os.path.join(BENCH_DIR, "runs")
if BENCH_DIR not in sys.path:  # the runner is also loaded from its path (tests), not only run as a script
    sys.path.insert(0, BENCH_DIR)
from provenance import code_version, machine_description  # noqa: E402  (same folder)
from resume import (  # noqa: E402  (same folder)
    Segment,
    drop_checkpoints,
    join_segments,
    read_segments,
    resume_point,
    segment_evaluations,
    segment_folder,
    write_segments,
)


# Published scores at 100k simulator steps (benchmarks/references.csv, with their sources), keyed by our
# env id. TD-MPC2's result files count simulator steps: its trainer counts decisions, and the action
# repeat is applied before the files are written (maintainer's answer, nicklashansen/tdmpc2 issue #45).
def _load_references(path: str) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            table.setdefault(row["env"], {})[row["method"]] = float(row["score"])
    return table


REFERENCE_100K = _load_references(os.path.join(os.path.dirname(os.path.abspath(__file__)), "references.csv"))
REFERENCE_STEPS = 100_000
# The published values drawn as markers on the learning curves.
PLOTTED_REFERENCES = ("TD-MPC2", "SAC")

SCORE_KINDS = ("return", "success")
DEFAULT_SCORE_RANGE = {"return": (0.0, 1000.0), "success": (0.0, 1.0)}

# Flags the runner sets for every run; a suite setting them too would silently win or lose (argparse
# keeps the last value), so they are refused in extra_args.
RUNNER_FLAGS = frozenset(
    {
        "--algo",
        "--env",
        "-n",
        "--n-timesteps",
        "--seed",
        "-f",
        "--log-folder",
        "--eval-freq",
        "--eval-episodes",
        "--num-threads",
        "-params",
        "--hyperparams",
        "--env-kwargs",
        "-i",
        "--trained-agent",
        "--checkpoint-freq",
        "-optimize",
        "--optimize-hyperparameters",
    }
)

TOP_KEYS = {"description": False, "seeds": True, "defaults": False, "tasks": True, "algorithms": True}
TASK_KEYS = {
    "env": True,
    "action_repeat": False,
    "sim_steps": True,
    "eval_every": True,
    "eval_episodes": True,
    "score": True,
    "score_range": False,
    "env_kwargs": False,
    "extra_args": False,
}
ALGO_KEYS = {"algo": True, "params": False, "extra_args": False}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SuiteError(ValueError):
    """A suite file, a command-line selection or an existing record that cannot be used, with the reason."""


@dataclass(frozen=True)
class Task:
    """
    One environment with its budget and how it is scored.

    :param name: short name (folder and table name)
    :param env: env id passed to ``--env``
    :param action_repeat: simulator steps per agent decision
    :param sim_steps: budget in simulator steps
    :param eval_every: simulator steps between evaluations
    :param eval_episodes: episodes per evaluation
    :param score: ``"return"`` or ``"success"``
    :param score_range: (worst, best) used to normalise scores to [0, 1] for the aggregate
    :param env_kwargs: rl-zoo3 ``--env-kwargs``
    :param extra_args: further rl-zoo3 train flags
    """

    name: str
    env: str
    action_repeat: int
    sim_steps: int
    eval_every: int
    eval_episodes: int
    score: str
    score_range: tuple[float, float]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()

    @property
    def decisions(self) -> int:
        """Budget in agent decisions (rl-zoo3's ``-n``)."""
        return self.sim_steps // self.action_repeat

    def normalise(self, score: float) -> float:
        """Score mapped linearly so that ``score_range`` becomes [0, 1]."""
        low, high = self.score_range
        return (score - low) / (high - low)


@dataclass(frozen=True)
class Algorithm:
    """
    An rl-zoo3 algorithm with hyperparameter overrides (an ablation is a name with different ``params``).

    :param name: name in tables and folders
    :param algo: rl-zoo3 algorithm (``m3po``, ``ppo``, ``sac``, ...)
    :param params: hyperparameter overrides (rl-zoo3 ``-params``)
    :param extra_args: further rl-zoo3 train flags
    """

    name: str
    algo: str
    params: dict[str, Any] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    """
    A parsed suite file.

    :param name: suite name (file stem), names the results and runs folders
    :param path: the suite file
    :param description: free text for the summary
    :param seeds: seeds of every (task, algorithm)
    :param tasks: tasks by name, in file order
    :param algorithms: algorithms by name, in file order
    """

    name: str
    path: str
    description: str
    seeds: tuple[int, ...]
    tasks: dict[str, Task]
    algorithms: dict[str, Algorithm]


@dataclass(frozen=True)
class Run:
    """One (task, algorithm, seed) of a suite."""

    task: Task
    algorithm: Algorithm
    seed: int

    @property
    def label(self) -> str:
        return f"{self.task.name}/{self.algorithm.name}/seed{self.seed}"

    def spec(self) -> dict[str, Any]:
        """Everything that changes what the run trains; a record is reused only if its spec is equal."""
        spec = {
            "env": self.task.env,
            "action_repeat": self.task.action_repeat,
            "sim_steps": self.task.sim_steps,
            "eval_every": self.task.eval_every,
            "eval_episodes": self.task.eval_episodes,
            "score": self.task.score,
            "env_kwargs": self.task.env_kwargs,
            "task_extra_args": list(self.task.extra_args),
            "algo": self.algorithm.algo,
            "params": self.algorithm.params,
            "algo_extra_args": list(self.algorithm.extra_args),
        }
        return json.loads(json.dumps(spec))  # the form it takes after a JSON round trip


@dataclass
class RunRecord:
    """
    What a finished run leaves behind (``raw/<task>/<algorithm>_seed<S>.json``).

    :param suite: suite name
    :param task: task name
    :param algorithm: algorithm name
    :param seed: seed
    :param spec: :meth:`Run.spec` of the run
    :param final_score: score of the last evaluation (at the budget)
    :param best_score: best evaluation score
    :param final_sim_steps: simulator steps at the last evaluation
    :param n_evaluations: number of evaluations
    :param wall_seconds: wall-clock of the whole training process (start-up and evaluations included)
    :param sim_steps_per_second: ``spec["sim_steps"] / wall_seconds``
    :param commit: git short hash of the code, ``+dirty`` if ``sb3_m3po/`` or ``hyperparams/`` had changes
    :param machine: platform, CPU, cores, Python and torch versions
    :param device: torch device of the run
    :param finished_at: UTC time the run ended
    :param command: the training command (paths relative to the repository)
    :param run_folder: the rl-zoo3 run folder (models, ``evaluations.npz``, tensorboard)
    :param peak_rss_mib: peak resident memory of the training process (``VmHWM``; None where not measured)
    :param per_task_final: multi-task envs: final score of every task (task name -> score), None otherwise
    :param relabelled: records of earlier versions: the algorithm name and spec the run was made under, and why it was renamed
        they were changed afterwards (e.g. a package default changed to the value the run had set)
    :param resumed_at: simulator steps at which the run was continued from a checkpoint after being cut
        off (None: trained in one go); ``wall_seconds`` then sums all its segments, repeated work included
    """

    suite: str
    task: str
    algorithm: str
    seed: int
    spec: dict[str, Any]
    final_score: float
    best_score: float
    final_sim_steps: int
    n_evaluations: int
    wall_seconds: float
    sim_steps_per_second: float
    commit: str
    machine: str
    device: str
    finished_at: str
    command: str
    run_folder: str
    peak_rss_mib: float | None = None
    per_task_final: dict[str, float] | None = None
    relabelled: str | None = None
    resumed_at: list[int] | None = None


class Curve(NamedTuple):
    """Evaluation curve of one run (one entry per evaluation)."""

    sim_steps: np.ndarray
    decisions: np.ndarray
    score: np.ndarray
    return_mean: np.ndarray
    return_std: np.ndarray
    success_rate: np.ndarray  # NaN where the env reports no success
    episode_length: np.ndarray  # as SB3's Monitor counts it: simulator steps for DMC (the repeat wraps the Monitor)


# ---------------------------------------------------------------------------------------------------------
# Suite files


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(where: str, mapping: Any, allowed: dict[str, bool]) -> None:
    if not isinstance(mapping, dict):
        raise SuiteError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            raise SuiteError(
                f"{where}: unknown key '{key}'{_did_you_mean(str(key), list(allowed))} (allowed: {', '.join(allowed)})"
            )
    missing = [key for key, required in allowed.items() if required and key not in mapping]
    if missing:
        raise SuiteError(f"{where}: missing required field(s) {', '.join(repr(k) for k in missing)}")


def _positive_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SuiteError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def _string_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{where}: '{key}' must be a list of strings (command-line tokens), got {value!r}")
    for token in value:
        flag = token.split("=", 1)[0]
        if flag in RUNNER_FLAGS:
            raise SuiteError(
                f"{where}: '{key}' sets {flag}, which the runner sets itself "
                "(use the task/algorithm fields: env, sim_steps, eval_every, eval_episodes, env_kwargs, params)"
            )
    return tuple(value)


def _literal_mapping(where: str, key: str, value: Any) -> dict[str, Any]:
    """A mapping whose values survive rl-zoo3's ``name:value`` command-line form (it evals the value)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SuiteError(f"{where}: '{key}' must be a mapping name -> value, got {value!r}")
    for name, item in value.items():
        try:
            same = eval(repr(item), {}) == item
        except Exception:
            same = False
        if not same:
            raise SuiteError(f"{where}: {key} value {name}: {item!r} cannot be passed on the command line")
    return dict(value)


def _check_name(where: str, name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SuiteError(f"{where}: name {name!r} must be letters, digits, '_', '-', '.' (it names folders)")
    return name


def _parse_task(where: str, name: str, raw: dict[str, Any]) -> Task:
    score = raw["score"]
    if score not in SCORE_KINDS:
        raise SuiteError(f"{where}: 'score' must be one of {', '.join(SCORE_KINDS)}, got {score!r}")
    if not isinstance(raw["env"], str) or not raw["env"]:
        raise SuiteError(f"{where}: 'env' must be an env id, got {raw['env']!r}")
    action_repeat = _positive_int(where, "action_repeat", raw.get("action_repeat", 1))
    sim_steps = _positive_int(where, "sim_steps", raw["sim_steps"])
    eval_every = _positive_int(where, "eval_every", raw["eval_every"])
    eval_episodes = _positive_int(where, "eval_episodes", raw["eval_episodes"])
    for key, value in (("sim_steps", sim_steps), ("eval_every", eval_every)):
        if value % action_repeat:
            raise SuiteError(f"{where}: '{key}' ({value}) must be a multiple of action_repeat ({action_repeat})")
    if sim_steps % eval_every:
        raise SuiteError(
            f"{where}: 'sim_steps' ({sim_steps}) must be a multiple of 'eval_every' ({eval_every}) "
            "so that the last evaluation is at the budget"
        )
    score_range = raw.get("score_range", DEFAULT_SCORE_RANGE[score])
    if (
        not isinstance(score_range, (list, tuple))
        or len(score_range) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in score_range)
        or not score_range[0] < score_range[1]
    ):
        raise SuiteError(f"{where}: 'score_range' must be [worst, best] with worst < best, got {score_range!r}")
    return Task(
        name=name,
        env=raw["env"],
        action_repeat=action_repeat,
        sim_steps=sim_steps,
        eval_every=eval_every,
        eval_episodes=eval_episodes,
        score=score,
        score_range=(float(score_range[0]), float(score_range[1])),
        env_kwargs=_literal_mapping(where, "env_kwargs", raw.get("env_kwargs", {})),
        extra_args=_string_list(where, "extra_args", raw.get("extra_args", [])),
    )


def _parse_algorithm(where: str, name: str, raw: dict[str, Any]) -> Algorithm:
    if not isinstance(raw["algo"], str) or not raw["algo"]:
        raise SuiteError(f"{where}: 'algo' must be an rl-zoo3 algorithm name, got {raw['algo']!r}")
    return Algorithm(
        name=name,
        algo=raw["algo"],
        params=_literal_mapping(where, "params", raw.get("params") or {}),
        extra_args=_string_list(where, "extra_args", raw.get("extra_args", [])),
    )


def suite_path(name_or_path: str) -> str:
    """The suite file of a suite name (``benchmarks/suites/<name>.yml``) or the given path."""
    if name_or_path.endswith((".yml", ".yaml")) or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise SuiteError(f"suite file '{name_or_path}' does not exist")
        return name_or_path
    path = os.path.join(SUITES_DIR, f"{name_or_path}.yml")
    if not os.path.isfile(path):
        known = sorted(os.path.splitext(f)[0] for f in os.listdir(SUITES_DIR) if f.endswith(".yml"))
        raise SuiteError(f"unknown suite '{name_or_path}'{_did_you_mean(name_or_path, known)} (available: {', '.join(known)})")
    return path


def _parse_section(where: str, raw: dict, key: str, kind: str, parse: Any) -> dict[str, Any]:
    """Parse the non-empty mapping ``raw[key]`` of named entries with ``parse(entry_where, name, entry)``."""
    if not isinstance(raw[key], dict) or not raw[key]:
        raise SuiteError(f"{where}: '{key}' must be a non-empty mapping name -> {kind}")
    parsed = {}
    for entry_name, entry in raw[key].items():
        entry_where = f"{where}, {kind} '{entry_name}'"
        _check_name(entry_where, entry_name)
        parsed[entry_name] = parse(entry_where, entry_name, entry)
    return parsed


def load_suite(name_or_path: str) -> Suite:
    """
    Read and check a suite file.

    :param name_or_path: a suite name (``benchmarks/suites/<name>.yml``) or a path to a yml file
    :return: the suite
    :raises SuiteError: naming the file, the entry and the problem
    """
    path = suite_path(name_or_path)
    name = os.path.splitext(os.path.basename(path))[0]
    where = f"suite file '{os.path.basename(path)}'"
    try:
        raw = load_yaml(path)
    except ValueError as e:
        raise SuiteError(f"{where}: {e}") from None
    _check_keys(where, raw, TOP_KEYS)
    seeds = raw["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SuiteError(f"{where}: 'seeds' must be a non-empty list of distinct non-negative integers, got {seeds!r}")
    defaults = raw.get("defaults") or {}
    _check_keys(f"{where}, defaults", defaults, dict.fromkeys(TASK_KEYS, False))

    def parse_task(task_where: str, task_name: str, task_raw: Any) -> Task:
        _check_keys(task_where, task_raw, dict.fromkeys(TASK_KEYS, False))
        merged = {**defaults, **task_raw}
        _check_keys(task_where, merged, TASK_KEYS)
        return _parse_task(task_where, task_name, merged)

    def parse_algorithm(algo_where: str, algo_name: str, algo_raw: Any) -> Algorithm:
        _check_keys(algo_where, algo_raw, ALGO_KEYS)
        return _parse_algorithm(algo_where, algo_name, algo_raw)

    tasks = _parse_section(where, raw, "tasks", "task", parse_task)
    algorithms = _parse_section(where, raw, "algorithms", "algorithm", parse_algorithm)
    description = raw.get("description") or ""
    return Suite(name, path, str(description).strip(), tuple(seeds), tasks, algorithms)


def shipped_entry(algo: str, env_id: str) -> dict[str, Any] | None:
    """
    Hyperparameters ``sb3_m3po.zoo.train`` uses for ``(algo, env_id)`` from our ``hyperparams/<algo>.yml``
    (M3PO falls back to its ``default`` entry); None where rl-zoo3's own files apply.
    """
    path = os.path.join(REPO_ROOT, "hyperparams", f"{algo}.yml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        table = yaml.safe_load(f) or {}
    if env_id in table:
        return table[env_id]
    return table.get("default") if algo == "m3po" else None


def configured_action_repeat(entry: dict[str, Any] | None) -> int:
    """Action repeat of a hyperparameter entry: that of its ``DMCWrapper`` (1 when there is none)."""
    wrappers = (entry or {}).get("env_wrapper") or []
    for wrapper in wrappers if isinstance(wrappers, list) else [wrappers]:
        name, kwargs = (wrapper, {}) if isinstance(wrapper, str) else next(iter(wrapper.items()))
        if name.endswith("DMCWrapper"):
            return int((kwargs or {}).get("action_repeat", 2))  # DMCWrapper's default
    return 1


def check_suite_environment(suite: Suite) -> None:
    """
    Check what only this machine can tell: algorithms and env ids are known to rl-zoo3 / gymnasium, the
    suite's action repeat is the one the hyperparameter files apply (the runner cannot apply it itself),
    and evaluations land on the suite's steps with the configured number of envs.

    :raises SuiteError: naming the algorithm or task
    """
    import gymnasium as gym
    from rl_zoo3.utils import ALGOS

    from sb3_m3po.envs import register_envs

    register_envs()
    known_algos = {*ALGOS, "m3po"}
    for algorithm in suite.algorithms.values():
        if algorithm.algo not in known_algos:
            raise SuiteError(
                f"algorithm '{algorithm.name}': unknown rl-zoo3 algorithm '{algorithm.algo}'"
                f"{_did_you_mean(algorithm.algo, sorted(known_algos))}"
            )
    for task in suite.tasks.values():
        try:
            gym.spec(task.env)
        except gym.error.Error as e:
            raise SuiteError(f"task '{task.name}': unknown env id '{task.env}' ({' '.join(str(e).split())})") from None
        for algorithm in suite.algorithms.values():
            if any(arg in ("-conf", "--conf-file") for arg in (*task.extra_args, *algorithm.extra_args)):
                continue  # a custom hyperparameter file: its settings are the user's responsibility
            entry = shipped_entry(algorithm.algo, task.env)
            # the repeat is applied by the yml's DMCWrapper or by the env itself (registered kwarg, e.g. the
            # multi-task ids); the runner cannot apply it, only check it
            inside = int(task.env_kwargs.get("action_repeat", (gym.spec(task.env).kwargs or {}).get("action_repeat", 1)))
            repeat = configured_action_repeat(entry) * inside
            if repeat != task.action_repeat:
                raise SuiteError(
                    f"task '{task.name}' says action_repeat {task.action_repeat}, but {task.env} with "
                    f"hyperparams/{algorithm.algo}.yml repeats actions {repeat} time(s) (algorithm '{algorithm.name}'): "
                    "make them agree"
                )
            n_envs = int(algorithm.params.get("n_envs", (entry or {}).get("n_envs", 1)))
            per_eval = task.eval_every // task.action_repeat
            if per_eval % n_envs:
                # rl-zoo3 evaluates every (eval_freq // n_envs) steps of the vec env, so the evaluations
                # would drift away from the suite's steps and miss the budget
                raise SuiteError(
                    f"task '{task.name}', algorithm '{algorithm.name}': eval_every {task.eval_every} simulator steps "
                    f"= {per_eval} decisions is not a multiple of n_envs {n_envs}; use a multiple of "
                    f"{n_envs * task.action_repeat} simulator steps"
                )


# ---------------------------------------------------------------------------------------------------------
# Where things go


@dataclass(frozen=True)
class Layout:
    """Folders of one suite: committed results and the (gitignored) rl-zoo3 run folders."""

    results: str
    runs: str

    def record_path(self, run: Run) -> str:
        return os.path.join(self.results, "raw", run.task.name, f"{run.algorithm.name}_seed{run.seed}.json")

    def curve_path(self, run: Run) -> str:
        return os.path.join(self.results, "raw", run.task.name, f"{run.algorithm.name}_seed{run.seed}.csv")

    def run_folder(self, run: Run) -> str:
        return os.path.join(self.runs, run.task.name, run.algorithm.name, f"seed{run.seed}")


def shown_path(path: str) -> str:
    """Path as written into results: relative to the repository when inside it (no machine-specific prefix)."""
    path = os.path.abspath(path)
    if path.startswith(REPO_ROOT + os.sep):
        return os.path.relpath(path, REPO_ROOT)
    return os.path.basename(path)


def zoo_command(
    run: Run, folder: str, threads: int, device: str, resume: tuple[int, str] | None = None, segment: int = 0
) -> list[str]:
    """
    rl-zoo3 training command of a run (without the Python executable).

    :param run: the run
    :param folder: the run's folder (its segments' rl-zoo3 log folders ``-f`` and tensorboard are inside)
    :param threads: torch threads of the run
    :param device: torch device (``auto``, ``cpu``, ``cuda``)
    :param resume: ``(decisions, model.zip)`` of the checkpoint to continue from (None: from scratch)
    :param segment: index of the training process within the run (0 unless resumed)
    """
    task, algorithm = run.task, run.algorithm
    eval_freq = str(task.eval_every // task.action_repeat)
    command = [
        "-m",
        "sb3_m3po.zoo.train",
        "--algo",
        algorithm.algo,
        "--env",
        task.env,
        "-n",
        str(task.decisions - (resume[0] if resume else 0)),
        "--seed",
        str(run.seed),
        "-f",
        segment_folder(folder, segment),
        "--eval-freq",
        eval_freq,
        "--checkpoint-freq",
        eval_freq,
        "--eval-episodes",
        str(task.eval_episodes),
        "--num-threads",
        str(threads),
        "--device",
        device,
        "-tb",
        os.path.join(folder, "tb"),
    ]
    if resume is not None:
        command += ["-i", resume[1]]
    if task.env_kwargs:
        command += ["--env-kwargs", *(f"{k}:{v!r}" for k, v in task.env_kwargs.items())]
    if algorithm.params:
        command += ["-params", *(f"{k}:{v!r}" for k, v in algorithm.params.items())]
    return command + list(task.extra_args) + list(algorithm.extra_args)


# ---------------------------------------------------------------------------------------------------------
# Provenance


def device_description(device: str) -> str:
    """The device a run with ``--device device`` trains on, with the GPU name."""
    import torch as th

    if device == "auto":
        device = "cuda" if th.cuda.is_available() else "cpu"
    if device.startswith("cuda") and th.cuda.is_available():
        return f"{device} ({th.cuda.get_device_name(th.device(device))})"
    return device


# ---------------------------------------------------------------------------------------------------------
# Curves and records


def read_curve(npz_path: str, task: Task) -> Curve:
    """
    Evaluation curve of a run from rl-zoo3's ``evaluations.npz``, up to the task's budget.

    :param npz_path: the file (written by SB3's ``EvalCallback``)
    :param task: the task (action repeat and score kind)
    """
    data = np.load(npz_path)
    decisions = np.asarray(data["timesteps"], dtype=np.int64)
    results = np.asarray(data["results"], dtype=np.float64).reshape(len(decisions), -1)
    lengths = np.asarray(data["ep_lengths"], dtype=np.float64).reshape(len(decisions), -1)
    if "successes" in data.files and np.size(data["successes"]) == results.size:
        success = np.asarray(data["successes"], dtype=np.float64).reshape(len(decisions), -1).mean(1)
    else:
        success = np.full(len(decisions), np.nan)
    if task.score == "success":
        if np.isnan(success).any():
            raise ValueError(f"{npz_path} holds no 'successes': does {task.env} report info['is_success']?")
        score = success
    else:
        score = results.mean(1)
    # Algorithms finish their last rollout past the budget (PPO: 2048 steps per rollout) and may evaluate
    # there; the curve ends at the budget so that the final score is the one at the budget.
    keep = decisions <= task.decisions
    decisions, results, lengths, success, score = decisions[keep], results[keep], lengths[keep], success[keep], score[keep]
    return Curve(
        sim_steps=decisions * task.action_repeat,
        decisions=decisions,
        score=score,
        return_mean=results.mean(1),
        return_std=results.std(1),
        success_rate=success,
        episode_length=lengths.mean(1),
    )


def read_per_task_final(npz_path: str, task: Task) -> dict[str, float] | None:
    """
    Score of every task at the last evaluation within the budget, for multi-task envs.

    ``sb3-m3po train`` records the task of every evaluation episode (``tasks``, ``task_names`` in
    ``evaluations.npz``, see :class:`sb3_m3po.zoo.callbacks.TaskAwareEvalCallback`).

    :return: task name -> mean success (or return) of its episodes, None for single-task envs
    """
    data = np.load(npz_path)
    if "tasks" not in data.files or "task_names" not in data.files:
        return None
    decisions = np.asarray(data["timesteps"], dtype=np.int64)
    last = int(np.flatnonzero(decisions <= task.decisions)[-1])
    tasks = np.asarray(data["tasks"])[last]
    values = data["successes"] if task.score == "success" else data["results"]
    values = np.asarray(values, dtype=np.float64).reshape(len(decisions), -1)[last]
    names = [str(n) for n in data["task_names"]]
    return {names[k]: float(values[tasks == k].mean()) for k in sorted(set(tasks.tolist()))}


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident memory (``VmHWM``) of a live process in MiB, None if it cannot be read (ended, not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def write_curve_csv(path: str, run: Run, curve: Curve) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    header = ["task", "algorithm", "seed", "sim_steps", "decisions", "score", "return_mean", "return_std", "success_rate"]
    writer.writerow([*header, "episode_length"])
    for i in range(len(curve.sim_steps)):
        writer.writerow(
            [
                run.task.name,
                run.algorithm.name,
                run.seed,
                int(curve.sim_steps[i]),
                int(curve.decisions[i]),
                f"{curve.score[i]:.6g}",
                f"{curve.return_mean[i]:.6g}",
                f"{curve.return_std[i]:.6g}",
                "" if np.isnan(curve.success_rate[i]) else f"{curve.success_rate[i]:.6g}",
                f"{curve.episode_length[i]:.6g}",
            ]
        )
    _write_atomic(path, rows.getvalue())


def read_curve_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(simulator steps, score) of a raw curve CSV."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["sim_steps"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def _shell_word(token: str) -> str:
    """A command-line token quoted for a POSIX shell, readably (``"{'a': 1}"`` rather than shlex's escapes)."""
    if re.fullmatch(r"[\w@%+=:,./-]+", token):
        return token
    if not re.search(r'["$`\\!]', token):
        return f'"{token}"'
    return shlex.quote(token)


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def current_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A record's spec with M3PO settings of sb3-m3po 0.1 under their current names (``RENAMED_SETTINGS``)."""
    params = spec.get("params")
    if spec.get("algo") != "m3po" or not params:
        return spec
    return {**spec, "params": migrate_settings(params)}


def load_record(path: str) -> RunRecord:
    with open(path) as f:
        raw = json.load(f)
    names = {f.name for f in dataclasses.fields(RunRecord)}
    return RunRecord(**{k: v for k, v in raw.items() if k in names})


def _joined(values: Sequence[str]) -> str:
    """Distinct values in first-seen order, comma-separated (the commits or machines of a run's segments)."""
    return ",".join(dict.fromkeys(values))


def finish_run(
    run: Run, layout: Layout, suite: Suite, command: list[str], segments: Sequence[Segment], device: str
) -> RunRecord:
    """
    Turn a run folder whose process exited cleanly into its curve CSV and record.

    :param run: the run
    :param layout: where results and run folders go
    :param suite: the suite
    :param command: the training command of the run's first segment (without the Python executable)
    :param segments: the training processes of the run (one unless it was resumed; see ``resume.py``)
    :param device: :func:`device_description`
    :raises ValueError: if the run did not reach its budget (e.g. interrupted: rl-zoo3 then still exits 0)
    """
    folder = layout.run_folder(run)
    paths = segment_evaluations(folder, len(segments))
    if paths[-1] is None:
        raise ValueError(f"no evaluations.npz in the last segment under {shown_path(folder)}")
    pieces = [None if path is None else read_curve(path, run.task) for path in paths]
    masks = join_segments(
        [None if piece is None else piece.decisions for piece in pieces], [segment.resumed_from for segment in segments]
    )
    kept = [Curve(*(field[mask] for field in piece)) for piece, mask in zip(pieces, masks) if piece is not None]
    curve = Curve(*(np.concatenate(column) for column in zip(*kept)))
    expected = run.task.sim_steps // run.task.eval_every
    if len(curve.score) < expected:
        raise ValueError(f"only {len(curve.score)} of {expected} evaluations: the run stopped before its budget")
    write_curve_csv(layout.curve_path(run), run, curve)
    wall_seconds = sum(segment.wall_seconds for segment in segments)
    peaks = [segment.peak_rss_mib for segment in segments if segment.peak_rss_mib is not None]
    record = RunRecord(
        suite=suite.name,
        task=run.task.name,
        algorithm=run.algorithm.name,
        seed=run.seed,
        spec=run.spec(),
        final_score=float(curve.score[-1]),
        best_score=float(np.max(curve.score)),
        final_sim_steps=int(curve.sim_steps[-1]),
        n_evaluations=len(curve.score),
        wall_seconds=round(wall_seconds, 1),
        sim_steps_per_second=round(run.task.sim_steps / wall_seconds, 2),
        commit=_joined([segment.commit for segment in segments]),
        machine=_joined([segment.machine for segment in segments]),
        device=device,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=" ".join(_shell_word(shown_path(a) if a.startswith(folder) else a) for a in ["python", *command]),
        run_folder=shown_path(os.path.dirname(paths[-1])),
        peak_rss_mib=round(max(peaks), 1) if peaks else None,
        per_task_final=read_per_task_final(paths[-1], run.task),
        resumed_at=[segment.resumed_from * run.task.action_repeat for segment in segments[1:]] or None,
    )
    _write_atomic(layout.record_path(run), json.dumps(dataclasses.asdict(record), indent=1) + "\n")
    drop_checkpoints(folder)  # only a resume needs them, and they are the largest files of a run (the replay)
    return record


# ---------------------------------------------------------------------------------------------------------
# Running


def plan_runs(
    suite: Suite,
    layout: Layout,
    only_tasks: Sequence[str] | None = None,
    only_algos: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> tuple[list[Run], list[Run]]:
    """
    Runs selected from the suite, split into (finished, to do); seed-major so early seeds complete first.

    :raises SuiteError: for an unknown task/algorithm name, or a finished record made with another configuration
    """
    for kind, chosen, known in (("task", only_tasks, suite.tasks), ("algorithm", only_algos, suite.algorithms)):
        for name in chosen or []:
            if name not in known:
                raise SuiteError(
                    f"unknown {kind} '{name}' in suite '{suite.name}'{_did_you_mean(name, list(known))} "
                    f"(available: {', '.join(known)})"
                )
    finished, todo = [], []
    for seed in seeds if seeds is not None else suite.seeds:
        for task in suite.tasks.values():
            if only_tasks and task.name not in only_tasks:
                continue
            for algorithm in suite.algorithms.values():
                if only_algos and algorithm.name not in only_algos:
                    continue
                run = Run(task, algorithm, seed)
                path = layout.record_path(run)
                if not os.path.exists(path):
                    todo.append(run)
                    continue
                if current_spec(load_record(path).spec) != run.spec():
                    raise SuiteError(
                        f"{run.label} has a finished record ({shown_path(path)}) made with another configuration than "
                        f"suite file '{os.path.basename(suite.path)}' now gives; delete it and its .csv to run it again"
                    )
                finished.append(run)
    return finished, todo


_TIMESTEPS = re.compile(rb"total_timesteps\s*\|\s*(\d+)")


def _progress_of(log_path: str) -> int:
    """Agent decisions done, from the last SB3 log table in a run's ``train.log`` (0 if none yet)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 8192))
            found = _TIMESTEPS.findall(f.read())
    except OSError:
        return 0
    return int(found[-1]) if found else 0


def _last_line(log_path: str) -> str:
    """Last non-empty line of a run's log (the error, when a run fails)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _console_path(path: str) -> str:
    """Path for messages on the terminal: relative to the working directory when below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


@contextmanager
def suite_lock(runs_folder: str) -> Iterator[None]:
    """Hold an exclusive lock on a suite's runs folder, so that two runners never restart each other's runs."""
    os.makedirs(runs_folder, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): the user has to avoid concurrent runners
        yield
        return
    with open(os.path.join(runs_folder, ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SuiteError(f"another runner is working on {shown_path(runs_folder)}; wait for it to finish") from None
        yield


@dataclass
class _Active:
    run: Run
    process: subprocess.Popen
    log: Any
    started: float
    command: list[str]  # from scratch, for the record (a resumed segment adds -i and a shorter -n)
    segments: list[Segment]  # the earlier ones and, last, this process's, updated while it runs
    progress_id: Any
    written: float = 0.0  # when segments.json was last written

    def update_segment(self, folder: str, peak_rss: float | None = None, every: float = 0.0) -> None:
        """Refresh this segment's wall-clock and peak memory, and ``segments.json`` if ``every`` seconds passed."""
        current = self.segments[-1]
        current.wall_seconds = round(time.monotonic() - self.started, 1)
        current.peak_rss_mib = peak_rss or current.peak_rss_mib
        if time.monotonic() - self.written >= every:
            write_segments(folder, self.run.spec(), self.segments)
            self.written = time.monotonic()


def _start_segment(run: Run, folder: str, machine: str) -> tuple[list[Segment], tuple[int, str] | None]:
    """
    Prepare a run's folder: keep it and continue from its latest checkpoint when it has one for this
    configuration, else clear it (left by a failed attempt, or of another configuration) and start over.

    :return: the run's segments (the new one last) and the checkpoint to resume from (None: from scratch)
    """
    earlier = (read_segments(folder, run.spec()) if os.path.isdir(folder) else None) or []
    resume = resume_point(folder, run.task.decisions) if earlier else None
    if resume is None:
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        earlier = []
    segment = Segment(resumed_from=resume[0] if resume else 0, wall_seconds=0.0, commit=code_version(), machine=machine)
    segments = [*earlier, segment]
    write_segments(folder, run.spec(), segments)
    return segments, resume


def _stop(process: subprocess.Popen) -> None:
    """Stop a run's process group (the run may have started vec-env workers)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _status_line(label: str, done: int, total: int, started: float, resumed: int = 0) -> str:
    """One line of a background runner's log: a run's simulator steps so far and its elapsed time (this segment's)."""
    elapsed = time.monotonic() - started
    rate = (done - resumed) / elapsed if elapsed > 0 else 0.0
    eta = f", about {(total - done) / rate / 60:.0f} min left" if rate > 0 else ""
    return f"running {label}: {done}/{total} sim steps after {elapsed / 60:.0f} min ({rate:.1f}/s{eta})"


def execute(
    suite: Suite,
    layout: Layout,
    runs: list[Run],
    workers: int,
    threads: int = 1,
    device: str = "auto",
    status_every: float = 300.0,
) -> list[str]:
    """
    Train the runs, ``workers`` at a time, with a progress display; write each finished run's CSV and record.

    :param suite: the suite
    :param layout: where results and run folders go
    :param runs: runs to do (none of them finished)
    :param workers: runs at a time
    :param threads: torch/OpenMP threads per run
    :param device: torch device of the runs
    :param status_every: seconds between the plain status lines printed when the output is not a terminal
    :return: labels of the runs that failed, with the reason
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    machine, shown_device = machine_description(), device_description(device)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    pending, active, failed = list(runs), [], []

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Also when started in the background (where SIGINT is ignored) or stopped by kill/hang-up, the runner
    # stops its runs: they run in their own sessions and would otherwise outlive it.
    handled = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
    previous = {signum: signal.signal(signum, interrupt) for signum in handled}
    console = Console(stderr=False)
    # rich redraws its bars only on a terminal; a runner in the background (output to a log file) prints a
    # plain status line per active run every ``status_every`` seconds instead, so its log shows where it is
    last_status = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, refresh_per_second=1) as progress:
        overall = progress.add_task(f"[bold]{suite.name}: runs done", total=len(runs))
        try:
            while pending or active:
                while pending and len(active) < workers:
                    run = pending.pop(0)
                    folder = layout.run_folder(run)
                    segments, resume = _start_segment(run, folder, machine)
                    if resume is not None:
                        progress.console.print(
                            f"resuming {run.label} from its checkpoint at {resume[0] * run.task.action_repeat} sim steps",
                            soft_wrap=True,
                            markup=False,
                        )
                    log = open(os.path.join(folder, "train.log"), "ab" if resume else "wb")
                    command = zoo_command(run, folder, threads, device, resume, len(segments) - 1)
                    task_id = progress.add_task(f"  {run.label} (sim steps)", total=run.task.sim_steps)
                    process = subprocess.Popen(
                        [sys.executable, *command],
                        cwd=REPO_ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C reaches the runner only; it stops the runs itself
                    )
                    from_scratch = zoo_command(run, folder, threads, device)
                    active.append(_Active(run, process, log, time.monotonic(), from_scratch, segments, task_id))
                time.sleep(1.0)
                show_status = not console.is_terminal and time.monotonic() - last_status >= status_every
                if show_status:
                    last_status = time.monotonic()
                for item in list(active):
                    done = min(_progress_of(item.log.name) * item.run.task.action_repeat, item.run.task.sim_steps)
                    progress.update(item.progress_id, completed=done)
                    if show_status:
                        resumed = item.segments[-1].resumed_from * item.run.task.action_repeat
                        line = _status_line(item.run.label, done, item.run.task.sim_steps, item.started, resumed)
                        progress.console.print(line, soft_wrap=True, markup=False)
                    code = item.process.poll()
                    folder = layout.run_folder(item.run)
                    if code is None:
                        # a high-water mark: the last reading before the process ends is (almost) its peak; the
                        # file keeps the wall-clock of a segment that is killed with the runner (machine gone)
                        item.update_segment(folder, peak_rss_mib(item.process.pid), every=30.0)
                        continue
                    active.remove(item)
                    item.log.close()
                    progress.remove_task(item.progress_id)
                    progress.advance(overall)
                    item.update_segment(folder)
                    try:
                        if code != 0:
                            raise ValueError(f"exit code {code}: {_last_line(item.log.name)}")
                        record = finish_run(item.run, layout, suite, item.command, item.segments, shown_device)
                    except (ValueError, OSError, KeyError) as e:
                        drop_checkpoints(folder)  # a failed run starts from scratch next time, not from where it failed
                        failed.append(f"{item.run.label}: {e} (log: {_console_path(item.log.name)})")
                        progress.console.print(f"failed {failed[-1]}", style="red", soft_wrap=True, markup=False)
                        continue
                    progress.console.print(
                        f"done {item.run.label}: score {record.final_score:.4g} at {record.final_sim_steps} sim steps, "
                        f"{record.wall_seconds:.0f} s, {record.sim_steps_per_second:.1f} sim steps/s",
                        soft_wrap=True,
                    )
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            for item in active:
                _stop(item.process)
                item.log.close()
                item.update_segment(layout.run_folder(item.run))
            progress.console.print(
                f"interrupted: {len(active)} unfinished run(s) stopped; next time they continue from their last "
                "checkpoint (the last evaluation), or from scratch if they had none",
                soft_wrap=True,
            )
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return failed


# ---------------------------------------------------------------------------------------------------------
# Summary


@dataclass
class _Result:
    record: RunRecord
    steps: np.ndarray
    scores: np.ndarray


def bootstrap_mean_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Mean over axis 0 with a 95 % percentile-bootstrap interval (resampling rows, i.e. seeds).

    :param values: (n_seeds, ...) scores
    :return: mean, lower, upper (each of shape ``values.shape[1:]``)
    """
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)
    return values.mean(axis=0), np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def bootstrap_diff_ci(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """
    ``mean(a) - mean(b)`` with a 95 % percentile-bootstrap interval, resampling the seeds of each side independently.

    :param a: scores of one algorithm (one per seed)
    :param b: scores of the other
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    diffs = a[rng.integers(0, len(a), (reps, len(a)))].mean(1) - b[rng.integers(0, len(b), (reps, len(b)))].mean(1)
    return float(a.mean() - b.mean()), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def _fmt(value: float, task: Task) -> str:
    return f"{value:.2f}" if task.score == "success" else f"{value:.0f}"


def _steps(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def collect_results(suite: Suite, layout: Layout) -> tuple[dict[tuple[str, str], list[_Result]], list[str]]:
    """Finished runs of the suite by (task, algorithm), and notes on records left out (other configuration)."""
    results: dict[tuple[str, str], list[_Result]] = {}
    notes: list[str] = []
    for task in suite.tasks.values():
        for algorithm in suite.algorithms.values():
            runs = []
            pattern = os.path.join(layout.results, "raw", task.name, f"{algorithm.name}_seed*.json")
            for path in sorted(glob.glob(pattern)):
                record = load_record(path)
                if current_spec(record.spec) != Run(task, algorithm, record.seed).spec():
                    notes.append(f"{shown_path(path)} (made with another configuration)")
                    continue
                steps, scores = read_curve_csv(path[: -len(".json")] + ".csv")
                runs.append(_Result(record, steps, scores))
            if runs:
                results[(task.name, algorithm.name)] = sorted(runs, key=lambda r: r.record.seed)
    return results, notes


def _aligned(runs: list[_Result]) -> tuple[np.ndarray, np.ndarray]:
    """Curves of several seeds on one step grid (the steps all of them cover; interpolated if they differ)."""
    low = max(r.steps[0] for r in runs)
    high = min(r.steps[-1] for r in runs)
    grid = np.unique(np.concatenate([r.steps[(r.steps >= low) & (r.steps <= high)] for r in runs]))
    return grid, np.stack([np.interp(grid, r.steps, r.scores) for r in runs])


# the main figure's algorithms, each with the same colour in every suite
MAIN_ALGORITHMS = ("m3po", "ppo", "sac", "crossq")


def _colors(suite: Suite) -> dict[str, Any]:
    """A colour of its own for every algorithm of the suite (tab10, then the light shades of tab20)."""
    import matplotlib

    palette = list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors[1::2])
    names = [n for n in MAIN_ALGORITHMS if n in suite.algorithms] + [n for n in suite.algorithms if n not in MAIN_ALGORITHMS]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def plot_learning_curves(
    suite: Suite,
    results: dict[tuple[str, str], list[_Result]],
    path: str,
    algorithms: Sequence[str],
    references: bool = True,
    title: str = "",
) -> None:
    """One panel per task: mean over seeds with a 95 % bootstrap band of ``algorithms``, and the published 100k values."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    tasks = [t for t in suite.tasks.values() if any((t.name, a) in results for a in algorithms)]
    ncols = 2 if len(tasks) == 4 else min(len(tasks), 3)
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    colors = _colors(suite)
    handles: dict[str, Any] = {}
    for ax, task in zip(axes.flat, tasks):
        for algorithm in algorithms:
            runs = results.get((task.name, algorithm))
            if not runs:
                continue
            grid, curves = _aligned(runs)
            mean, low, high = bootstrap_mean_ci(curves)
            (line,) = ax.plot(grid, mean, color=colors[algorithm], lw=1.8)
            ax.fill_between(grid, low, high, color=colors[algorithm], alpha=0.2, lw=0)
            handles[algorithm] = line
        published = REFERENCE_100K.get(task.env, {}) if references else {}
        for name, marker, color in zip(PLOTTED_REFERENCES, ("*", "D"), ("black", "dimgray")):
            if name not in published:
                continue
            label = f"{name} published, 100k"
            if task.sim_steps >= REFERENCE_STEPS:
                size = 12 if marker == "*" else 7
                (handles[label],) = ax.plot([REFERENCE_STEPS], [published[name]], marker, color=color, ms=size, zorder=5)
            else:  # the budget ends before 100k: show the level instead of a point off the axis
                handles[label] = ax.axhline(published[name], color=color, ls=":" if marker == "*" else "--", lw=1)
        ax.set_title(f"{task.name} (action repeat {task.action_repeat})", fontsize=10)
        ax.set_xlabel("simulator steps")
        ax.set_ylabel("success rate" if task.score == "success" else "episode return")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    legend_rows = -(-len(handles) // 5)
    fig.legend(
        handles.values(), handles.keys(), loc="lower center", ncol=-(-len(handles) // legend_rows), fontsize=9, frameon=False
    )
    fig.suptitle(f"suite {suite.name}{title}: mean over seeds, 95 % bootstrap CI", fontsize=11)
    fig.tight_layout(rect=(0, 0.045 * legend_rows + 0.06 / nrows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Aggregate(NamedTuple):
    """rliable aggregates of one algorithm over tasks and seeds (normalised scores)."""

    runs: int
    iqm: tuple[float, float, float]  # point, lower, upper
    mean: tuple[float, float, float]


def aggregate_scores(
    suite: Suite, results: dict[tuple[str, str], list[_Result]]
) -> tuple[dict[str, np.ndarray], dict[str, Aggregate], list[str]]:
    """
    Normalised final scores per algorithm as (seeds x tasks) matrices, their IQM and mean with 95 % stratified
    bootstrap intervals (rliable), and notes on algorithms left out.

    Only algorithms with runs on every task enter, with the seeds they have on every task.
    """
    from rliable import library as rly
    from rliable import metrics

    matrices: dict[str, np.ndarray] = {}
    notes = []
    for algorithm in suite.algorithms:
        per_task = [{r.record.seed: r.record.final_score for r in results.get((t, algorithm), [])} for t in suite.tasks]
        seeds = sorted(set.intersection(*(set(d) for d in per_task)))
        if not seeds:
            if any(per_task):
                notes.append(f"{algorithm}: not yet one seed on every task")
            continue
        matrices[algorithm] = np.array(
            [[task.normalise(scores[s]) for task, scores in zip(suite.tasks.values(), per_task)] for s in seeds]
        )
    if not matrices:
        return matrices, {}, notes
    point, interval = {}, {}
    with warnings.catch_warnings():
        # arch deprecates RandomState seeding, but rliable 1.2 offers no other way to make the CIs reproducible
        warnings.simplefilter("ignore", FutureWarning)
        for name, matrix in matrices.items():
            # a fresh stream per algorithm: one shared stream would move every CI when another algorithm is added.
            # rliable's StratifiedBootstrap draws its indices from numpy's global generator, not from random_state
            np.random.seed(0)
            estimate = rly.get_interval_estimates(
                {name: matrix},
                lambda m: np.array([metrics.aggregate_iqm(m), metrics.aggregate_mean(m)]),
                reps=2000,
                random_state=np.random.RandomState(0),
            )
            point[name], interval[name] = estimate[0][name], estimate[1][name]
    aggregates = {
        name: Aggregate(
            len(matrix),
            (float(point[name][0]), float(interval[name][0, 0]), float(interval[name][1, 0])),
            (float(point[name][1]), float(interval[name][0, 1]), float(interval[name][1, 1])),
        )
        for name, matrix in matrices.items()
    }
    return matrices, aggregates, notes


def plot_aggregate(suite: Suite, matrices: dict[str, np.ndarray], aggregates: dict[str, Aggregate], path: str) -> None:
    """IQM and mean with 95 % CIs (bars) and the performance profile with its CI band."""
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import plot_utils

    colors = _colors(suite)
    names = list(aggregates)
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(names) + 2.6), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, metric in zip(axes[:2], ("iqm", "mean")):
        for y, name in enumerate(names):
            point, low, high = getattr(aggregates[name], metric)
            ax.barh(y, high - low, left=low, height=0.6, color=colors[name], alpha=0.6)
            ax.plot([point, point], [y - 0.3, y + 0.3], color="black", lw=1.5)
        ax.set_yticks(range(len(names)), names if metric == "iqm" else [""] * len(names))
        ax.invert_yaxis()
        ax.set_title("IQM" if metric == "iqm" else "Mean", fontsize=10)
        ax.set_xlabel("normalised score")
        ax.grid(axis="x", alpha=0.3)
    high = max(1.0, max(float(m.max()) for m in matrices.values()))
    taus = np.linspace(min(0.0, min(float(m.min()) for m in matrices.values())), high, 81)
    np.random.seed(0)  # rliable's profile bootstrap draws from the global generator: same summary every time
    profiles, profile_cis = rly.create_performance_profile(matrices, taus, reps=2000)
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=profile_cis,
        colors=colors,
        ax=axes[2],
        xlabel=r"normalised score $\tau$",
        ylabel=r"fraction of runs with score > $\tau$",
        labelsize="medium",
        ticklabelsize="medium",
    )
    axes[2].set_title("Performance profile (final scores, all tasks and seeds)", fontsize=10)
    axes[2].legend([plt.Line2D([], [], color=colors[n]) for n in names], names, fontsize=8, loc="lower left")
    fig.suptitle(f"suite {suite.name}: aggregate over {len(suite.tasks)} task(s), 95 % stratified bootstrap CIs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(suite: Suite, layout: Layout) -> str:
    """
    Write ``runs.csv``, ``summary.md``, ``learning_curves.png`` and ``aggregate.png`` from the finished runs.

    :return: the summary text
    """
    import matplotlib

    matplotlib.use("Agg")
    results, left_out = collect_results(suite, layout)
    os.makedirs(layout.results, exist_ok=True)
    records = [r.record for runs in results.values() for r in runs]
    total = len(suite.tasks) * len(suite.algorithms) * len(suite.seeds)
    lines = [f"# Benchmark suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += [
        f"Produced by `python benchmarks/suite.py {suite.name}` from `{shown_path(suite.path)}`: every run is "
        "`python -m sb3_m3po.zoo.train` (rl-zoo3) with the shipped `hyperparams/<algo>.yml` plus the overrides below, "
        "one torch thread per run. Steps and budgets are simulator steps (action repeat counted). Scores come "
        "from deterministic evaluations (rl-zoo3's `evaluations.npz`); the final score is the evaluation at the budget.",
        "",
        f"Finished runs: {len(records)} of {total} ({len(suite.tasks)} task(s) x {len(suite.algorithms)} algorithm(s) x "
        f"{len(suite.seeds)} seed(s)).",
    ]
    if not records:
        lines += ["", "No finished runs yet."]
    machines = sorted({r.machine for r in records})
    machine_tags = {m: f"M{i + 1}" for i, m in enumerate(machines)}
    if records:
        lines += ["", "Machines:", ""] + [f"* {machine_tags[m]}: {m}" for m in machines]
        lines += [
            "",
            f"Devices: {', '.join(sorted({r.device for r in records}))}. "
            f"Code: commit(s) {', '.join(f'`{c}`' for c in sorted({r.commit for r in records}))} "
            "(`+dirty`: `sb3_m3po/` or `hyperparams/` had uncommitted changes).",
        ]
    if left_out:
        lines += ["", "Left out (delete them, or restore the suite file they were made with):", ""]
        lines += [f"* {note}" for note in left_out]
    algos = list(suite.algorithms)
    lines += ["", "## Final score", "", "Mean over seeds [95 % bootstrap CI] (number of seeds); return or success rate.", ""]
    lines += ["| task | budget | " + " | ".join(algos) + " | TD-MPC2 @100k | SAC @100k (published) |"]
    lines += ["|---" * (len(algos) + 4) + "|"]
    for task in suite.tasks.values():
        cells = []
        for algorithm in algos:
            runs = results.get((task.name, algorithm))
            if not runs:
                cells.append("-")
                continue
            mean, low, high = bootstrap_mean_ci(np.array([r.record.final_score for r in runs]))
            cells.append(f"{_fmt(mean, task)} [{_fmt(low, task)}, {_fmt(high, task)}] ({len(runs)})")
        references = REFERENCE_100K.get(task.env, {})
        published = [_fmt(references[n], task) if n in references else "-" for n in ("TD-MPC2", "SAC")]
        lines.append(f"| {task.name} | {_steps(task.sim_steps)} | " + " | ".join(cells + published) + " |")
    lines += _per_task_section(suite, results)
    lines += _versus_section(suite, results)
    lines += _gap_section(suite, results)
    matrices, aggregates, aggregate_notes = aggregate_scores(suite, results) if results else ({}, {}, [])
    lines += ["", "## Aggregate (rliable)", ""]
    by_range: dict[tuple[float, float], list[str]] = {}
    for task in suite.tasks.values():
        by_range.setdefault(task.score_range, []).append(task.name)
    ranges = "; ".join(f"{', '.join(names)}: {low:g} -> 0, {high:g} -> 1" for (low, high), names in by_range.items())
    lines += [
        f"Final scores normalised per task ({ranges}); interquartile mean (IQM) and mean over all runs with 95 % "
        "stratified bootstrap CIs (2000 resamples), for algorithms with runs on every task.",
        "",
    ]
    if aggregates:
        lines += ["| algorithm | seeds per task | IQM [95 % CI] | mean [95 % CI] |", "|---|---|---|---|"]
        for name, agg in aggregates.items():
            lines.append(
                f"| {name} | {agg.runs} | {agg.iqm[0]:.3f} [{agg.iqm[1]:.3f}, {agg.iqm[2]:.3f}] | "
                f"{agg.mean[0]:.3f} [{agg.mean[1]:.3f}, {agg.mean[2]:.3f}] |"
            )
        plot_aggregate(suite, matrices, aggregates, os.path.join(layout.results, "aggregate.png"))
        lines += ["", "![aggregate](aggregate.png)"]
    else:
        lines.append("No algorithm has runs on every task yet.")
    lines += [f"* {note}" for note in aggregate_notes]
    if results:
        # M3PO and the baselines; a suite of variants only (no baseline) shows them all
        main = [a for a in MAIN_ALGORITHMS if a in suite.algorithms] or list(suite.algorithms)
        plot_learning_curves(suite, results, os.path.join(layout.results, "learning_curves.png"), main)
        lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)"]
        others = [a for a in suite.algorithms if a not in main and any(k[1] == a for k in results)]
        if others and "m3po" in main:
            path = os.path.join(layout.results, "ablations.png")
            plot_learning_curves(suite, results, path, ["m3po", *others], references=False, title=" (ablations, diagnostics)")
            lines += ["", "Ablations and diagnostics, with `m3po` for reference:", "", "![ablations](ablations.png)"]
    lines += ["", "## Algorithms", "", "| name | rl-zoo3 algo | overrides of hyperparams/<algo>.yml |", "|---|---|---|"]
    for algorithm in suite.algorithms.values():
        overrides = ", ".join(f"`{k}={v!r}`" for k, v in algorithm.params.items()) or "none"
        extra = f" {' '.join(algorithm.extra_args)}" if algorithm.extra_args else ""
        lines.append(f"| {algorithm.name} | {algorithm.algo} | {overrides}{extra} |")
    lines += ["", "## Tasks", "", "| task | env id | action repeat | budget | eval every | eval episodes | score |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for task in suite.tasks.values():
        lines.append(
            f"| {task.name} | `{task.env}` | {task.action_repeat} | {task.sim_steps} | {task.eval_every} | "
            f"{task.eval_episodes} | {task.score} |"
        )
    lines += _runs_section(suite, results, machine_tags)
    text = "\n".join(lines) + "\n"
    _write_atomic(os.path.join(layout.results, "summary.md"), text)
    _write_runs_csv(suite, results, os.path.join(layout.results, "runs.csv"))
    return text


def _per_task_section(suite: Suite, results: dict[tuple[str, str], list[_Result]]) -> list[str]:
    """Multi-task envs: every task's final score, mean over seeds with a 95 % bootstrap CI."""
    lines: list[str] = []
    for task in suite.tasks.values():
        per_algo = {
            algorithm: [r.record.per_task_final for r in results.get((task.name, algorithm), []) if r.record.per_task_final]
            for algorithm in suite.algorithms
        }
        names = list(dict.fromkeys(name for finals in per_algo.values() for final in finals for name in final))
        if not names:
            continue
        lines += [
            "",
            f"## Per task: {task.name}",
            "",
            f"Final {task.score} of every task of `{task.env}` (mean over seeds [95 % bootstrap CI] (seeds)); "
            "the last row is the mean over tasks, its CI from resampling seeds.",
            "",
            "| task | " + " | ".join(suite.algorithms) + " |",
            "|---" * (len(suite.algorithms) + 1) + "|",
        ]
        rows: dict[str, list[str]] = {name: [] for name in [*names, "mean over tasks"]}
        for finals in per_algo.values():
            complete = [f for f in finals if all(n in f for n in names)]
            for name in names:
                values = np.array([f[name] for f in finals if name in f])
                if not len(values):
                    rows[name].append("-")
                    continue
                mean, low, high = bootstrap_mean_ci(values)
                rows[name].append(f"{_fmt(mean, task)} [{_fmt(low, task)}, {_fmt(high, task)}] ({len(values)})")
            if complete:
                mean, low, high = bootstrap_mean_ci(np.array([np.mean([f[n] for n in names]) for f in complete]))
                rows["mean over tasks"].append(f"{_fmt(mean, task)} [{_fmt(low, task)}, {_fmt(high, task)}] ({len(complete)})")
            else:
                rows["mean over tasks"].append("-")
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
        lines += [
            "",
            f"Each evaluation runs {task.eval_episodes // max(1, len(names))} episode(s) per task, so a task's final "
            f"value is a coarse estimate; `python benchmarks/final_eval.py {suite.name}` replays the final models with "
            "more episodes per task (`final_eval.md` in this folder).",
        ]
    return lines


def _versus_section(suite: Suite, results: dict[tuple[str, str], list[_Result]]) -> list[str]:
    """The suite's first algorithm against each other one, task by task: difference of mean final scores."""
    first, *others = suite.algorithms
    if not others:
        return []
    lines = [
        "",
        f"## `{first}` against the others",
        "",
        f"Mean final score of `{first}` minus that of each other algorithm [95 % bootstrap CI, seeds resampled on "
        f"both sides]; > 0: `{first}` ahead. The last row counts the tasks where `{first}` is ahead.",
        "",
        "| task | " + " | ".join(f"{first} - {name}" for name in others) + " |",
        "|---" * (len(others) + 1) + "|",
    ]
    ahead, compared = dict.fromkeys(others, 0), dict.fromkeys(others, 0)
    for task in suite.tasks.values():
        mine = [r.record.final_score for r in results.get((task.name, first), [])]
        cells = []
        for name in others:
            theirs = [r.record.final_score for r in results.get((task.name, name), [])]
            if not mine or not theirs:
                cells.append("-")
                continue
            diff, low, high = bootstrap_diff_ci(np.array(mine), np.array(theirs))
            compared[name] += 1
            ahead[name] += diff > 0
            sign = "+" if diff > 0 else ""
            cells.append(f"{sign}{_fmt(diff, task)} [{_fmt(low, task)}, {_fmt(high, task)}] ({len(mine)} vs {len(theirs)})")
        lines.append(f"| {task.name} | " + " | ".join(cells) + " |")
    lines.append(
        f"| `{first}` ahead on | " + " | ".join(f"{ahead[n]} of {compared[n]}" if compared[n] else "-" for n in others) + " |"
    )
    return lines


def _gap_section(suite: Suite, results: dict[tuple[str, str], list[_Result]]) -> list[str]:
    """Difference of each algorithm's mean final score to TD-MPC2's published 100k value."""
    tasks = [t for t in suite.tasks.values() if "TD-MPC2" in REFERENCE_100K.get(t.env, {})]
    lines = ["", "## Gap to TD-MPC2 (published, at the 100k mark of its result files)", ""]
    if not tasks:
        return lines + ["No task of this suite has a published TD-MPC2 value."]
    lines += [
        "Mean final score minus TD-MPC2's value (relative gap in parentheses; >= 0: at or above TD-MPC2). "
        "Only tasks whose budget is 100k simulator steps are compared."
        + (" Meta-World references were measured on v2." if any(t.env.startswith("metaworld/") for t in tasks) else ""),
        "",
        "TD-MPC2's result files count simulator steps (its action repeat is applied before they are written: "
        "nicklashansen/tdmpc2 issue #45), so the comparison at 100k simulator steps is like for like.",
        "",
        "| task | TD-MPC2 | " + " | ".join(suite.algorithms) + " |",
        "|---" * (len(suite.algorithms) + 2) + "|",
    ]
    at_or_above = dict.fromkeys(suite.algorithms, 0)
    compared = dict.fromkeys(suite.algorithms, 0)
    for task in tasks:
        reference = REFERENCE_100K[task.env]["TD-MPC2"]
        cells = []
        for algorithm in suite.algorithms:
            runs = results.get((task.name, algorithm))
            if task.sim_steps != REFERENCE_STEPS:
                cells.append(f"n/a (budget {_steps(task.sim_steps)})")
                continue
            if not runs:
                cells.append("-")
                continue
            gap = float(np.mean([r.record.final_score for r in runs])) - reference
            compared[algorithm] += 1
            at_or_above[algorithm] += gap >= 0
            cells.append(f"{'+' if gap >= 0 else ''}{_fmt(gap, task)} ({100 * gap / reference:+.0f} %)")
        lines.append(f"| {task.name} | {_fmt(reference, task)} | " + " | ".join(cells) + " |")
    lines.append(
        "| at or above TD-MPC2 | | "
        + " | ".join(f"{at_or_above[a]} of {compared[a]}" if compared[a] else "-" for a in suite.algorithms)
        + " |"
    )
    return lines


def _runs_section(suite: Suite, results: dict[tuple[str, str], list[_Result]], machine_tags: dict[str, str]) -> list[str]:
    lines = ["", "## Runs", "", "Wall-clock of the whole training process (start-up and evaluations included).", ""]
    lines += [
        "| task | algorithm | seed | final score | best score | wall-clock (s) | sim steps/s | peak RSS (MiB) "
        "| commit | machine | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in suite.tasks.values():
        for algorithm in suite.algorithms:
            for r in results.get((task.name, algorithm), []):
                rec = r.record
                lines.append(
                    f"| {task.name} | {algorithm} | {rec.seed} | {_fmt(rec.final_score, task)} | "
                    f"{_fmt(rec.best_score, task)} | {rec.wall_seconds:.0f} | {rec.sim_steps_per_second:.1f} | "
                    f"{'-' if rec.peak_rss_mib is None else f'{rec.peak_rss_mib:.0f}'} | "
                    f"{rec.commit} | {machine_tags[rec.machine]} | {rec.device} |"
                )
    relabelled = [(task, r.record) for (task, _), runs in results.items() for r in runs if r.record.relabelled]
    if relabelled:
        lines += [
            "",
            "Relabelled runs (renamed by an earlier runner; their `command` is the one that ran):",
            "",
        ]
        lines += [f"* {task} seed {rec.seed}: {rec.relabelled}" for task, rec in relabelled]
    resumed = [(task, r.record) for (task, _), runs in results.items() for r in runs if r.record.resumed_at]
    if resumed:
        lines += ["", "Resumed runs (cut off, continued from their checkpoint; wall-clock sums every attempt):", ""]
        lines += [
            f"* {task} {rec.algorithm} seed {rec.seed}: resumed at {', '.join(map(str, rec.resumed_at or []))} sim steps"
            for task, rec in resumed
        ]
    return lines


def _write_runs_csv(suite: Suite, results: dict[tuple[str, str], list[_Result]], path: str) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(
        [
            "task",
            "env",
            "algorithm",
            "algo",
            "seed",
            "sim_steps",
            "final_score",
            "normalised_final_score",
            "best_score",
            "wall_seconds",
            "sim_steps_per_second",
            "peak_rss_mib",
            "commit",
            "device",
            "machine",
            "finished_at",
        ]
    )
    for task in suite.tasks.values():
        for algorithm in suite.algorithms.values():
            for r in results.get((task.name, algorithm.name), []):
                rec = r.record
                writer.writerow(
                    [
                        task.name,
                        task.env,
                        algorithm.name,
                        algorithm.algo,
                        rec.seed,
                        task.sim_steps,
                        f"{rec.final_score:.6g}",
                        f"{task.normalise(rec.final_score):.6g}",
                        f"{rec.best_score:.6g}",
                        rec.wall_seconds,
                        rec.sim_steps_per_second,
                        "" if rec.peak_rss_mib is None else rec.peak_rss_mib,
                        rec.commit,
                        rec.device,
                        rec.machine,
                        rec.finished_at,
                    ]
                )
    _write_atomic(path, rows.getvalue())


# ---------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/suite.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", help="suite name (benchmarks/suites/<name>.yml) or path to a suite yml")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs at a time (default: number of cores)")
    parser.add_argument("--only-algos", nargs="+", metavar="NAME", help="run only these algorithms of the suite")
    parser.add_argument("--only-tasks", nargs="+", metavar="NAME", help="run only these tasks of the suite")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S", help="run these seeds instead of the suite's")
    parser.add_argument("--summarize", action="store_true", help="only write the summary of the finished runs")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run (default 1)")
    parser.add_argument("--device", default="auto", help="torch device of the runs (rl-zoo3 --device, default auto)")
    parser.add_argument(
        "--status-every",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="when the output is not a terminal (a background run), print each run's progress this often (default 300)",
    )
    parser.add_argument("--results-dir", help="results folder (default benchmarks/results/<suite>)")
    parser.add_argument("--runs-dir", help="folder of the rl-zoo3 runs (default benchmarks/runs/<suite>)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo, for the env checks here and in the runs
    try:
        if args.workers < 1 or args.threads < 1:
            raise SuiteError("--workers and --threads must be >= 1")
        suite = load_suite(args.suite)
        layout = Layout(
            os.path.abspath(args.results_dir or os.path.join(RESULTS_DIR, suite.name)),
            os.path.abspath(args.runs_dir or os.path.join(RUNS_DIR, suite.name)),
        )
        failed: list[str] = []
        if not args.summarize:
            check_suite_environment(suite)
            with suite_lock(layout.runs):
                finished, todo = plan_runs(suite, layout, args.only_tasks, args.only_algos, args.seeds)
                print(
                    f"suite {suite.name}: {len(finished) + len(todo)} selected runs, {len(finished)} finished, "
                    f"{len(todo)} to run, {min(args.workers, max(len(todo), 1))} at a time",
                    flush=True,
                )
                failed = []
                if todo:
                    failed = execute(suite, layout, todo, args.workers, args.threads, args.device, args.status_every)
        summarize(suite, layout)
        print(f"summary: {shown_path(os.path.join(layout.results, 'summary.md'))}")
    except SuiteError as e:
        print(f"benchmarks/suite.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if failed:
        print(f"{len(failed)} run(s) failed (they restart from scratch next time):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
