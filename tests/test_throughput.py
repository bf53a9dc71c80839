"""The throughput benchmark's accounting (``benchmarks/throughput.py``): time and matmul FLOPs per bucket."""

import argparse
import importlib.util
import os
import sys

import pytest
import torch as th
from torch.utils.flop_counter import FlopCounterMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("benchmark_throughput", os.path.join(REPO, "benchmarks", "throughput.py"))
assert spec is not None and spec.loader is not None
throughput = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = throughput
spec.loader.exec_module(throughput)


class Net:
    def __init__(self) -> None:
        self.layer = th.nn.Linear(8, 4)

    def act(self, x: th.Tensor) -> th.Tensor:
        with th.no_grad():
            return self.layer(x)

    def update(self, x: th.Tensor) -> None:
        self.layer(x).sum().backward()


def test_stopwatch_counts_matmul_flops_per_bucket_only_while_a_counter_is_set():
    net, watch = Net(), throughput.Stopwatch()
    watch.wrap(net, "act", "act")
    watch.wrap(net, "update", "policy_update")
    x = th.randn(3, 8)
    net.act(x)  # no counter yet: timed, not counted
    assert watch.flops == {} and watch.seconds["act"] > 0
    counter = FlopCounterMode(display=False)
    with counter:
        watch.counter = counter
        net.act(x)
        net.update(x)
        watch.counter = None
    forward = 2 * 3 * 8 * 4
    # backward of a linear layer: the input gradient is not needed here (x has none), the weight gradient is
    assert watch.flops["act"] == forward
    assert watch.flops["policy_update"] == counter.get_total_flops() - forward
    assert watch.flops["policy_update"] >= 2 * forward


def test_split_buckets_separates_the_world_model_from_m3po_train_and_keeps_the_rest_as_other():
    split = throughput.split_buckets({"act": 2.0, "update_total": 7.0, "wm_update": 5.0, "policy_update": 0.5}, 12.0)
    assert split == pytest.approx({"act": 2.0, "wm_update": 5.0, "policy_update": 2.5, "other": 2.5})
    assert sum(split.values()) == pytest.approx(12.0)


def test_sac_run_reports_time_and_flops_and_the_summary_compares_them(tmp_path):
    run = throughput.run_one("cartpole", "sac", warmup=128, threads=1, measured=32, flop_steps=16)
    assert run["measured_env_steps"] >= 32 and run["env_steps_per_s"] > 0
    assert run["flop_counted_env_steps"] == 16
    gflop = run["gflop_per_1k_steps"]
    # SAC's defaults: one gradient step per env step on 256-wide MLPs with batch 256, so the update dominates
    assert gflop["policy_update"] > 100 * max(gflop["act"], 1e-9) > 0
    run.update(repeat=0, commit="test")
    args = argparse.Namespace(tasks=["cartpole"], algos=["sac"], threads=1, repeats=1, warmup=128)
    text = throughput.summarize([run], str(tmp_path), args)
    row = next(line for line in text.splitlines() if line.startswith("| cartpole | sac |") and "x |" in line)
    assert "| 1.00x |" in row
    assert (tmp_path / "summary.md").read_text() == text
