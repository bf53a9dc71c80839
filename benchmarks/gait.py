"""
The gait of trained HalfCheetah models: is a plateau a cheetah running on its back?

Replays each model deterministically (``model.predict``, as rl-zoo3's evaluation) on episodes with env seeds
100, 101, ... and reports per model: the return, the mean forward velocity, the share of steps with the torso
turned past 90 degrees (``qpos[2]``, the root's rotation about the y axis), the first such step, and the
critic's value of the executed actions (M3PO: min of two Q heads on the encoded state; SAC: min of its two
critics) against the discounted return actually collected from there. Usage::

    python benchmarks/gait.py --models m3po=<run folder>/HalfCheetah-v5.zip sac=<...>.zip --out <folder>
"""

import argparse
import json
import os
import re
import sys

import gymnasium as gym
import numpy as np
import pandas as pd
import torch as th
from rl_zoo3.utils import ALGOS
from runner.runs import code_version, write_atomic
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_m3po import M3PO


def q_values(model: BaseAlgorithm, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The model's own Q of each (observation, executed env action), the min over two heads/critics."""
    policy = model.policy
    o = th.as_tensor(obs, dtype=th.float32)
    a = th.as_tensor(policy.scale_action(actions), dtype=th.float32)  # env bounds -> [-1, 1]
    with th.no_grad():
        if isinstance(model, M3PO):
            return policy.world_model.q_value(policy.encode(o), a, reduce="min").squeeze(-1).numpy()
        return th.min(*policy.critic(o, a)).squeeze(-1).numpy()


def replay(model: BaseAlgorithm, env_id: str, seed: int, gamma: float) -> dict[str, float]:
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    state, start, done = None, np.ones(1, dtype=bool), False
    observations, actions, rewards, angles, velocities = [], [], [], [], []
    while not done:
        action, state = model.predict(obs[None], state=state, episode_start=start, deterministic=True)
        observations.append(obs)
        actions.append(action[0])
        obs, reward, terminated, truncated, info = env.step(action[0])
        rewards.append(reward)
        angles.append(float(env.unwrapped.data.qpos[2]))
        velocities.append(info["x_velocity"])
        start, done = np.zeros(1, dtype=bool), terminated or truncated
    returns, running = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    flipped = np.abs(np.asarray(angles)) > np.pi / 2
    first = int(np.argmax(flipped)) if flipped.any() else None
    q = q_values(model, np.asarray(observations), np.asarray(actions))
    early = slice(0, len(rewards) - int(5 / (1 - gamma)))  # steps whose discounted return is not cut by the time limit
    return {
        "env_seed": seed, "return": float(np.sum(rewards)), "mean_x_velocity": float(np.mean(velocities)),
        "flipped_share": float(flipped.mean()), "first_flipped_step": first,
        "q_mean": float(q[early].mean()), "discounted_return_mean": float(returns[early].mean()),
    }  # fmt: skip


def from_repository(text: str) -> str:
    """Model paths from ``benchmarks/runs/`` on, without the machine's (or a worktree's) prefix."""
    return re.sub(r"[^\s=]*?(benchmarks/runs/)", r"\1", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=PATH", help="algo[_label]=model zip")
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--out", required=True, help="folder of gait.json and gait.md")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    rows = []
    for item in args.models:
        name, path = item.split("=", 1)
        algo = name.split("_")[0]
        model = (M3PO if algo == "m3po" else ALGOS[algo]).load(path, device="cpu")
        for episode in range(args.episodes):
            row = replay(model, args.env, 100 + episode, model.gamma)
            rows.append({"model": name, "path": from_repository(path), **row})
    command = from_repository("python benchmarks/gait.py " + " ".join(sys.argv[1:] if argv is None else argv))
    header = {"command": command, "commit": code_version()}
    os.makedirs(args.out, exist_ok=True)
    write_atomic(os.path.join(args.out, "gait.json"), json.dumps({**header, "rows": rows}, indent=1) + "\n")
    table = pd.DataFrame(rows).drop(columns="path").to_markdown(index=False, floatfmt=".4g")
    text = f"# Gait of {args.env} models\n\nProduced by `{command}` (commit {header['commit']}).\n\n{table}\n"
    write_atomic(os.path.join(args.out, "gait.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
