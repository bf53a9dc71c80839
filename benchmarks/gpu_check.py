"""
M3PO on a device in one invocation: correctness checks, planner throughput, training speed, a summary.

1. checks: learn/predict on the device, world-model loss and backward, no host sync inside one planner call
   (``torch.cuda.set_sync_debug_mode("error")``, CUDA only), save on the device / load on the CPU and back, and
   the first world-model losses on the device against the CPU's on the same seed and batch;
2. planner: ``speed.py planner`` for the presets and both planner budgets, eager and compiled;
3. training: ``speed.py train`` of M3PO on Pendulum-v1 and cartpole-swingup for each n_envs;
4. ``<out>/summary.md`` and ``<out>/gpu_check.json`` with the device, driver and torch build.

Usage (a GPU machine; ``--dry-run`` shrinks every size so a CPU run checks the script in a minute)::

    python benchmarks/gpu_check.py --device cuda
    python benchmarks/gpu_check.py --device cpu --dry-run --out benchmarks/results/gpu/dry_run_cpu
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
import speed
import torch as th
from runner.runs import code_version, device_description, machine_description, write_atomic

from sb3_m3po import M3PO
from sb3_m3po.m3po.world_model_update import world_model_targets

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "gpu")
TINY: dict[str, Any] = {
    "n_steps": 16,
    "batch_size": 32,
    "n_epochs": 2,
    "world_model_kwargs": {"batch_size": 16, "gradient_steps": 8, "learning_starts": 64},
}


def first_losses(device: str, seed: int = 0) -> dict[str, float]:
    """World-model losses of one batch, drawn with the same seed from the same replay, before any update."""
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=seed, device="cpu", **TINY).learn(128)
    state, replay = model.policy.state_dict(), model.replay_buffer
    twin = M3PO("MlpPolicy", "Pendulum-v1", seed=seed, device=device, **TINY)
    twin.policy.load_state_dict(state)
    th.manual_seed(seed)
    np.random.seed(seed)
    replay.device = th.device(device)
    batch = replay.sample(16, twin.planner_config.horizon)
    with th.random.fork_rng(devices=[]):
        target_z, td = world_model_targets(twin.policy, batch, None, twin.gamma)
    cfg = twin.world_model_config
    losses = twin.policy.world_model_losses(batch.observations, batch.actions, batch.rewards, target_z, td, None, cfg)
    return {k: float(v.detach()) for k, v in losses._asdict().items() if k != "latents"}


def checks(device: str) -> dict[str, Any]:
    """Each check's outcome; an exception here is a failure the summary names."""
    results: dict[str, Any] = {}
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, device=device, **TINY).learn(256)
    results["learn_and_predict"] = model.predict(np.zeros((1, 3), np.float32), deterministic=True)[0].shape == (1, 1)
    obs = th.zeros(8, model.policy.obs_dim, device=device)
    plan = model.policy.initial_plan(8)
    if device.startswith("cuda"):
        th.cuda.synchronize()
        th.cuda.set_sync_debug_mode("error")  # any host sync inside the planner raises
        try:
            with th.inference_mode():
                model.policy.act(obs, plan)
        finally:
            th.cuda.set_sync_debug_mode("default")
        results["planner_without_host_sync"] = True
    else:
        results["planner_without_host_sync"] = "not checked (CUDA only)"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m3po.zip")
        model.save(path)
        on_cpu = M3PO.load(path, device="cpu")
        on_cpu.save(path)
        back = M3PO.load(path, device=device)
        actions = [m.predict(np.zeros((1, 3), np.float32), deterministic=True)[0] for m in (model, on_cpu, back)]
        results["save_device_load_cpu_and_back_max_action_diff"] = float(np.abs(np.stack(actions) - actions[0]).max())
    cpu, dev = first_losses("cpu"), first_losses(device)
    results["first_losses_cpu"], results["first_losses_device"] = cpu, dev
    results["first_losses_max_rel_diff"] = max(abs(cpu[k] - dev[k]) / max(abs(cpu[k]), 1e-8) for k in cpu)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes: checks the script, measures nothing useful")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    dry = args.dry_run
    presets, n_envs = (["cpu"], ["1", "8"]) if dry else (["cpu", "1M", "5M"], ["1", "8", "64", "256", "1024"])
    train_envs, steps, warmup = (["8"], "128", "64") if dry else (["8", "64", "256"], "4096", "1024")
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        outcome: dict[str, Any] = {"checks": checks(args.device)}
        planner_rows = []
        # compiled at the largest n_envs only: each batch shape compiles anew (tens of seconds each)
        for compiled in [False] if dry else [False, True]:
            flags = ["planner", "--device", args.device, "--out", scratch, "--label", f"c{int(compiled)}"]
            flags += ["--presets", *presets, "--planners", "cpu", "paper", "--n-envs", *(n_envs[-1:] if compiled else n_envs)]
            flags += ["--min-seconds", "0.2" if dry else "1.0", *(["--compile"] if compiled else [])]
            speed.main(flags)
            with open(os.path.join(scratch, f"planner_c{int(compiled)}.json")) as f:
                planner_rows += json.load(f)["rows"]
        train_rows = []
        for env_id in ["Pendulum-v1", "dm_control/cartpole-swingup-v0"]:
            for n in train_envs:
                flags = ["train", "--device", args.device, "--out", scratch, "--label", "t", "--env", env_id]
                # rollouts of about 2k transitions whatever n_envs (the package's n_steps=64 at 256 envs would be 16k)
                n_steps = str(max(2048 // int(n), 1) if int(n) > 8 else 64)
                flags += ["--algos", "m3po", "--n-envs", n, "--n-steps", n_steps, "--steps", steps, "--warmup", warmup]
                speed.main(flags)
                with open(os.path.join(scratch, "train_t.json")) as f:
                    train_rows += json.load(f)["rows"]
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        driver = "none (no nvidia-smi)"
    header = {
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device_description(args.device),
        "driver": driver,
        "torch": f"{th.__version__} (CUDA {th.version.cuda})",
        "machine": machine_description(),
        "commit": code_version(),
        "wall_seconds": round(time.time() - started, 1),
    }
    write_atomic(
        os.path.join(args.out, "gpu_check.json"),
        json.dumps({**header, **outcome, "planner": planner_rows, "train": train_rows}, indent=1) + "\n",
    )
    lines = [
        "# M3PO on a device" + (" (dry run: tiny sizes, nothing measured here means anything)" if dry else ""),
        "",
        *[f"* {k}: {v}" for k, v in header.items()],
        "",
        "## Checks",
        "",
        *[f"* {k}: {v}" for k, v in outcome["checks"].items()],
        "",
        "## Planner (planned actions per second, achieved GFLOP/s)",
        "",
        pd.DataFrame(planner_rows).to_markdown(index=False, floatfmt=".4g"),
        "",
        "## Training (env steps/s, seconds per 1k env steps by part)",
        "",
        pd.DataFrame(train_rows).to_markdown(index=False, floatfmt=".4g"),
    ]
    write_atomic(os.path.join(args.out, "summary.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
