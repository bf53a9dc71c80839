"""The suite runner on a real two-node local Ray cluster: losing the worker node mid-run loses no finished run."""

import glob
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from sb3_m3po.zoo.checkpoints import latest_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _on_worker_with_checkpoint(runs_dir: str, results_dir: str, worker_id: str, budget: int) -> str | None:
    """
    An M3PO run folder whose current segment runs on the worker node, has a complete checkpoint and no record yet.

    Only M3PO runs at most half-way to ``budget`` count: a run nearer its end, or a PPO/SAC run (seconds from
    half-way to the end), could finish while the node is taken down (its processes get a second to stop), and
    then there would be nothing left to continue.
    """
    for path in glob.glob(os.path.join(runs_dir, "*", "*", "seed*", "segments.json")):
        folder = os.path.dirname(path)
        task, algorithm, seed = folder.split(os.sep)[-3:]
        if algorithm != "m3po" or os.path.exists(os.path.join(results_dir, "raw", task, f"{algorithm}_{seed}.json")):
            continue
        try:
            with open(path) as f:
                segments = json.load(f)["segments"]
        except (OSError, ValueError):
            continue
        points = [latest_checkpoint(c) for c in glob.glob(os.path.join(folder, "seg*", "**", "checkpoints"), recursive=True)]
        if segments[-1]["node"] == worker_id and any(p is not None and p[0] <= budget // 2 for p in points):
            return folder
    return None


@pytest.mark.slow
def test_smoke_suite_survives_losing_the_worker_node(tmp_path):
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        results, runs = str(tmp_path / "results"), str(tmp_path / "runs")
        command = [sys.executable, os.path.join(REPO, "benchmarks", "suite.py"), "smoke", "--only-tasks", "pendulum"]
        command += ["--ray-address", cluster.address, "--results-dir", results, "--runs-dir", runs, "--status-every", "0"]
        runner = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with open(os.path.join(REPO, "benchmarks", "suites", "smoke.yml")) as f:
            budget = yaml.safe_load(f)["tasks"]["pendulum"]["sim_steps"]  # no action repeat: decisions
        deadline, cut = time.monotonic() + 600, None
        while cut is None:
            assert runner.poll() is None, "every run ended before one on the worker reached a checkpoint"
            assert time.monotonic() < deadline
            cut = _on_worker_with_checkpoint(runs, results, worker.node_id, budget)
            time.sleep(0.2)
        finished_before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(results, "raw", "*", "*.json"))}
        cluster.remove_node(worker)
        output = runner.communicate(timeout=900)[0]
        assert runner.returncode == 0, output[-4000:]
        records = sorted(glob.glob(os.path.join(results, "raw", "pendulum", "*.json")))
        assert [os.path.basename(p) for p in records] == [f"{a}_seed{s}.json" for a in ("m3po", "ppo", "sac") for s in (0, 1)]
        assert all(os.path.getmtime(p) == t for p, t in finished_before.items()), "finished runs are kept as they were"
        task, algorithm, seed = cut.split(os.sep)[-3:]
        with open(os.path.join(results, "raw", task, f"{algorithm}_{seed}.json")) as f:
            record = json.load(f)
        assert record["resumed_at"], "the run cut off on the worker continued from its checkpoint"
        assert worker.node_id in record["nodes"] and len(record["nodes"]) == 2, "and finished on the head"
        assert "ray cluster: 2 node(s), 2 CPUs" in output
    finally:
        cluster.shutdown()
