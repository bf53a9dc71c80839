"""
Train with rl-zoo3, with M3PO registered: ``python -m sb3_m3po.train --algo m3po --env Pendulum-v1``.

Accepts every ``rl_zoo3.train`` flag. Without ``-conf``, ``--algo m3po`` (and ``ppo``/``sac``
on the env ids of ``hyperparams/``) uses the hyperparameters shipped with this package.
Inputs rl-zoo3 would only trip over deep inside (unknown env id or algorithm, malformed
hyperparameter file, unreachable Optuna storage) are checked first and reported in one line.
After training, ``learning_curve.png`` is written next to ``evaluations.npz``.

One flag of our own: ``--checkpoint-freq N`` saves a resumable checkpoint (model, replay buffer,
VecNormalize statistics; :mod:`sb3_m3po.common.checkpoints`) every ``N`` steps (divided by the
number of envs, as rl-zoo3's ``--save-freq``) to ``<run>/checkpoints/step_<steps>/``, keeping only
the latest; ``-i <run>/checkpoints/step_<steps>/model.zip`` resumes from it.
"""

import functools
import importlib
import os
import sys
import zipfile
from typing import Any

from sb3_m3po.common.utils import load_yaml
from sb3_m3po.zoo import register, shipped_config


class UsageError(Exception):
    """Bad command-line input, reported as one line (no traceback)."""


CHECKPOINT_FLAG = "--checkpoint-freq"


def pop_checkpoint_freq(argv: list[str]) -> tuple[list[str], int | None]:
    """
    Take ``--checkpoint-freq N`` out of the arguments rl-zoo3 gets.

    :return: the remaining arguments and ``N`` (None when not given)
    :raises UsageError: if ``N`` is missing or not a positive integer
    """
    value = _flag_value(argv, CHECKPOINT_FLAG)
    present = [i for i, arg in enumerate(argv) if arg == CHECKPOINT_FLAG or arg.startswith(CHECKPOINT_FLAG + "=")]
    if not present:
        return argv, None
    if value is None or not value.isdigit() or int(value) <= 0:
        raise UsageError(f"{CHECKPOINT_FLAG} needs a positive number of steps, got {value!r}")
    i = present[0]
    width = 1 if "=" in argv[i] else 2
    return argv[:i] + argv[i + width :], int(value)


def _flag_value(argv: list[str], *names: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def _flag_values(argv: list[str], name: str) -> list[str]:
    """Values of an ``nargs="+"`` flag (up to the next flag)."""
    if name not in argv:
        return []
    values = []
    for arg in argv[argv.index(name) + 1 :]:
        if arg.startswith("-"):
            break
        values.append(arg)
    return values


def with_shipped_config(argv: list[str]) -> list[str]:
    """Add ``--conf-file`` pointing at our yml when the user gave none and we ship one."""
    if _flag_value(argv, "-conf", "--conf-file") is not None:
        return argv
    algo = _flag_value(argv, "--algo", default="ppo")
    env_id = _flag_value(argv, "--env", default="CartPole-v1")
    assert algo is not None and env_id is not None
    config = shipped_config(algo, env_id)
    return argv if config is None else [*argv, "--conf-file", config]


def check_hyperparameter_file(path: str) -> None:
    """Raise :class:`UsageError` unless ``path`` is a readable yml mapping env ids to hyperparameters."""
    if not (path.endswith(".yml") or path.endswith(".yaml")):
        return  # a python module path, which rl-zoo3 imports itself
    if not os.path.isfile(path):
        raise UsageError(f"hyperparameter file '{path}' does not exist")
    try:
        table = load_yaml(path)
    except ValueError as e:
        raise UsageError(f"hyperparameter file '{path}': {e}") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UsageError(f"malformed hyperparameter file '{path}': expected a mapping env id -> {{hyperparameter: value}}")


def check_storage(url: str) -> None:
    """Raise :class:`UsageError` unless the Optuna storage ``url`` can be opened (journal file or database)."""
    import optuna

    if url.endswith(".log"):
        folder = os.path.dirname(os.path.abspath(url))
        if os.path.exists(folder) and not os.access(folder, os.W_OK):
            raise UsageError(f"tuning storage '{url}': folder is not writable")
        return
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:
        shown = url
    try:
        optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # sqlalchemy/driver errors differ by backend; all mean "cannot use it"
        message = " ".join(str(e).split())[:300]
        raise UsageError(f"cannot open tuning storage '{shown}': {type(e).__name__}: {message}") from e


def preflight(argv: list[str]) -> None:
    """Check algorithm, env id, hyperparameter file and storage before rl-zoo3 builds anything."""
    import gymnasium as gym
    from rl_zoo3.utils import ALGOS

    for package in _flag_values(argv, "--gym-packages"):
        importlib.import_module(package)
    algo = _flag_value(argv, "--algo", default="ppo")
    if algo not in ALGOS:
        raise UsageError(f"unknown algorithm '{algo}' (available: {', '.join(sorted(ALGOS))})")
    env_id = _flag_value(argv, "--env", default="CartPole-v1")
    assert env_id is not None
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise UsageError(f"unknown env id '{env_id}': {' '.join(str(e).split())}") from e
    config = _flag_value(argv, "-conf", "--conf-file")
    if config is not None:
        check_hyperparameter_file(config)
    storage = _flag_value(argv, "--storage")
    if storage is not None:
        check_storage(storage)


def _write_learning_curve(save_path: str, env_id: str) -> None:
    npz = os.path.join(save_path, "evaluations.npz")
    if not os.path.exists(npz):
        return
    from sb3_m3po.plotting import plot_evaluations

    try:
        plot_evaluations(npz, os.path.join(save_path, "learning_curve.png"), env_id)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # no evaluation yet, or a file cut short
        print(f"learning_curve.png not written: {e}", file=sys.stderr)


def patch_experiment_manager(checkpoint_freq: int | None = None) -> None:
    """
    Make ``-i`` (resume) continue the step count, plot the learning curve after training, evaluate
    with :class:`~sb3_m3po.common.callbacks.TaskAwareEvalCallback` (per-task evaluation of multi-task envs),
    and with ``checkpoint_freq`` add a :class:`~sb3_m3po.common.checkpoints.ResumeCheckpointCallback`
    after the evaluation callback.

    rl-zoo3 calls ``model.learn(n_timesteps)``, which restarts ``num_timesteps`` at 0 for a
    loaded model; for a resumed run we pass ``reset_num_timesteps=False`` instead.
    """
    from rl_zoo3 import exp_manager
    from rl_zoo3.exp_manager import ExperimentManager

    from sb3_m3po.common.callbacks import TaskAwareEvalCallback
    from sb3_m3po.common.signals import StopOnInterrupt

    # the task of every evaluation episode of multi-task envs goes into evaluations.npz (else unchanged)
    exp_manager.EvalCallback = TaskAwareEvalCallback  # type: ignore[misc]
    _patch_checkpoints(ExperimentManager, checkpoint_freq)
    if getattr(ExperimentManager.learn, "_sb3_m3po", False):
        return
    original = ExperimentManager.learn

    @functools.wraps(original)
    def learn(self: ExperimentManager, model) -> None:  # type: ignore[no-untyped-def]
        algorithm_class = type(model)
        if self.continue_training:
            # A subclass for the duration of learn(): a bound-method attribute on the instance would be
            # pickled by every save() during training (best model, checkpoints), and with it the envs.
            model.__class__ = _continuing(algorithm_class)
        stop = StopOnInterrupt()
        self.callbacks.append(stop)
        try:
            with stop.installed():
                original(self, model)  # catches KeyboardInterrupt, so Ctrl-C still saves the model
        finally:
            self.callbacks.remove(stop)
            model.__class__ = algorithm_class
        _write_learning_curve(self.save_path, self.env_name.gym_id)

    learn._sb3_m3po = True  # type: ignore[attr-defined]
    ExperimentManager.learn = learn  # type: ignore[method-assign]


_CONTINUING: dict[type, type] = {}


def _continuing(algorithm_class: type) -> type:
    """``algorithm_class`` whose ``learn`` continues the step count (``reset_num_timesteps=False``)."""
    if algorithm_class not in _CONTINUING:

        def learn(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return algorithm_class.learn(self, *args, reset_num_timesteps=False, **kwargs)  # type: ignore[attr-defined]

        _CONTINUING[algorithm_class] = type(algorithm_class.__name__, (algorithm_class,), {"learn": learn})
    return _CONTINUING[algorithm_class]


def _patch_checkpoints(manager: Any, checkpoint_freq: int | None) -> None:
    original = getattr(manager.create_callbacks, "_sb3_m3po_original", manager.create_callbacks)
    if checkpoint_freq is None:
        manager.create_callbacks = original
        return
    from sb3_m3po.common.checkpoints import ResumeCheckpointCallback

    @functools.wraps(original)
    def create_callbacks(self) -> None:  # type: ignore[no-untyped-def]
        original(self)
        if not self.optimize_hyperparameters:
            every = max(checkpoint_freq // self.n_envs, 1)
            path = os.path.join(self.save_path, "checkpoints")
            self.callbacks.append(ResumeCheckpointCallback(every, path, str(self.env_name), verbose=self.verbose))

    create_callbacks._sb3_m3po_original = original  # type: ignore[attr-defined]
    manager.create_callbacks = create_callbacks


def main(argv: list[str] | None = None) -> None:
    register()
    from rl_zoo3.train import train

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args, checkpoint_freq = pop_checkpoint_freq(args)
        if "-h" not in args and "--help" not in args:
            preflight(args)
    except UsageError as e:
        print(f"sb3-m3po train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    patch_experiment_manager(checkpoint_freq)
    sys.argv = ["sb3_m3po.train", *with_shipped_config(args)]
    train()


if __name__ == "__main__":
    main()
