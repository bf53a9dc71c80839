"""Suite files (``benchmarks/suites/<name>.yml``, format in ``suites/README.md``) parsed into a typed model."""

import difflib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from runner import BENCH_DIR
from sb3_m3po.common.hyperparams import entry_action_repeat, shipped_params
from sb3_m3po.common.utils import load_yaml
from sb3_m3po.m3po.save_util import migrate_settings

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
    """One environment with its budget and how it is scored."""

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
        if not self.range[0] < self.range[1]:
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
        return (score - self.range[0]) / (self.range[1] - self.range[0])


class Algorithm(_Strict):
    """An rl-zoo3 algorithm with hyperparameter overrides (``-params``); an ablation is a name with other params."""

    name: str = Name
    algo: str = Field(min_length=1)
    params: dict[str, Any] = {}
    extra_args: tuple[str, ...] = ()
    compare_to: str | None = None  # the entry the summary subtracts it from (default: the suite's first)

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

    @model_validator(mode="after")
    def _known_baselines(self) -> "Suite":
        for algorithm in self.algorithms.values():
            if algorithm.compare_to is not None and algorithm.compare_to not in self.algorithms:
                hint = did_you_mean(algorithm.compare_to, list(self.algorithms))
                raise ValueError(f"algorithm '{algorithm.name}': compare_to names no algorithm of the suite{hint}")
        return self


def _unknown_key(key: str, model: type[BaseModel]) -> str:
    fields = [f for f in model.model_fields if f not in ("name", "path")]
    return f"unknown key '{key}'{did_you_mean(key, fields)} (allowed: {', '.join(fields)})"


def _problem(error: dict[str, Any]) -> str:
    """One pydantic error as ``<entry>, <problem>``, with the entry and key named as in the file."""
    loc, where, model = [str(part) for part in error["loc"]], "", Suite
    if len(loc) > 1 and loc[0] in ("tasks", "algorithms"):
        where, model = f"{loc[0][:-1]} '{loc[1]}', ", Task if loc[0] == "tasks" else Algorithm
        loc = loc[2:]
    key = loc[0] if loc else ""
    if error["type"] == "extra_forbidden":
        return where + _unknown_key(key, model)
    if error["type"] == "missing":
        return f"{where}missing required field '{key}'"
    return where + (f"'{key}' " if key else "") + error["msg"].removeprefix("Value error, ")


def load_suite(name_or_path: str) -> Suite:
    """
    Read and check a suite file, given by name (``benchmarks/suites/<name>.yml``) or path.

    :raises SuiteError: naming the file, the entry and the problem
    """
    path = name_or_path
    if not name_or_path.endswith((".yml", ".yaml")) and os.sep not in name_or_path:
        known = sorted(f[: -len(".yml")] for f in os.listdir(SUITES_DIR) if f.endswith(".yml"))
        if name_or_path not in known:
            raise SuiteError(
                f"unknown suite '{name_or_path}'{did_you_mean(name_or_path, known)} (available: {', '.join(known)})"
            )
        path = os.path.join(SUITES_DIR, f"{name_or_path}.yml")
    elif not os.path.isfile(path):
        raise SuiteError(f"suite file '{path}' does not exist")
    try:
        raw = load_yaml(path)
        if not isinstance(raw, dict):
            raise ValueError("expected a mapping at the top level")
        defaults = raw.pop("defaults", None) or {}
        for key in defaults if isinstance(defaults, dict) else ["(not a mapping)"]:
            if key not in Task.model_fields or key == "name":
                raise ValueError("defaults, " + _unknown_key(key, Task))
        for section, merge in (("tasks", defaults), ("algorithms", {})):
            if isinstance(raw.get(section), dict):
                raw[section] = {n: {**merge, **(e or {}), "name": n} for n, e in raw[section].items()}
        name, description = os.path.splitext(os.path.basename(path))[0], str(raw.get("description") or "").strip()
        return Suite.model_validate({**raw, "name": name, "path": path, "description": description})
    except ValidationError as e:
        raise SuiteError(f"suite file '{os.path.basename(path)}': {_problem(e.errors()[0])}") from None
    except ValueError as e:
        raise SuiteError(f"suite file '{os.path.basename(path)}': {e}") from None


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
            **self.task.model_dump(include={"env", "action_repeat", "sim_steps", "eval_every", "eval_episodes", "score"}),
            "env_kwargs": self.task.env_kwargs,
            "task_extra_args": list(self.task.extra_args),
            "algo": self.algorithm.algo,
            "params": self.algorithm.params,
            "algo_extra_args": list(self.algorithm.extra_args),
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
            hint = did_you_mean(algorithm.algo, known)
            raise SuiteError(f"algorithm '{algorithm.name}': unknown rl-zoo3 algorithm '{algorithm.algo}'{hint}")
    for task, algorithm in ((t, a) for t in suite.tasks.values() for a in suite.algorithms.values()):
        try:
            env_repeat = (gym.spec(task.env).kwargs or {}).get("action_repeat", 1)  # the multi-task ids' own kwarg
        except gym.error.Error as e:
            raise SuiteError(f"task '{task.name}': unknown env id '{task.env}' ({' '.join(str(e).split())})") from None
        if any(arg in ("-conf", "--conf-file") for arg in (*task.extra_args, *algorithm.extra_args)):
            continue  # a custom hyperparameter file: its settings are the user's responsibility
        entry = shipped_params(algorithm.algo, task.env)
        repeat = int(task.env_kwargs.get("action_repeat", env_repeat)) * entry_action_repeat(entry)
        if repeat != task.action_repeat:
            raise SuiteError(
                f"task '{task.name}' says action_repeat {task.action_repeat}, but {task.env} with "
                f"hyperparams/{algorithm.algo}.yml repeats actions {repeat} time(s) (algorithm '{algorithm.name}')"
            )
        n_envs = int(algorithm.params.get("n_envs", (entry or {}).get("n_envs", 1)))
        if (task.eval_every // task.action_repeat) % n_envs:  # rl-zoo3 evaluates every eval_freq // n_envs steps
            raise SuiteError(
                f"task '{task.name}', algorithm '{algorithm.name}': eval_every {task.eval_every} simulator steps "
                f"= {task.eval_every // task.action_repeat} decisions is not a multiple of n_envs {n_envs}"
            )
