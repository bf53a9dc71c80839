"""``benchmarks/speed.py``: planner and training speed rows are measured, counted and written."""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import speed  # noqa: E402  (a script of benchmarks/)


def test_planner_rows_count_more_flops_for_more_envs_and_the_paper_budget(tmp_path):
    argv = ["planner", "--presets", "cpu", "--planners", "cpu", "paper", "--n-envs", "1", "4", "--min-seconds", "0.01"]
    assert speed.main([*argv, "--threads", "1", "--out", str(tmp_path), "--label", "t"]) == 0
    with open(tmp_path / "planner_t.json") as f:
        rows = {(r["planner"], r["n_envs"]): r for r in json.load(f)["rows"]}
    assert all(r["planned_actions_per_s"] > 0 and r["achieved_gflop_per_s"] > 0 for r in rows.values())
    # matmul FLOPs grow with the batch (4 envs: 4x the rows) and with the paper budget (4x samples, 2x iterations)
    assert rows[("cpu", 4)]["gflop_per_call"] > 3.5 * rows[("cpu", 1)]["gflop_per_call"]
    assert rows[("paper", 1)]["gflop_per_call"] > 5 * rows[("cpu", 1)]["gflop_per_call"]
    assert "| planner" in (tmp_path / "planner_t.md").read_text()


def test_training_time_is_split_into_buckets_that_sum_to_the_wall_clock(tmp_path):
    argv = ["train", "--env", "Pendulum-v1", "--algos", "sac", "--steps", "64", "--warmup", "120", "--threads", "1"]
    assert speed.main([*argv, "--out", str(tmp_path), "--label", "t"]) == 0
    with open(tmp_path / "train_t.json") as f:
        (row,) = json.load(f)["rows"]
    assert row["algo"] == "sac" and row["measured_env_steps"] >= 64
    buckets = [row[f"s_per_1k_steps_{k}"] for k in ("env", "act", "update", "other")]
    assert all(b >= 0 for b in buckets[:3]) and buckets[2] > 0, "SAC's gradient steps are timed as updates"
    assert abs(sum(buckets) * row["env_steps_per_s"] / 1e3 - 1.0) < 1e-6, "the buckets add up to the measured time"


def test_device_checks_run_the_device_tests_and_report_their_outcome():
    checks = speed.device_checks("cpu")
    assert checks["passed"] is True and "3 passed, 1 skipped" in checks["outcome"], checks
