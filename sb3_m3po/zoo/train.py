"""
Train with rl-zoo3, with M3PO registered: ``python -m sb3_m3po.zoo.train --algo m3po --env Pendulum-v1``
(``sb3-m3po train ...``).

Accepts every ``rl_zoo3.train`` flag. Without ``-conf``, ``--algo m3po`` (and ``ppo``/``sac`` on the
env ids of the shipped files) uses the hyperparameters shipped with this package. Inputs rl-zoo3
would only trip over deep inside (unknown env id or algorithm, malformed hyperparameter file,
unreachable Optuna storage) are checked first and reported in one line. After training,
``learning_curve.png`` is written next to ``evaluations.npz``.

One flag of our own: ``--checkpoint-freq N`` saves a resumable checkpoint (model, replay buffer,
VecNormalize statistics; :mod:`sb3_m3po.zoo.checkpoints`) every ``N`` steps (divided by the number
of envs, as rl-zoo3's ``--save-freq``) to ``<run>/checkpoints/step_<steps>/``, keeping only the
latest; ``-i <run>/checkpoints/step_<steps>/model.zip`` resumes from it.
"""

import argparse
import importlib
import os
import sys
import unittest.mock

from sb3_m3po.common.utils import load_yaml
from sb3_m3po.zoo.hyperparams import shipped_config
from sb3_m3po.zoo.registration import register


class UsageError(Exception):
    """Bad command-line input, reported as one line (no traceback)."""


def _known_flags() -> argparse.ArgumentParser:
    """The rl-zoo3 flags this wrapper reads before rl-zoo3 does, plus ``--checkpoint-freq``; the rest passes through."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("-conf", "--conf-file", default=None)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--gym-packages", nargs="+", default=[])
    parser.add_argument("--checkpoint-freq", default=None)
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """
    :return: the flags we read, and the arguments for rl-zoo3 (``--checkpoint-freq`` taken out)
    :raises UsageError: if ``--checkpoint-freq`` is not a positive integer
    """
    known, _ = _known_flags().parse_known_args(argv)
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--checkpoint-freq":
            skip = i + 1 < len(argv)
        elif not arg.startswith("--checkpoint-freq="):
            rest.append(arg)
    value = known.checkpoint_freq
    if value is not None and (not value.isdigit() or int(value) <= 0):
        raise UsageError(f"--checkpoint-freq needs a positive number of steps, got {value!r}")
    known.checkpoint_freq = None if value is None else int(value)
    return known, rest


def with_shipped_config(argv: list[str]) -> tuple[list[str], str | None]:
    """
    Add ``--conf-file`` pointing at our yml when the user gave none and we ship an entry for the env id.

    :return: the arguments, and the temporary yml to delete after training (None: nothing to delete)
    """
    known, _ = _known_flags().parse_known_args(argv)
    config = None if known.conf_file is not None else shipped_config(known.algo, known.env)
    if config is None:
        return argv, None
    path, temporary = config
    return [*argv, "--conf-file", path], path if temporary else None


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


def preflight(known: argparse.Namespace) -> None:
    """Check algorithm, env id, hyperparameter file and storage before rl-zoo3 builds anything."""
    import gymnasium as gym
    from rl_zoo3.utils import ALGOS

    for package in known.gym_packages:
        importlib.import_module(package)
    if known.algo not in ALGOS:
        raise UsageError(f"unknown algorithm '{known.algo}' (available: {', '.join(sorted(ALGOS))})")
    try:
        gym.spec(known.env)
    except gym.error.Error as e:
        raise UsageError(f"unknown env id '{known.env}': {' '.join(str(e).split())}") from e
    if known.conf_file is not None:
        check_hyperparameter_file(known.conf_file)
    if known.storage is not None:
        check_storage(known.storage)


def main(argv: list[str] | None = None) -> None:
    register()
    import rl_zoo3.train

    from sb3_m3po.zoo.experiment import M3POExperimentManager

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        known, rest = split_args(args)
        if not known.help:
            preflight(known)
    except UsageError as e:
        print(f"sb3-m3po train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    manager = M3POExperimentManager.with_checkpoints(known.checkpoint_freq)
    zoo_args, temporary = with_shipped_config(rest)
    sys.argv = ["sb3_m3po.zoo.train", *zoo_args]
    try:
        # rl-zoo3's train() builds the manager it imported; ours is a subclass of it
        with unittest.mock.patch.object(rl_zoo3.train, "ExperimentManager", manager):
            rl_zoo3.train.train()
    finally:
        if temporary is not None:
            os.remove(temporary)


if __name__ == "__main__":
    main()
