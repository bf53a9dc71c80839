"""
Train with rl-zoo3, with M3PO registered: ``python -m sb3_m3po.train --algo m3po --env Pendulum-v1``.

Accepts every ``rl_zoo3.train`` flag. Without ``-conf``, ``--algo m3po`` (and ``ppo``/``sac``
on the env ids of ``hyperparams/``) uses the hyperparameters shipped with this package.
"""

import functools
import sys

from sb3_m3po.zoo import register, shipped_config


def _flag_value(argv: list[str], *names: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def with_shipped_config(argv: list[str]) -> list[str]:
    """Add ``--conf-file`` pointing at our yml when the user gave none and we ship one."""
    if _flag_value(argv, "-conf", "--conf-file") is not None:
        return argv
    algo = _flag_value(argv, "--algo", default="ppo")
    env_id = _flag_value(argv, "--env", default="CartPole-v1")
    assert algo is not None and env_id is not None
    config = shipped_config(algo, env_id)
    return argv if config is None else [*argv, "--conf-file", config]


def continue_step_count_on_resume() -> None:
    """
    Make ``-i`` (resume) continue the step count, tensorboard curves and schedules.

    rl-zoo3 calls ``model.learn(n_timesteps)``, which restarts ``num_timesteps`` at 0 for a
    loaded model; for a resumed run we pass ``reset_num_timesteps=False`` instead.
    """
    from rl_zoo3.exp_manager import ExperimentManager

    if getattr(ExperimentManager.learn, "_continues_step_count", False):
        return
    original = ExperimentManager.learn

    @functools.wraps(original)
    def learn(self: ExperimentManager, model) -> None:  # type: ignore[no-untyped-def]
        if not self.continue_training:
            original(self, model)
            return
        model.learn = functools.partial(model.learn, reset_num_timesteps=False)  # type: ignore[method-assign]
        try:
            original(self, model)
        finally:
            del model.learn  # an instance attribute would be pickled by save()

    learn._continues_step_count = True  # type: ignore[attr-defined]
    ExperimentManager.learn = learn  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    register()
    continue_step_count_on_resume()
    from rl_zoo3.train import train

    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["sb3_m3po.train", *with_shipped_config(args)]
    train()


if __name__ == "__main__":
    main()
