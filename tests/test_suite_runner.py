"""Benchmark suite runner (``benchmarks/suite.py``) end to end on a tiny suite: real envs, real rl-zoo3 runs."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "benchmarks", "suite.py")


def load_script(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


suite_runner = load_script(RUNNER, "benchmark_suite")
bonus_scale = load_script(os.path.join(REPO, "benchmarks", "bonus_scale.py"), "benchmark_bonus_scale")
final_eval = load_script(os.path.join(REPO, "benchmarks", "final_eval.py"), "benchmark_final_eval")


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
    status = [line for line in out.stdout.splitlines() if line.startswith("running pendulum/ppo/seed0: ")]
    assert status and all(line.endswith("left)") or line.endswith("/s)") for line in status), (
        "a runner whose output is not a terminal prints plain progress lines, one line each"
    )
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
    for needle in ["## Final score", "## Aggregate (rliable)", "| m3po_tiny | 1 |", "## Runs", "sim steps/s"]:
        assert needle in summary, needle
    for png in ["learning_curves.png", "aggregate.png"]:
        assert (results / png).stat().st_size > 10_000, png
    finals = {}
    for algo in ["m3po_tiny", "ppo"]:
        with open(results / "raw" / "pendulum" / f"{algo}_seed0.json") as f:
            finals[algo] = json.load(f)["final_score"]
    versus = summary.split("## `m3po_tiny` against the others")[1].split("## Gap")[0]
    diff = finals["m3po_tiny"] - finals["ppo"]
    assert f"| pendulum | {'+' if diff > 0 else ''}{diff:.0f} [" in versus and "(1 vs 1)" in versus, versus
    assert f"| `m3po_tiny` ahead on | {int(diff > 0)} of 1 |" in versus, versus

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
            "task 'pendulum': unknown key 'eval_freq' (did you mean 'eval_every'?)",
        ),
        (lambda s: s["tasks"]["pendulum"].pop("sim_steps"), "task 'pendulum': missing required field(s) 'sim_steps'"),
        (lambda s: s["algorithms"]["ppo"].pop("algo"), "algorithm 'ppo': missing required field(s) 'algo'"),
        (lambda s: s.pop("seeds"), "missing required field(s) 'seeds'"),
        (lambda s: s.update(seed=[0]), "unknown key 'seed' (did you mean 'seeds'?)"),
        (lambda s: s["tasks"]["pendulum"].update(score="reward"), "'score' must be one of return, success"),
        (lambda s: s["tasks"]["pendulum"].update(sim_steps=250), "must be a multiple of 'eval_every'"),
        (lambda s: s["algorithms"]["ppo"].update(extra_args=["--seed", "3"]), "sets --seed, which the runner sets itself"),
    ],
)
def test_bad_suite_file_names_the_problem(tmp_path, tiny, change, message):
    content = tiny_suite(tiny)
    change(content)
    path = write_suite(tmp_path / "bad.yml", content)
    with pytest.raises(suite_runner.SuiteError) as error:
        suite_runner.load_suite(path)
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
    suite = suite_runner.load_suite(write_suite(tmp_path / "repeat.yml", content))
    with pytest.raises(suite_runner.SuiteError, match="with hyperparams/m3po.yml repeats actions 2 time"):
        suite_runner.check_suite_environment(suite)
    content["tasks"]["pendulum"].update(action_repeat=2, sim_steps=400, eval_every=200)
    suite_runner.check_suite_environment(suite_runner.load_suite(write_suite(tmp_path / "repeat.yml", content)))


@pytest.mark.parametrize("name", sorted(f[: -len(".yml")] for f in os.listdir(suite_runner.SUITES_DIR) if f.endswith(".yml")))
def test_shipped_suites_are_valid(name):
    # a typo in a shipped suite would otherwise surface hours into a benchmark, when its run starts
    suite = suite_runner.load_suite(name)
    suite_runner.check_suite_environment(suite)
    from sb3_m3po import M3PO

    for algorithm in suite.algorithms.values():
        if algorithm.algo == "m3po" and algorithm.params:
            # the constructor validates every hyperparameter; the env only has to be cheap
            M3PO("MlpPolicy", "Pendulum-v1", device="cpu", **algorithm.params)


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
    assert "## Per task: toy" in summary and "| Reacher-v5 |" in summary and "| mean over tasks |" in summary
    # the per-task bonus statistics reach tensorboard and the bonus-scale report reads them back
    assert bonus_scale.main(["toy", "--runs-dir", str(tmp_path), "--results-dir", str(results)]) == 0
    with open(results / "bonus_scale.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["Pendulum-v1", "Reacher-v5"] and all(int(r["rollouts"]) >= 1 for r in rows)
    # the final models replay every task with more episodes; the run folder outside the repo is found by --runs-dir
    suite_file = str(tmp_path / "mt.yml")
    args = [suite_file, "--results-dir", str(results), "--episodes", "2"]
    assert final_eval.main(args) == 1, "without --runs-dir the run folder is not found and nothing is written"
    assert final_eval.main([*args, "--runs-dir", str(tmp_path)]) == 0
    with open(results / "final_eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["algorithm"], r["task"], r["episodes"]) for r in rows] == [
        ("m3po_tiny", "Pendulum-v1", "2"),
        ("m3po_tiny", "Reacher-v5", "2"),
    ]
    assert all(r["success_rate"] == "" and float(r["mean_return"]) <= 0 for r in rows)
    assert "| mean over tasks |" in (results / "final_eval.md").read_text()


def test_evaluations_must_land_on_the_suite_steps_with_several_envs(tmp_path, tiny):
    content = tiny_suite(tiny)
    content["algorithms"]["m3po_tiny"]["params"]["n_envs"] = 3  # rl-zoo3 would evaluate at 99, 198, 297
    suite = suite_runner.load_suite(write_suite(tmp_path / "envs.yml", content))
    with pytest.raises(suite_runner.SuiteError, match="= 100 decisions is not a multiple of n_envs 3"):
        suite_runner.check_suite_environment(suite)


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
    record_path = str(results / "raw" / "pendulum" / "m3po_tiny_seed0.json")
    found = final_eval.find_run_folder(suite_runner.load_record(record_path), str(runs))
    assert found == str(run_folder / "seg2" / "m3po" / "Pendulum-v1_1"), "the final model is the last segment's"
    assert os.path.isfile(final_eval.final_model_path(found, "Pendulum-v1"))


def test_segments_join_at_the_step_each_resumed_from():
    from resume import join_segments

    # segment 2 was cut off before its first evaluation; 3 resumed from the same checkpoint as 2; segment 1
    # evaluated at 300 before it was cut off, after its last complete checkpoint (200)
    steps = [np.array([100, 200, 300]), None, np.array([300, 400]), np.array([500])]
    masks = join_segments(steps, [0, 200, 200, 400])
    assert masks[1] is None
    kept = np.concatenate([s[m] for s, m in zip(steps, masks) if m is not None])
    assert kept.tolist() == [100, 200, 300, 400, 500]
    with pytest.raises(ValueError, match="2 segments' evaluations for 3 segments"):
        join_segments(steps[:2], [0, 1, 2])


def test_bootstrap_difference_of_means():
    a, b = [10.0, 12.0, 14.0], [1.0, 2.0, 3.0]
    diff, low, high = suite_runner.bootstrap_diff_ci(a, b)
    assert diff == pytest.approx(10.0)
    assert 7.0 <= low < diff < high <= 13.0, (low, high)  # bounded by the extreme resamples (10 - 3, 14 - 1)
    same = suite_runner.bootstrap_diff_ci([5.0, 5.0], [5.0])
    assert same == (0.0, 0.0, 0.0)


def test_expected_clipped_bonus_matches_sampling():
    rng = np.random.default_rng(0)
    mu, sigma = np.array([-1.0, 0.0, 0.5, 4.0]), np.array([0.5, 1.0, 2.0, 1.0])
    samples = np.clip(rng.normal(mu, sigma, size=(200_000, 4)), 0.0, 3.0).mean(0)
    np.testing.assert_allclose(bonus_scale.expected_clipped(mu, sigma, 3.0), samples, atol=0.01)


def test_batch_zscore_view_of_task_bonuses():
    # equal tasks: a batch z-score is the per-task one
    z, batch, per_task = bonus_scale.batch_view(np.ones((3, 4)), np.ones((3, 4)), 3.0)
    np.testing.assert_allclose(z, 0.0, atol=1e-6)
    np.testing.assert_allclose(batch, per_task)
    # one task with 100x the gap takes the bonus, the others fall below the batch mean
    means = np.array([[100.0, 1.0, 1.0, 1.0]])
    z, batch, per_task = bonus_scale.batch_view(means, means / 2, 3.0)
    assert z[0, 0] > 1.0 and (z[0, 1:] < -0.4).all()
    assert batch[0, 0] > per_task[0, 0] and (batch[0, 1:] < 1e-3).all()


def test_report_keeps_committed_rows_of_runs_it_cannot_read(tmp_path):
    report = load_script(os.path.join(REPO, "benchmarks", "report.py"), "benchmark_report")
    columns = ("task", "seed", "kl")
    report.write_report(
        str(tmp_path), "t", columns, [{"task": "a", "seed": 0, "kl": 1.5}, {"task": "b", "seed": 0, "kl": 2.0}], [], []
    )
    rows = report.merge_previous(str(tmp_path / "t.csv"), [{"task": "b", "seed": 0, "kl": 0.5}], ("task", "seed"))
    assert rows == [{"task": "a", "seed": 0, "kl": 1.5}, {"task": "b", "seed": 0, "kl": 0.5}], "a kept, b replaced"
    text = report.write_report(str(tmp_path), "t", columns, rows, ["# T", ""], ["end"])
    assert text.splitlines() == [
        "# T",
        "",
        "| task | seed | kl |",
        "|---|---|---|",
        "| a | 0 | 1.5 |",
        "| b | 0 | 0.5 |",
        "end",
    ]


def test_aggregate_confidence_intervals_are_reproducible():
    # rliable's bootstrap draws from numpy's global generator; the committed summaries must regenerate exactly
    suite = suite_runner.load_suite("dmc")
    layout = suite_runner.Layout(os.path.join(REPO, "benchmarks", "results", "dmc"), os.path.join(REPO, "benchmarks", "runs"))
    results, _ = suite_runner.collect_results(suite, layout)
    _, first, _ = suite_runner.aggregate_scores(suite, results)
    np.random.seed(12345)
    np.random.random(1000)
    _, second, _ = suite_runner.aggregate_scores(suite, results)
    assert first and first == second
