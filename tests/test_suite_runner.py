"""Benchmark suite runner (``benchmarks/suite.py``) end to end on a tiny suite: real envs, real rl-zoo3 runs."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "benchmarks", "suite.py")


sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from runner import report, runs, spec  # noqa: E402  (the runner's package lives in benchmarks/)


def tiny_suite(tiny: dict) -> dict:
    """Pendulum at 300 steps, M3PO with the test suite's tiny hyperparameters and a small-rollout PPO."""
    return {
        "description": "test suite",
        "seeds": [0],
        "tasks": {
            "pendulum": {
                "env": "Pendulum-v1",
                "sim_steps": 300,
                "eval_every": 100,
                "eval_episodes": 1,
                "score": "return",
                "score_range": [-1600, 0],
            }
        },
        "algorithms": {
            "m3po_tiny": {"algo": "m3po", "params": {**tiny, "n_envs": 1}},
            "ppo": {"algo": "ppo", "params": {"n_steps": 256, "batch_size": 64, "n_epochs": 2}},  # evaluates past 300
        },
    }


def write_suite(path, content: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(content, f)
    return str(path)


def run_runner(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    return subprocess.run([sys.executable, RUNNER, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_suite_end_to_end_and_resume(tmp_path, tiny):
    suite_file = write_suite(tmp_path / "tiny.yml", tiny_suite(tiny))
    results, runs = tmp_path / "results", tmp_path / "runs"
    folders = ["--results-dir", str(results), "--runs-dir", str(runs)]
    leftover = runs / "pendulum" / "ppo" / "seed0" / "from_an_interrupted_attempt.txt"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("")

    out = run_runner(suite_file, "--workers", "2", "--status-every", "0", *folders)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 to run" in out.stdout
    status = [line for line in out.stdout.splitlines() if line.startswith("running pendulum/ppo/seed0: evaluated at ")]
    assert status and all(line.endswith("/300 sim steps") for line in status), "progress lines, one line each"
    assert not leftover.exists(), "a run without a record restarts from a clean folder"
    assert not list(runs.glob("**/checkpoints")), "a finished run's resume checkpoints are deleted"
    for algo in ["m3po_tiny", "ppo"]:
        with open(results / "raw" / "pendulum" / f"{algo}_seed0.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["sim_steps"]) for r in rows] == [100, 200, 300]
        with open(results / "raw" / "pendulum" / f"{algo}_seed0.json") as f:
            record = json.load(f)
        assert record["final_sim_steps"] == 300 and record["n_evaluations"] == 3
        assert record["final_score"] == pytest.approx(float(rows[-1]["score"]), rel=1e-5)
        assert -2000 < record["final_score"] <= 0
        assert record["wall_seconds"] > 0 and record["sim_steps_per_second"] > 0
        assert 50 < record["peak_rss_mib"] < 8000, "the training process's peak memory is measured"
        assert record["per_task_final"] is None, "a single-task env has no per-task scores"
        assert record["commit"] and "cores" in record["machine"] and record["device"]
        assert str(tmp_path) not in json.dumps(record), "no machine-specific path in the record"
        assert record["command"].startswith("python -m sb3_m3po.zoo.train --algo ")
        assert os.path.isfile(runs / "pendulum" / algo / "seed0" / "train.log")
    with open(results / "raw" / "pendulum" / "m3po_tiny_seed0.json") as f:
        assert "'num_samples': 16" in json.load(f)["command"], "the algorithm's params reach rl-zoo3"
    with open(results / "runs.csv") as f:
        assert sorted(r["algorithm"] for r in csv.DictReader(f)) == ["m3po_tiny", "ppo"]
    summary = (results / "summary.md").read_text()
    for needle in [
        "## Final score",
        "## Aggregate (rliable)",
        "| m3po_tiny   | 1 ",
        "sim steps/s",
        "## Wall-clock",
    ]:
        assert needle in summary, needle
    for png in ["learning_curves.png", "aggregate.png"]:
        assert (results / png).stat().st_size > 10_000, png
    finals = {}
    for algo in ["m3po_tiny", "ppo"]:
        with open(results / "raw" / "pendulum" / f"{algo}_seed0.json") as f:
            finals[algo] = json.load(f)["final_score"]
    versus = summary.split("## `m3po_tiny` against the others")[1].split("## Gap")[0]
    diff = finals["m3po_tiny"] - finals["ppo"]
    assert f"| {'+' if diff > 0 else ''}{diff:.0f} [{diff:.0f}, {diff:.0f}] (1 vs 1)" in versus, versus
    assert f"| {int(diff > 0)} of 1 " in versus.split("ahead on")[1], versus

    # A second invocation finds both runs finished and trains nothing.
    mtime = os.path.getmtime(results / "raw" / "pendulum" / "ppo_seed0.json")
    again = run_runner(suite_file, *folders)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 finished, 0 to run" in again.stdout
    assert os.path.getmtime(results / "raw" / "pendulum" / "ppo_seed0.json") == mtime

    # A changed suite never overwrites a finished run: the runner stops and names the record.
    changed = tiny_suite(tiny)
    changed["tasks"]["pendulum"]["sim_steps"] = 400
    write_suite(tmp_path / "tiny.yml", changed)
    refused = run_runner(suite_file, "--only-algos", "ppo", *folders)
    assert refused.returncode == 2
    assert "pendulum/ppo/seed0 has a finished record" in refused.stderr and "another configuration" in refused.stderr
    assert os.path.getmtime(results / "raw" / "pendulum" / "ppo_seed0.json") == mtime


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s["tasks"]["pendulum"].update(eval_freq=100),
            "task 'pendulum', unknown key 'eval_freq' (did you mean 'eval_every'?)",
        ),
        (lambda s: s["tasks"]["pendulum"].pop("sim_steps"), "task 'pendulum', missing required field 'sim_steps'"),
        (lambda s: s["algorithms"]["ppo"].pop("algo"), "algorithm 'ppo', missing required field 'algo'"),
        (lambda s: s.pop("seeds"), "missing required field 'seeds'"),
        (lambda s: s.update(defaults={"eval_freq": 5}), "defaults, unknown key 'eval_freq' (did you mean 'eval_every'?)"),
        (lambda s: s.update(seeds=[0, 0]), "'seeds' must be distinct non-negative integers"),
        (lambda s: s.update(seed=[0]), "unknown key 'seed' (did you mean 'seeds'?)"),
        (
            lambda s: s["tasks"]["pendulum"].update(score="reward"),
            "task 'pendulum', 'score' Input should be 'return' or 'success'",
        ),
        (lambda s: s["tasks"]["pendulum"].update(sim_steps=250), "must be a multiple of 'eval_every'"),
        (
            lambda s: s["algorithms"]["ppo"].update(extra_args=["--seed", "3"]),
            "'extra_args' sets --seed, which the runner sets itself",
        ),
        (
            lambda s: s["algorithms"]["ppo"].update(compare_to="m3po"),
            "algorithm 'ppo': compare_to names no algorithm of the suite (did you mean 'm3po_tiny'?)",
        ),
    ],
)
def test_bad_suite_file_names_the_problem(tmp_path, tiny, change, message):
    content = tiny_suite(tiny)
    change(content)
    path = write_suite(tmp_path / "bad.yml", content)
    with pytest.raises(spec.SuiteError) as error:
        spec.load_suite(path)
    assert message in str(error.value)
    assert "bad.yml" in str(error.value)


@pytest.mark.slow
def test_bad_suite_on_the_command_line_is_one_line(tmp_path, tiny):
    (tmp_path / "broken.yml").write_text("seeds: [0]\ntasks: {pendulum: {env: Pendulum-v1\n")
    out = run_runner(str(tmp_path / "broken.yml"), "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2
    assert out.stderr.startswith("benchmarks/suite.py: error: suite file 'broken.yml': malformed YAML at line")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists(), "nothing starts from a bad suite"
    out = run_runner("no-such-suite")
    assert out.returncode == 2 and "unknown suite 'no-such-suite'" in out.stderr and "smoke" in out.stderr


def test_action_repeat_must_match_the_hyperparameter_files(tmp_path, tiny):
    content = tiny_suite(tiny)
    content["tasks"]["pendulum"]["env"] = "dm_control/cartpole-swingup-v0"  # hyperparams/*.yml repeat 2
    suite = spec.load_suite(write_suite(tmp_path / "repeat.yml", content))
    with pytest.raises(spec.SuiteError, match="with hyperparams/m3po.yml repeats actions 2 time"):
        spec.check_suite_environment(suite)
    content["tasks"]["pendulum"].update(action_repeat=2, sim_steps=400, eval_every=200)
    spec.check_suite_environment(spec.load_suite(write_suite(tmp_path / "repeat.yml", content)))


@pytest.mark.parametrize("name", sorted(f[: -len(".yml")] for f in os.listdir(spec.SUITES_DIR) if f.endswith(".yml")))
def test_shipped_suites_are_valid(name):
    # a typo in a shipped suite would otherwise surface hours into a benchmark, when its run starts
    suite = spec.load_suite(name)
    spec.check_suite_environment(suite)
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_m3po import M3PO
    from sb3_m3po.common.hyperparams import shipped_params

    for algorithm in suite.algorithms.values():
        if algorithm.algo == "m3po" and algorithm.params:
            # the constructor validates every hyperparameter; the env only has to be cheap, but it has the
            # n_envs each task runs with (PPO's own checks depend on n_steps * n_envs)
            params = {key: value for key, value in algorithm.params.items() if key != "n_envs"}
            for task in suite.tasks.values():
                n_envs = int(algorithm.params.get("n_envs", (shipped_params("m3po", task.env) or {}).get("n_envs", 1)))
                M3PO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=n_envs), device="cpu", **params)


@pytest.mark.slow
def test_multitask_suite_reports_every_task(tmp_path, tiny):
    # the registered MT10 id with a 2-task toy set: the same rl-zoo3 path as the MT10 suite, in seconds
    content = {
        "seeds": [0],
        "tasks": {
            "toy": {
                "env": "m3po/MT10-v0",
                "env_kwargs": {"tasks": ["Pendulum-v1", "Reacher-v5"]},
                "action_repeat": 2,
                "sim_steps": 400,
                "eval_every": 200,
                "eval_episodes": 2,  # the eval env cycles: one episode per task
                "score": "return",
                "score_range": [-1600, 0],
            }
        },
        "algorithms": {"m3po_tiny": {"algo": "m3po", "params": {**tiny, "n_envs": 2}}},
    }
    results = tmp_path / "results"
    out = run_runner(write_suite(tmp_path / "mt.yml", content), "--results-dir", str(results), "--runs-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(results / "raw" / "toy" / "m3po_tiny_seed0.json") as f:
        record = json.load(f)
    per_task = record["per_task_final"]
    assert sorted(per_task) == ["Pendulum-v1", "Reacher-v5"]
    assert sum(per_task.values()) / 2 == pytest.approx(record["final_score"], rel=1e-5), "one episode per task"
    summary = (results / "summary.md").read_text()
    assert "## Per task: toy" in summary and "| Reacher-v5 " in summary and "| mean over tasks " in summary


def test_evaluations_must_land_on_the_suite_steps_with_several_envs(tmp_path, tiny):
    content = tiny_suite(tiny)
    content["algorithms"]["m3po_tiny"]["params"]["n_envs"] = 3  # rl-zoo3 would evaluate at 99, 198, 297
    suite = spec.load_suite(write_suite(tmp_path / "envs.yml", content))
    with pytest.raises(spec.SuiteError, match="= 100 decisions is not a multiple of n_envs 3"):
        spec.check_suite_environment(suite)


@pytest.mark.slow
def test_failed_run_is_reported_and_leaves_no_record(tmp_path, tiny):
    content = tiny_suite(tiny)
    content["algorithms"] = {"m3po_bad": {"algo": "m3po", "params": {**tiny, "n_envs": 1, "bonus_kwargs": {"clip": -1.0}}}}
    results = tmp_path / "results"
    out = run_runner(
        write_suite(tmp_path / "fails.yml", content), "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs")
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "pendulum/m3po_bad/seed0: exit code 1: ValueError" in out.stderr and "bonus" in out.stderr
    assert not (results / "raw").exists()
    assert "Finished runs: 0 of 1" in (results / "summary.md").read_text()


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, tiny):
    content = tiny_suite(tiny)
    content["tasks"]["pendulum"]["sim_steps"] = 1000  # long enough to be stopped after its first checkpoint
    content["algorithms"] = {"m3po_tiny": content["algorithms"]["m3po_tiny"]}
    suite_file = write_suite(tmp_path / "cut.yml", content)
    results, runs = tmp_path / "results", tmp_path / "runs"
    folders = ["--results-dir", str(results), "--runs-dir", str(runs)]
    run_folder = runs / "pendulum" / "m3po_tiny" / "seed0"
    env = {**os.environ, "MUJOCO_GL": "egl"}
    command = [sys.executable, RUNNER, suite_file, *folders]
    runner = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(run_folder.glob("seg1/**/checkpoints/step_*/complete")):
        assert runner.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)  # what a machine going away does to a background runner
    stopped = runner.communicate(timeout=60)[0]
    assert "continue from their last checkpoint" in stopped
    assert not (results / "raw").exists()
    with open(run_folder / "segments.json") as f:
        (first,) = json.load(f)["segments"]
    assert first["resumed_from"] == 0 and first["wall_seconds"] > 0

    out = run_runner(suite_file, *folders)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("resuming pendulum/m3po_tiny/seed0")]
    resumed_at = int(line.split(" at ")[1].split()[0])
    assert resumed_at >= 100 and resumed_at % 100 == 0
    with open(results / "raw" / "pendulum" / "m3po_tiny_seed0.json") as f:
        record = json.load(f)
    assert record["resumed_at"] == [resumed_at] and record["n_evaluations"] == 10
    assert record["wall_seconds"] > first["wall_seconds"], "the cut-off segment's time is counted"
    assert "seg1" in record["command"] and " -i " not in record["command"], "the record shows the from-scratch command"
    with open(results / "raw" / "pendulum" / "m3po_tiny_seed0.csv") as f:
        assert [int(r["sim_steps"]) for r in csv.DictReader(f)] == list(range(100, 1001, 100))
    assert not list(runs.glob("**/checkpoints"))


def test_segments_join_at_the_step_each_resumed_from():
    # segment 2 was cut off before its first evaluation; 3 resumed from the same checkpoint as 2; segment 1
    # evaluated at 300 before it was cut off, after its last complete checkpoint (200)
    steps = [np.array([100, 200, 300]), None, np.array([300, 400]), np.array([500])]
    masks = runs.segment_masks(steps, [0, 200, 200, 400])
    assert masks[1] is None
    kept = np.concatenate([s[m] for s, m in zip(steps, masks) if m is not None])
    assert kept.tolist() == [100, 200, 300, 400, 500]
    with pytest.raises(ValueError, match="2 segments' evaluations for 3 segments"):
        runs.segment_masks(steps[:2], [0, 1, 2])


def test_bootstrap_difference_of_means():
    a, b = [10.0, 12.0, 14.0], [1.0, 2.0, 3.0]
    diff, low, high = report.diff_ci(a, b)
    assert diff == pytest.approx(10.0)
    assert 7.0 <= low < diff < high <= 13.0, (low, high)  # bounded by the extreme resamples (10 - 3, 14 - 1)
    same = report.diff_ci([5.0, 5.0], [5.0])
    assert same == (0.0, 0.0, 0.0)


def test_a_single_sac_run_reaches_its_own_final_score():
    # records keep the final score in full, the curve CSVs with 6 significant digits: SAC's run must still count
    # as reaching SAC's mean at its last evaluation
    final = 902.123456789
    table = pd.DataFrame(
        [{"task": "t", "algorithm": "sac", "seed": 0, "wall_seconds": 600.0, "sim_steps": 100, "sim_steps_per_second": 0.2}]
    )
    curve = pd.DataFrame(
        {"task": "t", "algorithm": "sac", "seed": 0, "sim_steps": [50, 100], "score": [10.0, float(f"{final:.6g}")]}
    )
    rows = report._wall_clock(table, curve, lambda task, algorithm: pd.Series([final]))
    assert rows[0]["minutes to SAC's final score (runs reaching it)"] == "10 (1 of 1)"


def test_an_ablation_is_compared_with_the_entry_it_names(tmp_path, tiny):
    content = tiny_suite(tiny)
    content["algorithms"]["x_old"] = {"algo": "m3po", "params": {"gamma": 0.9}}  # the file's keys are sorted
    content["algorithms"]["y_old_no_bonus"] = {"algo": "m3po", "params": {"gamma": 0.9}, "compare_to": "x_old"}
    suite = spec.load_suite(write_suite(tmp_path / "pairs.yml", content))
    scores = {"m3po_tiny": [10.0, 12.0], "ppo": [1.0, 2.0], "x_old": [5.0, 7.0], "y_old_no_bonus": [8.0, 9.0]}
    rows = report._versus(suite, lambda task, algorithm: pd.Series(scores[algorithm]))
    assert list(rows[0]) == ["task", "m3po_tiny - ppo", "m3po_tiny - x_old", "x_old - y_old_no_bonus"]
    assert rows[0]["m3po_tiny - x_old"].startswith("+5 ") and rows[0]["x_old - y_old_no_bonus"].startswith("-2 ")
    assert rows[1] == {
        "task": "the left entry ahead on",
        "m3po_tiny - ppo": "1 of 1",
        "m3po_tiny - x_old": "1 of 1",
        "x_old - y_old_no_bonus": "0 of 1",
    }


def test_aggregate_confidence_intervals_are_reproducible():
    # rliable's bootstrap draws from numpy's global generator; the committed summaries must regenerate exactly
    suite = spec.load_suite("dmc")
    layout = runs.Layout(os.path.join(REPO, "benchmarks", "results", "dmc"), os.path.join(REPO, "benchmarks", "runs"))
    table, _, _ = report.load_results(suite, layout)
    _, first, _ = report.aggregate(suite, table)
    np.random.seed(12345)
    np.random.random(1000)
    _, second, _ = report.aggregate(suite, table)
    assert len(first) and first.equals(second)


def test_committed_summaries_regenerate_from_their_records(tmp_path):
    # every committed suite summary is what the runner writes from the committed raw records
    for name in sorted(f[: -len(".yml")] for f in os.listdir(spec.SUITES_DIR) if f.endswith(".yml")):
        committed = os.path.join(REPO, "benchmarks", "results", name)
        if not os.path.isdir(os.path.join(committed, "raw")):
            continue
        shutil.copytree(os.path.join(committed, "raw"), tmp_path / name / "raw")
        suite = spec.load_suite(name)
        text = report.summarize(suite, runs.Layout(str(tmp_path / name), str(tmp_path / "runs")))
        with open(os.path.join(committed, "summary.md")) as f:
            assert text == f.read(), (
                f"benchmarks/results/{name}/summary.md is stale: python benchmarks/suite.py {name} --summarize"
            )


def test_records_of_an_algorithm_whose_name_extends_another_belong_to_it_alone(tmp_path):
    # m3po's records are m3po_seed<S>.json; m3po_seed5k_seed0.json is m3po_seed5k's, not a stray m3po record
    committed = os.path.join(REPO, "benchmarks", "results", "mujoco_diagnostics", "raw", "halfcheetah")
    folder = tmp_path / "raw" / "halfcheetah"
    folder.mkdir(parents=True)
    # committed records renamed: m3po_gamma099's as m3po, m3po_no_seed_phase's as m3po_seed5k
    for seed in (0, 1):
        for source, name in (("m3po_gamma099", "m3po"), ("m3po_no_seed_phase", "m3po_seed5k")):
            with open(os.path.join(committed, f"{source}_seed{seed}.json")) as f:
                record = {**json.load(f), "algorithm": name}
            (folder / f"{name}_seed{seed}.json").write_text(json.dumps(record))
            shutil.copy(os.path.join(committed, f"{source}_seed{seed}.csv"), folder / f"{name}_seed{seed}.csv")
    suite_file, no_bc = tmp_path / "extends.yml", {"prior_kwargs": {"bc_coef": 0.0}}  # as the records' specs
    suite_file.write_text(
        yaml.safe_dump(
            {
                "seeds": [0, 1],
                "defaults": {"sim_steps": 30000, "eval_every": 10000, "eval_episodes": 5, "score": "return"},
                "tasks": {"halfcheetah": {"env": "HalfCheetah-v5", "score_range": [0, 9535]}},
                "algorithms": {
                    "m3po": {"algo": "m3po", "params": {"gamma": 0.99, **no_bc}},
                    "m3po_seed5k": {
                        "algo": "m3po",
                        "params": {"world_model_kwargs": {"seed_steps": 0}, "gamma": 0.99, **no_bc},
                    },
                },
            }
        )
    )
    table, _, notes = report.load_results(spec.load_suite(str(suite_file)), runs.Layout(str(tmp_path), str(tmp_path)))
    assert notes == []
    assert sorted(zip(table.algorithm, table.seed)) == [("m3po", 0), ("m3po", 1), ("m3po_seed5k", 0), ("m3po_seed5k", 1)]


def test_summary_of_a_suite_whose_main_algorithms_have_no_run_yet(tmp_path):
    # only a diagnostic has finished: the summary says so instead of failing on an empty main figure
    committed = os.path.join(REPO, "benchmarks", "results", "mujoco_diagnostics", "raw", "hopper")
    os.makedirs(tmp_path / "raw" / "hopper")
    for suffix in (".json", ".csv"):
        shutil.copy(os.path.join(committed, f"tdmpc2_core_seed0{suffix}"), tmp_path / "raw" / "hopper")
    text = report.summarize(spec.load_suite("mujoco_diagnostics"), runs.Layout(str(tmp_path), str(tmp_path / "runs")))
    assert "No finished runs of `m3po`, `sac` yet." in text
    assert not (tmp_path / "learning_curves.png").exists()
    assert (tmp_path / "ablations.png").exists() and "![ablations](ablations.png)" in text
