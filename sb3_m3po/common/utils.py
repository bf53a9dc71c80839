"""Observation handling shared by the algorithm and the policy; reading the YAML files users give."""

from typing import Any

import numpy as np
import yaml
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecNormalize


class NonFiniteError(ValueError):
    """A NaN or inf reached M3PO: from the env (observation, reward) or from training (losses, targets, actions).

    A ``ValueError`` so that rl-zoo3's Optuna objective prunes the trial instead of crashing the study.
    """


def check_finite(what: str, array: np.ndarray, timestep: int) -> None:
    """
    :param what: what the array holds, for the message
    :param array: ``(n_envs, ...)`` one step of all envs
    :param timestep: the model's step count, for the message
    :raises NonFiniteError: naming the envs whose entries are NaN or inf
    """
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        raise NonFiniteError(
            f"M3PO got a non-finite (NaN or inf) {what} for env(s) {bad.tolist()} "
            f"at timestep {timestep}; nothing from this step was stored or trained on"
        )


def check_dones(dones: Any, env: object, n_envs: int) -> np.ndarray:
    """:raises ValueError: unless ``dones`` (of ``env.step``) is a bool array of shape ``(n_envs,)``, naming the env"""
    if not (isinstance(dones, np.ndarray) and dones.dtype == np.bool_ and dones.shape == (n_envs,)):
        raise ValueError(
            f"{type(env).__name__}.step() returned dones {type(dones).__name__} {getattr(dones, 'dtype', '')} "
            f"{getattr(dones, 'shape', '')}: M3PO needs a bool array of shape ({n_envs},) (terminated or truncated, "
            "one per env) to tell terminations from truncations"
        )
    return dones


def check_observation_space(observation_space: spaces.Space) -> int:
    """
    Check that M3PO can encode the observation space and return its flat size.

    :raises ValueError: for image observations or non-Box (sub)spaces
    """
    if isinstance(observation_space, spaces.Dict):
        subspaces = list(observation_space.spaces.items())
    else:
        subspaces = [("obs", observation_space)]
    size = 0
    for key, space in subspaces:
        if not isinstance(space, spaces.Box):
            raise ValueError(
                f"M3PO supports Box observations (or a Dict of Box), but observation '{key}' is {space}. "
                "Wrap the env (e.g. gymnasium.wrappers.FlattenObservation) to give a Box."
            )
        if is_image_space(space, check_channels=False):
            raise ValueError(
                f"M3PO has no CNN encoder yet, but observation '{key}' looks like an image ({space}). Use state observations."
            )
        size += int(np.prod(space.shape))
    return size


def flatten_observation(obs: np.ndarray | dict[str, np.ndarray], n_envs: int) -> np.ndarray:
    """
    Flatten a batch of (possibly Dict) observations to ``(n_envs, obs_dim)`` float32.

    Dict keys are concatenated in sorted order, the order of ``gymnasium.spaces.Dict``.
    """
    if isinstance(obs, dict):
        return np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(n_envs, -1) for k in sorted(obs)], axis=1)
    return np.asarray(obs, dtype=np.float32).reshape(n_envs, -1)


def real_next_observation(
    new_obs: np.ndarray | dict[str, np.ndarray], dones: np.ndarray, infos: list[dict]
) -> np.ndarray | dict[str, np.ndarray]:
    """
    Replace the auto-reset observation of finished envs by their real terminal observation.

    Only the finished envs are touched; the returned object is a copy.
    """
    done_idx = np.flatnonzero(dones)
    if isinstance(new_obs, dict):
        next_obs: np.ndarray | dict[str, np.ndarray] = {k: v.copy() for k, v in new_obs.items()}
    else:
        next_obs = new_obs.copy()
    for i in done_idx:
        terminal = infos[i].get("terminal_observation")
        if terminal is None:
            continue
        if isinstance(next_obs, dict):
            for k in next_obs:
                next_obs[k][i] = terminal[k]
        else:
            next_obs[i] = terminal
    return next_obs


def unnormalized(
    vec_normalize: VecNormalize | None,
    last_original_obs: np.ndarray | dict[str, np.ndarray] | None,
    obs: np.ndarray,
    next_obs: np.ndarray,
    dones: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Flat observations and real next observations as the env gave them, before ``VecNormalize`` (the
    replay normalises with the statistics current when it samples). Terminal observations come
    normalised in ``infos`` and are mapped back with this step's statistics.

    :param last_original_obs: ``VecNormalize``'s original observation before this step
    :param obs: ``(n_envs, obs_dim)`` flat observations the policy saw
    :param next_obs: ``(n_envs, obs_dim)`` flat real next observations (normalised)
    """
    if vec_normalize is None or not vec_normalize.norm_obs:
        return obs, next_obs
    assert last_original_obs is not None, "VecNormalize's original observation is missing"
    n_envs = len(obs)
    original = flatten_observation(vec_normalize.get_original_obs(), n_envs).copy()
    done_idx = np.flatnonzero(dones)
    original[done_idx] = vec_normalize.unnormalize_obs(next_obs[done_idx])
    return flatten_observation(last_original_obs, n_envs), original


def load_yaml(path: str) -> Any:
    """
    Parse a YAML file, turning a syntax error into a one-line message with its line number.

    :param path: file to read
    :return: the parsed document
    :raises ValueError: ``"malformed YAML at line N: <problem>"`` if the file does not parse
    """
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"malformed YAML{line}: {problem}") from None
