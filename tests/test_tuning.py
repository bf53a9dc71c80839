"""Optuna tuning through rl-zoo3 (journal file and a real PostgreSQL server), bad inputs, Ctrl-C."""

import glob
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from postgres import LocalPostgres, find_postgres_bin

# every test here runs rl-zoo3 (and PostgreSQL) in subprocesses
pytestmark = pytest.mark.slow

# Seed 11 makes rl-zoo3's RandomSampler draw small planners and rollouts first (see the zoo sampler),
# so a trial takes seconds; the world model stays idle on these budgets (below its learning_starts).
TUNE_ARGS = [
    "--algo", "m3po", "--env", "Pendulum-v1", "-optimize", "--sampler", "random", "--pruner", "none",
    "--seed", "11", "-n", "128", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots",
    "-params", "n_envs:1",
    "policy_kwargs:dict(architecture=dict(latent_dim=16,enc_dim=32,mlp_dim=32,prior_dim=32,num_bins=21))",
]  # fmt: skip


def child_env() -> dict:
    # PYTHONFAULTHANDLER: a worker killed with SIGABRT prints every thread's stack (see the Ctrl-C test)
    return {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def run_train(cwd, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sb3_m3po.zoo.train", *args]
    return subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)


def _default_sigint() -> None:
    # Under a pytest started in the background by a shell (`pytest &`), children inherit an ignored SIGINT,
    # and Python then installs no KeyboardInterrupt handler: the Ctrl-C test would wait for nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_train(cwd, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "sb3_m3po.zoo.train", *args]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def test_optimize_on_a_journal_storage_writes_its_report(tmp_path):
    storage = str(tmp_path / "study.log")
    logs = str(tmp_path / "logs")
    out = run_train(tmp_path, *TUNE_ARGS, "--n-trials", "2", "--storage", storage, "--study-name", "journal", "-f", logs)
    assert out.returncode == 0, out.stderr[-3000:]
    reports = glob.glob(str(tmp_path / "logs" / "m3po" / "report_Pendulum-v1_2-trials-128-random-none_*.csv"))
    assert len(reports) == 1, os.listdir(tmp_path / "logs" / "m3po")
    table = pd.read_csv(reports[0])
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"]
    assert {"params_horizon", "params_num_samples_pow", "params_bonus_coef"} <= set(table.columns)
    study = optuna.load_study(
        study_name="journal",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
    )
    assert [t.value for t in study.trials] == list(table["value"])


@pytest.mark.skipif(find_postgres_bin() is None, reason="PostgreSQL server binaries (Debian 'postgresql') not installed")
def test_two_workers_share_a_postgres_study_and_survive_sigkill(tmp_path):
    with LocalPostgres() as pg:
        # the study is created up front so that the two workers do not race to create it
        # one storage for all the polling below: a storage per poll would leave a connection pool
        # each, and a slow machine polls often enough to exhaust the server's connections
        study = optuna.create_study(study_name="shared", storage=pg.url, direction="maximize")
        study_args = ["--storage", pg.url, "--study-name", "shared"]
        # the victim's trials are long (100k steps), so it is certainly mid-trial when killed
        victim = start_train(tmp_path, *TUNE_ARGS, *study_args, "--n-trials", "3", "-n", "100000", "-f", str(tmp_path / "v"))
        survivor = start_train(tmp_path, *TUNE_ARGS, *study_args, "--n-trials", "3", "-f", str(tmp_path / "s"))
        deadline = time.time() + 300
        completed_before: dict[int, float] = {}
        while time.time() < deadline:
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            done = {t.number: t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
            if done and len(running) == 2:  # the survivor finished a trial and both are mid-trial
                victim.send_signal(signal.SIGKILL)
                completed_before = done
                break
            assert survivor.poll() is None and victim.poll() is None, "a worker ended before the kill"
            time.sleep(0.1)
        assert completed_before, "never saw both workers mid-trial after a completed trial"
        assert victim.wait(timeout=60) == -signal.SIGKILL
        _, err = survivor.communicate(timeout=600)
        assert survivor.returncode == 0, err[-3000:]

        trials = optuna.load_study(study_name="shared", storage=pg.url).trials
        complete = {t.number: t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
        for number, value in completed_before.items():
            assert complete[number] == value, "a trial completed before the kill was lost or changed"
        assert len(complete) >= 3, "the surviving worker finished all of its trials"
        stuck = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        assert len(stuck) == 1, "exactly the killed worker's trial is left RUNNING"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algo", "m3po", "--env", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
        (["--algo", "nosuchalgo", "--env", "Pendulum-v1"], "unknown algorithm 'nosuchalgo'"),
        (["--env", "Pendulum-v1", "-conf", "{tmp}/bad.yml"], "hyperparameter file '{tmp}/bad.yml': malformed YAML at line 3"),
        (["--env", "Pendulum-v1", "-conf", "{tmp}/list.yml"], "malformed hyperparameter file '{tmp}/list.yml'"),
        (["--env", "Pendulum-v1", "-conf", "{tmp}/missing.yml"], "'{tmp}/missing.yml' does not exist"),
        (
            ["--algo", "m3po", "--env", "Pendulum-v1", "-optimize", "--study-name", "s",
             "--storage", "postgresql://tuner:secret@127.0.0.1:1/optuna"],
            "cannot open tuning storage 'postgresql://tuner:***@127.0.0.1:1/optuna'",
        ),
    ],
)  # fmt: skip
def test_bad_input_ends_with_one_line_naming_it(tmp_path, args, message):
    (tmp_path / "bad.yml").write_text("Pendulum-v1:\n  n_timesteps: [1\n  policy: : x\n")
    (tmp_path / "list.yml").write_text("- Pendulum-v1\n- n_timesteps\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = run_train(tmp_path, *args, "-f", str(tmp_path), timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("sb3-m3po train: error:")]
    assert len(lines) == 1 and message.replace("{tmp}", str(tmp_path)) in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "secret" not in out.stderr, "the storage password must not be printed"


def test_ctrl_c_saves_the_model_and_its_curve(tmp_path):
    log = tmp_path / "logs"
    small = [
        "n_envs:1",
        "n_steps:64",
        "planner_kwargs:dict(num_samples=16, num_elites=4, num_prior_trajectories=2)",
        "world_model_kwargs:dict(learning_starts=100000)",
    ]
    train_args = ["--algo", "m3po", "--env", "Pendulum-v1", "-n", "100000", "--eval-freq", "200", "--eval-episodes", "1"]
    worker = start_train(tmp_path, *train_args, "-f", str(log), "-params", *small)
    run_dir = log / "m3po" / "Pendulum-v1_1"
    deadline = time.time() + 300
    # one finished episode in the monitor file and one evaluation: learn() is running
    while not ((run_dir / "evaluations.npz").exists() and len((run_dir / "0.monitor.csv").read_text().splitlines()) > 2):
        assert worker.poll() is None, worker.stderr.read()[-3000:] if worker.stderr else ""
        assert time.time() < deadline, "training never started"
        time.sleep(0.2)
    worker.send_signal(signal.SIGINT)
    try:
        # generous: saving and plotting share a loaded CI machine with the other test workers
        _, err = worker.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGABRT)
        _, err = worker.communicate(timeout=60)
        ignored = [line for line in err.splitlines() if "ignored" in line.lower()]
        pytest.fail(f"training did not stop within 300 s of Ctrl-C; {ignored=}; where it was:\n{err[-6000:]}")
    assert worker.returncode == 0, err[-3000:]
    from sb3_m3po import M3PO

    model = M3PO.load(run_dir / "Pendulum-v1.zip")
    assert 0 < model.num_timesteps < 100000
    assert (run_dir / "learning_curve.png").exists(), err[-3000:]
    assert (run_dir / "learning_curve.png").stat().st_size > 0
