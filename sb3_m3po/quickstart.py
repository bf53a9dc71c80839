"""
Short M3PO training run on a default task: saves the model, SB3 logs, evaluations and a learning-curve PNG.

Usage: ``python -m sb3_m3po.quickstart [--env Pendulum-v1] [--timesteps 6000] [--out runs/quickstart]``
"""

import argparse
import os

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_m3po import M3PO
from sb3_m3po.common.envs import make_env


def plot_evaluations(npz_path: str, png_path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(npz_path)
    steps, results = data["timesteps"], data["results"]
    mean, std = results.mean(1), results.std(1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, label="M3PO (deterministic eval)")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.3)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1", help="gymnasium, dm_control/... or metaworld/... id")
    parser.add_argument("--timesteps", type=int, default=6000)
    parser.add_argument("--action-repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-freq", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join("runs", "quickstart"))
    args = parser.parse_args()

    th.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)

    def env_fn():
        return make_env(args.env, action_repeat=args.action_repeat, seed=args.seed)

    env = make_vec_env(env_fn, n_envs=1, seed=args.seed, monitor_dir=args.out)
    eval_env = make_vec_env(env_fn, n_envs=1, seed=args.seed + 1000)
    model = M3PO("MlpPolicy", env, seed=args.seed, verbose=1)
    model.set_logger(configure(args.out, ["stdout", "csv", "tensorboard"]))
    callback = EvalCallback(eval_env, eval_freq=args.eval_freq, n_eval_episodes=5, log_path=args.out)
    model.learn(args.timesteps, callback=callback, progress_bar=False)
    model.save(os.path.join(args.out, "model"))
    plot_evaluations(os.path.join(args.out, "evaluations.npz"), os.path.join(args.out, "learning_curve.png"), args.env)
    print(f"model, logs, evaluations.npz and learning_curve.png written to {args.out}")


if __name__ == "__main__":
    main()
