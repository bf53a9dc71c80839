"""rl-zoo3's ``ExperimentManager`` with M3PO's additions: per-task evaluation, resumable checkpoints, Ctrl-C, curves."""

import os
import sys
import zipfile
from typing import Any

from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback

from sb3_m3po.common.signals import StopOnInterrupt
from sb3_m3po.zoo.callbacks import TaskAwareEvalCallback
from sb3_m3po.zoo.checkpoints import ResumeCheckpointCallback


class M3POExperimentManager(ExperimentManager):
    """
    The manager ``sb3-m3po train`` runs:

    * evaluation with :class:`~sb3_m3po.zoo.callbacks.TaskAwareEvalCallback` (the task of every
      evaluation episode of multi-task envs goes into ``evaluations.npz``; otherwise ``EvalCallback``);
    * with ``checkpoint_freq``, a :class:`~sb3_m3po.zoo.checkpoints.ResumeCheckpointCallback` after the
      evaluation, so a checkpoint at step ``N`` exists only once the evaluation at ``N`` is written;
    * a resumed run (``-i``) continues the step count (rl-zoo3 calls ``learn`` with
      ``reset_num_timesteps=True``, which would restart it at 0);
    * Ctrl-C ends ``learn`` even when Python drops the ``KeyboardInterrupt`` (:class:`StopOnInterrupt`),
      and rl-zoo3 then saves the model as usual;
    * ``learning_curve.png`` next to ``evaluations.npz`` after training.
    """

    checkpoint_freq: int | None = None

    @classmethod
    def with_checkpoints(cls, checkpoint_freq: int | None) -> type["M3POExperimentManager"]:
        """This class, or a subclass of it that saves a resumable checkpoint every ``checkpoint_freq`` steps."""
        if checkpoint_freq is None:
            return cls
        return type(cls.__name__, (cls,), {"checkpoint_freq": checkpoint_freq})

    def create_callbacks(self) -> None:
        super().create_callbacks()
        for i, callback in enumerate(self.callbacks):
            if type(callback) is EvalCallback:
                self.callbacks[i] = TaskAwareEvalCallback(
                    callback.eval_env,
                    callback_on_new_best=callback.callback_on_new_best,
                    best_model_save_path=self.save_path,
                    n_eval_episodes=callback.n_eval_episodes,
                    log_path=self.save_path,
                    eval_freq=callback.eval_freq,
                    deterministic=callback.deterministic,
                )
        if self.checkpoint_freq is not None and not self.optimize_hyperparameters:
            every = max(self.checkpoint_freq // self.n_envs, 1)
            path = os.path.join(self.save_path, "checkpoints")
            self.callbacks.append(ResumeCheckpointCallback(every, path, str(self.env_name), verbose=self.verbose))

    def learn(self, model: BaseAlgorithm) -> None:
        algorithm_class = type(model)
        if self.continue_training:
            # a subclass for the duration of learn(): a bound method on the instance would be pickled
            # by every save() during training (best model, checkpoints), and the envs with it
            model.__class__ = _continuing(algorithm_class)
        stop = StopOnInterrupt()
        self.callbacks.append(stop)
        try:
            with stop.installed():
                super().learn(model)  # catches KeyboardInterrupt, so Ctrl-C still saves the model
        finally:
            self.callbacks.remove(stop)
            model.__class__ = algorithm_class
        self._write_learning_curve()

    def _write_learning_curve(self) -> None:
        npz = os.path.join(self.save_path, "evaluations.npz")
        if not os.path.exists(npz):
            return
        from sb3_m3po.zoo.plotting import plot_evaluations

        try:
            plot_evaluations(npz, os.path.join(self.save_path, "learning_curve.png"), self.env_name.gym_id)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # no evaluation yet, or a file cut short
            print(f"learning_curve.png not written: {e}", file=sys.stderr)


_CONTINUING: dict[type, type] = {}


def _continuing(algorithm_class: type) -> type:
    """``algorithm_class`` whose ``learn`` continues the step count (``reset_num_timesteps=False``)."""
    if algorithm_class not in _CONTINUING:

        def learn(self: Any, *args: Any, **kwargs: Any) -> Any:
            return algorithm_class.learn(self, *args, reset_num_timesteps=False, **kwargs)  # type: ignore[attr-defined]

        _CONTINUING[algorithm_class] = type(algorithm_class.__name__, (algorithm_class,), {"learn": learn})
    return _CONTINUING[algorithm_class]
