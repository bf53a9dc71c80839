"""The suite runner on a real two-node local Ray cluster: losing the worker node mid-run loses no finished run."""

import glob
import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _on_worker_with_checkpoint(runs_dir: str, results_dir: str, worker_id: str) -> str | None:
    """A run folder whose current segment runs on the worker node and has a complete checkpoint (no record yet)."""
    for path in glob.glob(os.path.join(runs_dir, "*", "*", "seed*", "segments.json")):
        folder = os.path.dirname(path)
        task, algorithm, seed = folder.split(os.sep)[-3:]
        if os.path.exists(os.path.join(results_dir, "raw", task, f"{algorithm}_{seed}.json")):
            continue
        try:
            with open(path) as f:
                segments = json.load(f)["segments"]
        except (OSError, ValueError):
            continue
        if segments[-1]["node"] == worker_id and glob.glob(os.path.join(folder, "seg*", "**", "complete"), recursive=True):
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
        deadline, cut = time.monotonic() + 600, None
        while cut is None:
            assert runner.poll() is None, "every run ended before one on the worker reached a checkpoint"
            assert time.monotonic() < deadline
            cut = _on_worker_with_checkpoint(runs, results, worker.node_id)
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
