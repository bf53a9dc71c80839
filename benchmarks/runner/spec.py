"""
Suite files (``benchmarks/suites/<name>.yml``) parsed into a typed model, and the runs they name.

The format of a suite file is described in ``benchmarks/suites/README.md``.
"""

import difflib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from sb3_m3po.common.hyperparams import entry_action_repeat, shipped_params
from sb3_m3po.common.utils import load_yaml
from sb3_m3po.m3po.save_util import migrate_settings

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES_DIR = os.path.join(BENCH_DIR, "suites")
DEFAULT_SCORE_RANGE = {"return": (0.0, 1000.0), "success": (0.0, 1.0)}
# Flags the runner sets for every run; a suite setting them too would silently win or lose (argparse keeps
# the last value), so extra_args may not.
RUNNER_FLAGS = frozenset(
    "--algo --env -n --n-timesteps --seed -f --log-folder --eval-freq --eval-episodes --num-threads -params "
    "--hyperparams --env-kwargs -i --trained-agent --checkpoint-freq -optimize --optimize-hyperparameters".split()
)
Name = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names folders


class SuiteError(ValueError):
    """A suite file, a command-line selection or an existing record that cannot be used, with the reason."""


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _command_line_tokens(tokens: tuple[str, ...]) -> tuple[str, ...]:
    for token in tokens:
        if token.split("=", 1)[0] in RUNNER_FLAGS:
            raise ValueError(f"sets {token}, which the runner sets itself (use the suite's fields)")
    return tokens


def _literals(mapping: dict[str, Any]) -> dict[str, Any]:
    """Values must survive rl-zoo3's ``name:value`` command-line form (it evals the value)."""
    for name, value in mapping.items():
        try:
            same = eval(repr(value), {}) == value
        except Exception:
            same = False
        if not same:
            raise ValueError(f"{name}: {value!r} cannot be passed on the command line")
    return mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(_Strict):
    """One environment with its budget and how it is scored (fields as in ``benchmarks/suites/README.md``)."""

    name: str = Name
    env: str = Field(min_length=1)
    action_repeat: PositiveInt = 1
    sim_steps: PositiveInt
    eval_every: PositiveInt
    eval_episodes: PositiveInt
    score: Literal["return", "success"]
    score_range: tuple[float, float] | None = None
    env_kwargs: dict[str, Any] = {}
    extra_args: tuple[str, ...] = ()

    _tokens = field_validator("extra_args")(_command_line_tokens)
    _literal_kwargs = field_validator("env_kwargs")(_literals)

    @model_validator(mode="after")
    def _budget_lands_on_evaluations(self) -> "Task":
        for key in ("sim_steps", "eval_every"):
            if getattr(self, key) % self.action_repeat:
                raise ValueError(f"'{key}' must be a multiple of action_repeat ({self.action_repeat})")
        if self.sim_steps % self.eval_every:
            raise ValueError("'sim_steps' must be a multiple of 'eval_every' so that the last evaluation is at the budget")
        low, high = self.range
        if not low < high:
            raise ValueError(f"'score_range' must be [worst, best] with worst < best, got {self.score_range}")
        return self

    @property
    def range(self) -> tuple[float, float]:
        return self.score_range or DEFAULT_SCORE_RANGE[self.score]

    @property
    def decisions(self) -> int:
        """Budget in agent decisions (rl-zoo3's ``-n``)."""
        return self.sim_steps // self.action_repeat

    def normalise(self, score: float) -> float:
        low, high = self.range
        return (score - low) / (high - low)


class Algorithm(_Strict):
    """An rl-zoo3 algorithm with hyperparameter overrides (``-params``); an ablation is a name with other params."""

    name: str = Name
    algo: str = Field(min_length=1)
    params: dict[str, Any] = {}
    extra_args: tuple[str, ...] = ()

    _tokens = field_validator("extra_args")(_command_line_tokens)
    _literal_params = field_validator("params")(_literals)


class Suite(_Strict):
    """A parsed suite file; ``tasks`` and ``algorithms`` keep the file's order."""

    name: str
    path: str
    description: str = ""
    seeds: tuple[int, ...] = Field(min_length=1)
    tasks: dict[str, Task] = Field(min_length=1)
    algorithms: dict[str, Algorithm] = Field(min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("must be distinct non-negative integers")
        return seeds


def _problem(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    where = []
    if loc[:1] in (["tasks"], ["algorithms"]) and len(loc) > 1:
        where.append(f"{loc[0][:-1]} '{loc[1]}'")
        loc = loc[2:]
    key = loc[0] if loc else ""
    model = {"task": Task, "algorithm": Algorithm}.get(where[0].split()[0] if where else "", Suite)
    fields = [f for f in model.model_fields if f not in ("name", "path")]
    if error["type"] == "extra_forbidden":
        text = f"unknown key '{key}'{did_you_mean(key, fields)} (allowed: {', '.join(fields)})"
    elif error["type"] == "missing":
        text = f"missing required field '{key}'"
    else:
        text = (f"'{key}' " if key else "") + error["msg"].removeprefix("Value error, ")
    return ", ".join([*where, text])


def suite_path(name_or_path: str) -> str:
    """The file of a suite name (``benchmarks/suites/<name>.yml``), or the given path."""
    if name_or_path.endswith((".yml", ".yaml")) or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise SuiteError(f"suite file '{name_or_path}' does not exist")
        return name_or_path
    known = sorted(f[: -len(".yml")] for f in os.listdir(SUITES_DIR) if f.endswith(".yml"))
    if name_or_path not in known:
        raise SuiteError(f"unknown suite '{name_or_path}'{did_you_mean(name_or_path, known)} (available: {', '.join(known)})")
    return os.path.join(SUITES_DIR, f"{name_or_path}.yml")


def load_suite(name_or_path: str) -> Suite:
    """
    Read and check a suite file.

    :raises SuiteError: naming the file, the entry and the problem
    """
    path = suite_path(name_or_path)
    where = f"suite file '{os.path.basename(path)}'"
    try:
        raw = load_yaml(path)
        if not isinstance(raw, dict):
            raise ValueError("expected a mapping at the top level")
        raw = dict(raw)
        defaults = raw.pop("defaults", None) or {}
        fields = [f for f in Task.model_fields if f != "name"]
        for key in defaults if isinstance(defaults, dict) else ["(not a mapping)"]:
            if key not in fields:
                raise ValueError(f"defaults, unknown key '{key}'{did_you_mean(key, fields)} (allowed: {', '.join(fields)})")
        for section in ("tasks", "algorithms"):
            if isinstance(raw.get(section), dict):
                merge = defaults if section == "tasks" else {}
                raw[section] = {n: {**merge, **(e or {}), "name": n} for n, e in raw[section].items()}
        name = os.path.splitext(os.path.basename(path))[0]
        return Suite.model_validate(
            {**raw, "name": name, "path": path, "description": str(raw.get("description") or "").strip()}
        )
    except ValidationError as e:
        raise SuiteError(f"{where}: {_problem(e.errors()[0])}") from None
    except ValueError as e:
        raise SuiteError(f"{where}: {e}") from None


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
        task, algorithm = self.task, self.algorithm
        spec = {
            **task.model_dump(include={"env", "action_repeat", "sim_steps", "eval_every", "eval_episodes", "score"}),
            "env_kwargs": task.env_kwargs,
            "task_extra_args": list(task.extra_args),
            "algo": algorithm.algo,
            "params": algorithm.params,
            "algo_extra_args": list(algorithm.extra_args),
        }
        return json.loads(json.dumps(spec))  # the form it takes after a JSON round trip


def current_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A record's spec with M3PO settings of sb3-m3po 0.1 under their current names."""
    if spec.get("algo") != "m3po" or not spec.get("params"):
        return spec
    return {**spec, "params": migrate_settings(spec["params"])}


def select_runs(suite: Suite, tasks: list[str] | None, algos: list[str] | None, seeds: list[int] | None) -> list[Run]:
    """The suite's runs, restricted to the named tasks/algorithms/seeds; seed-major so early seeds complete first."""
    for kind, chosen, known in (("task", tasks, suite.tasks), ("algorithm", algos, suite.algorithms)):
        for name in chosen or []:
            if name not in known:
                raise SuiteError(f"unknown {kind} '{name}' in suite '{suite.name}'{did_you_mean(name, list(known))}")
    return [
        Run(task, algorithm, seed)
        for seed in (suite.seeds if seeds is None else seeds)
        for task in suite.tasks.values()
        if not tasks or task.name in tasks
        for algorithm in suite.algorithms.values()
        if not algos or algorithm.name in algos
    ]


def applied_action_repeat(entry: dict[str, Any] | None, env_id: str, env_kwargs: dict[str, Any]) -> int:
    """Repeat of an entry's ``DMCWrapper`` times the env's own ``action_repeat`` kwarg (the multi-task ids)."""
    repeat = int(env_kwargs.get("action_repeat", (gym.spec(env_id).kwargs or {}).get("action_repeat", 1)))
    return repeat * entry_action_repeat(entry)


def check_suite_environment(suite: Suite) -> None:
    """
    What only this machine can tell: algorithms and env ids are known, the suite's action repeat is the
    one the hyperparameter files apply, and evaluations land on the suite's steps with the configured n_envs.

    :raises SuiteError: naming the algorithm or task
    """
    from rl_zoo3.utils import ALGOS

    from sb3_m3po.envs import register_envs

    register_envs()
    known = sorted({*ALGOS, "m3po"})
    for algorithm in suite.algorithms.values():
        if algorithm.algo not in known:
            raise SuiteError(
                f"algorithm '{algorithm.name}': unknown rl-zoo3 algorithm "
                f"'{algorithm.algo}'{did_you_mean(algorithm.algo, known)}"
            )
    for task in suite.tasks.values():
        try:
            gym.spec(task.env)
        except gym.error.Error as e:
            raise SuiteError(f"task '{task.name}': unknown env id '{task.env}' ({' '.join(str(e).split())})") from None
        for algorithm in suite.algorithms.values():
            if any(arg in ("-conf", "--conf-file") for arg in (*task.extra_args, *algorithm.extra_args)):
                continue  # a custom hyperparameter file: its settings are the user's responsibility
            entry = shipped_params(algorithm.algo, task.env)
            repeat = applied_action_repeat(entry, task.env, task.env_kwargs)
            if repeat != task.action_repeat:
                raise SuiteError(
                    f"task '{task.name}' says action_repeat {task.action_repeat}, but {task.env} with "
                    f"hyperparams/{algorithm.algo}.yml repeats actions {repeat} time(s) (algorithm '{algorithm.name}')"
                )
            n_envs = int(algorithm.params.get("n_envs", (entry or {}).get("n_envs", 1)))
            per_eval = task.eval_every // task.action_repeat
            if per_eval % n_envs:  # rl-zoo3 evaluates every eval_freq // n_envs vec-env steps: evaluations would drift
                raise SuiteError(
                    f"task '{task.name}', algorithm '{algorithm.name}': eval_every {task.eval_every} simulator steps "
                    f"= {per_eval} decisions is not a multiple of n_envs {n_envs}"
                )
