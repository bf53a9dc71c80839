"""
Per-task metrics of multi-task training: rollout statistics per task and an evaluation callback that runs every task.

Logger keys: ``rollout/<task>/ep_rew_mean``, ``rollout/<task>/success_rate`` and their means over
tasks ``rollout/task_mean/ep_rew_mean``, ``rollout/task_mean/success_rate``; ``eval/<task>/mean_reward``,
``eval/<task>/success_rate``, ``eval/mean_reward``, ``eval/success_rate`` (means over tasks).
Task names are those of :func:`sb3_m3po.envs.task_sets.task_names` (``reach-v3``, ``cartpole-swingup-v0``).
"""

import os
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback, EventCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_m3po.common.signals import deferred_keyboard_interrupt
from sb3_m3po.common.task_metrics import TaskEpisodeStats, record_task_metric
from sb3_m3po.envs.multitask import (
    TaskSetSpec,
    configure_task_schedule,
    get_task_set_spec,
    make_multitask_vec_env,
)


class MultiTaskRolloutLogger(BaseCallback):
    """
    Per-task rollout metrics (see :class:`TaskEpisodeStats`) for any SB3 algorithm on a multi-task VecEnv.

    Also spreads cycling envs over the tasks at the start of training
    (:func:`~sb3_m3po.envs.multitask.configure_task_schedule`), so that ``n_envs = num_tasks``
    envs of a registered id such as ``m3po/MT10-v0`` each keep one task. M3PO does both itself.
    Usable from rl-zoo3 hyperparameters: ``callback: sb3_m3po.zoo.callbacks.MultiTaskRolloutLogger``.

    :param window: episodes per task in the means
    :param verbose: verbosity level
    """

    def __init__(self, window: int = 100, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.window = window
        self.stats: TaskEpisodeStats | None = None

    def _on_training_start(self) -> None:
        spec = get_task_set_spec(self.training_env)
        if spec is None:
            raise ValueError(
                "MultiTaskRolloutLogger needs a multi-task env (sb3_m3po.envs.multitask.MultiTaskEnv, e.g. m3po/MT10-v0)"
            )
        configure_task_schedule(self.training_env)
        self.stats = TaskEpisodeStats(spec.names, self.window)

    def _on_step(self) -> bool:
        assert self.stats is not None
        self.stats.update(self.locals["infos"], self.locals["dones"])
        return True

    def _on_rollout_end(self) -> None:
        if self.stats is not None:
            self.stats.record(self.logger)


class TaskEvaluation(NamedTuple):
    """Episodes of :func:`evaluate_tasks`, each array ``(num_tasks, n_eval_episodes)`` in task order."""

    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray  # NaN for tasks without a success signal


def evaluate_tasks(
    model: "BaseAlgorithm",
    eval_env: VecEnv,
    n_eval_episodes: int = 1,
    deterministic: bool = True,
    success: str = "final",
) -> TaskEvaluation:
    """
    Run ``n_eval_episodes`` episodes of every task of a multi-task env and return them per task.

    :param model: any SB3 model trained on the env's observation and action spaces
    :param eval_env: multi-task VecEnv (:func:`~sb3_m3po.envs.multitask.make_multitask_vec_env`, one env per
        task, or envs that cycle through the tasks)
    :param n_eval_episodes: episodes per task
    :param deterministic: deterministic actions
    :param success: ``"final"``: success at the last step; ``"any"``: at any step of the episode
    :raises ValueError: if the env is not multi-task or some task got too few episodes
    """
    if success not in ("final", "any"):
        raise ValueError(f"success must be 'final' or 'any', got {success!r}")
    if n_eval_episodes < 1:
        raise ValueError(f"n_eval_episodes must be >= 1, got {n_eval_episodes}")
    spec = get_task_set_spec(eval_env)
    if spec is None:
        raise ValueError("evaluate_tasks needs a multi-task eval env (sb3_m3po.envs.multitask.MultiTaskEnv)")
    num_tasks = spec.num_tasks
    returns: list[list[float]] = [[] for _ in range(num_tasks)]
    lengths: list[list[int]] = [[] for _ in range(num_tasks)]
    successes: list[list[float]] = [[] for _ in range(num_tasks)]
    ever = np.zeros(eval_env.num_envs, dtype=bool)

    def on_env_step(locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        i, info = locals_["i"], locals_["info"]
        is_success = info.get("is_success")
        ever[i] |= bool(is_success)
        if not locals_["done"]:
            return
        task = info["task"]
        if len(returns[task]) < n_eval_episodes:
            episode = info.get("episode")
            returns[task].append(float(episode["r"] if episode is not None else locals_["current_rewards"][i]))
            lengths[task].append(int(episode["l"] if episode is not None else locals_["current_lengths"][i]))
            if is_success is None:
                successes[task].append(np.nan)
            else:
                successes[task].append(float(ever[i] if success == "any" else bool(is_success)))
        ever[i] = False

    # one episode per task per round: the envs hold one task each, or cycle through all of them
    evaluate_policy(
        model,
        eval_env,
        n_eval_episodes=n_eval_episodes * max(num_tasks, eval_env.num_envs),
        deterministic=deterministic,
        callback=on_env_step,
        warn=False,
    )
    missing = [spec.names[k] for k in range(num_tasks) if len(returns[k]) < n_eval_episodes]
    if missing:
        raise ValueError(
            f"the evaluation ran no (or too few) episodes of task(s) {missing}: give an eval env with "
            "one env per task (make_multitask_vec_env) or cycling envs"
        )
    return TaskEvaluation(
        np.array(returns, dtype=np.float64), np.array(lengths, dtype=np.int64), np.array(successes, dtype=np.float64)
    )


class MultiTaskEvalCallback(EventCallback):
    """
    Evaluate every task of a multi-task model and log per-task and mean return and success.

    Every ``eval_freq`` environment steps (all envs together, ``model.num_timesteps``) it runs
    ``n_eval_episodes`` episodes of each task, logs ``eval/<task>/mean_reward``,
    ``eval/<task>/success_rate``, ``eval/<task>/mean_ep_length`` and the means over tasks
    ``eval/mean_reward`` and ``eval/success_rate`` (tasks without a success signal are left out
    of the success mean), and appends to ``<log_path>/multitask_evaluations.npz``: ``timesteps``
    ``(n_evals,)``, ``results``, ``ep_lengths`` and ``successes`` ``(n_evals, num_tasks, n_eval_episodes)``
    (success NaN for tasks without one) and ``task_names``.

    :param eval_env: multi-task VecEnv to evaluate on; None builds one env per task of the training
        env's task set (fixed tasks, :func:`~sb3_m3po.envs.multitask.make_multitask_vec_env`)
    :param eval_freq: evaluate every this many environment steps (<= 0: only at the end of training)
    :param n_eval_episodes: episodes per task
    :param deterministic: deterministic actions
    :param success: ``"final"``: success at the last step (SB3 and TD-MPC2); ``"any"``: at any step
        (Meta-World's own evaluation, which ends episodes at the first success)
    :param log_path: folder of the npz (None: not saved)
    :param best_model_save_path: folder where ``best_model.zip`` is saved when the mean success rate
        (the mean return for sets without success) improves (None: not saved)
    :param action_repeat: action repeat of the eval env built when ``eval_env`` is None (None: the training env's)
    :param seed: seed of that eval env
    :param verbose: verbosity level
    """

    def __init__(
        self,
        eval_env: VecEnv | None = None,
        eval_freq: int = 10_000,
        n_eval_episodes: int = 1,
        deterministic: bool = True,
        success: str = "final",
        log_path: str | None = None,
        best_model_save_path: str | None = None,
        action_repeat: int | None = None,
        seed: int | None = None,
        verbose: int = 1,
    ) -> None:
        super().__init__(verbose=verbose)
        if success not in ("final", "any"):
            raise ValueError(f"success must be 'final' or 'any', got {success!r}")
        if n_eval_episodes < 1:
            raise ValueError(f"n_eval_episodes must be >= 1, got {n_eval_episodes}")
        self.eval_env = eval_env
        self.eval_freq = eval_freq
        self.n_eval_episodes = n_eval_episodes
        self.deterministic = deterministic
        self.success = success
        self.log_path = None if log_path is None else os.path.join(log_path, "multitask_evaluations.npz")
        self.best_model_save_path = best_model_save_path
        self.action_repeat = action_repeat
        self.seed = seed
        self.spec: TaskSetSpec | None = None
        self.evaluations_timesteps: list[int] = []
        self.evaluations_results: list[np.ndarray] = []
        self.evaluations_length: list[np.ndarray] = []
        self.evaluations_successes: list[np.ndarray] = []
        self.last_mean_reward = -np.inf
        self.last_success_rate = np.nan
        self.best_score = -np.inf
        self._next_eval: float = eval_freq

    def _init_callback(self) -> None:
        if self.eval_env is None:
            spec = get_task_set_spec(self.training_env)
            if spec is None:
                raise ValueError(
                    "MultiTaskEvalCallback without eval_env needs a multi-task training env to copy the tasks from"
                )
            repeat = self.action_repeat
            if repeat is None:
                repeat = int(self.training_env.get_attr("action_repeat", indices=[0])[0])
            self.eval_env = make_multitask_vec_env(spec.env_ids, seed=self.seed, action_repeat=repeat)
        self.spec = get_task_set_spec(self.eval_env)
        if self.spec is None:
            raise ValueError("MultiTaskEvalCallback needs a multi-task eval env (sb3_m3po.envs.multitask.MultiTaskEnv)")
        for path in (self.log_path and os.path.dirname(self.log_path), self.best_model_save_path):
            if path:
                os.makedirs(path, exist_ok=True)
        self._next_eval = self.model.num_timesteps + self.eval_freq if self.eval_freq > 0 else np.inf

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_eval:
            while self._next_eval <= self.num_timesteps:
                self._next_eval += self.eval_freq
            return self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.eval_freq <= 0:
            self.evaluate()

    def evaluate(self) -> bool:
        """Run the evaluation now, log and save it; returns ``callback.on_step()`` of the child callback (True without one)."""
        assert self.eval_env is not None and self.spec is not None
        if self.model.get_vec_normalize_env() is not None:
            try:
                sync_envs_normalization(self.training_env, self.eval_env)
            except AttributeError as e:
                raise AssertionError(
                    "Training and eval env are not wrapped the same way; see "
                    "stable_baselines3.common.callbacks.EvalCallback and the VecNormalize wrapper"
                ) from e
        result, length, success_array = evaluate_tasks(
            self.model, self.eval_env, self.n_eval_episodes, deterministic=self.deterministic, success=self.success
        )
        self._record(result, length, success_array)
        return self._on_event() if self.callback is not None else True

    def _record(self, result: np.ndarray, length: np.ndarray, success: np.ndarray) -> None:
        assert self.spec is not None
        task_means = result.mean(1)
        for k, name in enumerate(self.spec.names):
            record_task_metric(self.logger, "eval", name, "mean_reward", float(task_means[k]))
            record_task_metric(self.logger, "eval", name, "mean_ep_length", float(length[k].mean()))
            if not np.isnan(success[k]).all():
                record_task_metric(self.logger, "eval", name, "success_rate", float(np.nanmean(success[k])))
        self.last_mean_reward = float(task_means.mean())
        self.logger.record("eval/mean_reward", self.last_mean_reward)
        with_success = ~np.isnan(success).all(1)
        if with_success.any():
            self.last_success_rate = float(np.nanmean(success[with_success], axis=1).mean())
            self.logger.record("eval/success_rate", self.last_success_rate)
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        if self.verbose >= 1:
            rate = "" if np.isnan(self.last_success_rate) else f", success rate {self.last_success_rate:.3f}"
            print(f"Eval num_timesteps={self.num_timesteps}: mean reward over tasks {self.last_mean_reward:.2f}{rate}")
        self.logger.dump(self.num_timesteps)
        self.evaluations_timesteps.append(self.num_timesteps)
        self.evaluations_results.append(result)
        self.evaluations_length.append(length)
        self.evaluations_successes.append(success)
        score = self.last_success_rate if with_success.any() else self.last_mean_reward
        # a file cut by Ctrl-C would be lost to the curve plotted on exit (or to load())
        with deferred_keyboard_interrupt():
            if self.log_path is not None:
                np.savez(
                    self.log_path,
                    timesteps=np.array(self.evaluations_timesteps),
                    results=np.array(self.evaluations_results),
                    ep_lengths=np.array(self.evaluations_length),
                    successes=np.array(self.evaluations_successes),
                    task_names=np.array(self.spec.names),
                )
            if score > self.best_score:
                self.best_score = score
                if self.best_model_save_path is not None:
                    self.model.save(os.path.join(self.best_model_save_path, "best_model"))


# suffix of the evaluations file while it is written (np.savez appends ".npz")
_PARTIAL = ".partial"


class TaskAwareEvalCallback(EvalCallback):
    """
    SB3's ``EvalCallback`` that also records the task of every evaluation episode on multi-task envs.

    ``sb3-m3po train`` (rl-zoo3) uses it in place of ``EvalCallback``. On a multi-task eval env it
    logs ``eval/<task>/mean_reward`` and ``eval/<task>/success_rate`` for the tasks of the
    evaluation episodes, and adds to ``evaluations.npz`` ``tasks`` ``(n_evals, n_eval_episodes)``
    (task index of each episode, aligned with ``results`` and ``successes``) and ``task_names``.
    rl-zoo3's single eval env of an id like ``m3po/MT10-v0`` cycles through the tasks, so
    ``--eval-episodes`` equal to the number of tasks runs each task once. On other envs it is
    exactly ``EvalCallback``. Takes ``EvalCallback``'s arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluations_tasks: list[list[int]] = []
        self.task_names: tuple[str, ...] | None = None
        self._episodes: list[tuple[int, float, float]] = []  # (task, return, success or NaN)

    def _init_callback(self) -> None:
        super()._init_callback()
        spec = get_task_set_spec(self.eval_env)
        self.task_names = None if spec is None else spec.names

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        super()._log_success_callback(locals_, globals_)
        info = locals_["info"]
        if self.task_names is None or not locals_["done"] or "task" not in info:
            return
        episode = info.get("episode")
        episode_return = float(episode["r"]) if episode is not None else float(locals_["current_rewards"][locals_["i"]])
        success = info.get("is_success")
        self._episodes.append((int(info["task"]), episode_return, np.nan if success is None else float(success)))
        if len(self._episodes) == self.n_eval_episodes:
            # the last episode of this evaluation: record now, before EvalCallback dumps the logger
            self._record_tasks()

    def _record_tasks(self) -> None:
        assert self.task_names is not None
        tasks = np.array([t for t, _, _ in self._episodes])
        returns = np.array([r for _, r, _ in self._episodes])
        successes = np.array([s for _, _, s in self._episodes])
        for k in np.unique(tasks):
            name = self.task_names[k]
            record_task_metric(self.logger, "eval", name, "mean_reward", float(returns[tasks == k].mean()))
            if not np.isnan(successes[tasks == k]).any():
                record_task_metric(self.logger, "eval", name, "success_rate", float(successes[tasks == k].mean()))

    def _on_step(self) -> bool:
        evaluating = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
        if evaluating:
            self._episodes = []
        final_path = self.log_path
        if evaluating and final_path is not None:
            # EvalCallback writes evaluations.npz in place; a Ctrl-C during that write would leave a
            # cut file (no learning curve on exit), so it writes beside it and we move the file over.
            self.log_path = final_path + _PARTIAL
        try:
            continue_training = super()._on_step()
        finally:
            self.log_path = final_path
        if not evaluating:
            return continue_training
        recorded = self.task_names is not None and len(self._episodes) == self.n_eval_episodes
        if recorded:
            self.evaluations_tasks.append([t for t, _, _ in self._episodes])
        if final_path is None:
            return continue_training
        if recorded:
            assert self.task_names is not None
            extra = {"successes": self.evaluations_successes} if self.evaluations_successes else {}
            np.savez(
                final_path + _PARTIAL,
                timesteps=self.evaluations_timesteps,
                results=self.evaluations_results,
                ep_lengths=self.evaluations_length,
                tasks=np.array(self.evaluations_tasks),
                task_names=np.array(self.task_names),
                **extra,  # type: ignore[arg-type]
            )
        os.replace(final_path + _PARTIAL + ".npz", final_path + ".npz")
        return continue_training
