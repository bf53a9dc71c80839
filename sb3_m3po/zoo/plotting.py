"""Learning-curve PNG from an SB3 ``evaluations.npz`` (written by ``EvalCallback``)."""

import numpy as np


def plot_evaluations(npz_path: str, png_path: str, title: str, label: str = "deterministic eval") -> None:
    """
    Plot mean +- std of the evaluation returns against env steps.

    :param npz_path: ``evaluations.npz`` of an ``EvalCallback``
    :param png_path: where to write the PNG
    :param title: figure title (the env id)
    :param label: legend label of the curve
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(npz_path)
    steps, results = data["timesteps"], data["results"]
    if len(steps) == 0:
        raise ValueError(f"{npz_path} holds no evaluation yet: nothing to plot")
    mean, std = results.mean(1), results.std(1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, marker="o", label=label)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.3)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
