"""
M3PO on a torch device: it learns and predicts there, a planner call makes no host sync (CUDA), a model saved
on the device loads on the CPU and back with the same actions, and the first world-model losses equal the CPU's.
Runs on the CPU by default; ``pytest tests/test_device.py --device cuda`` (``benchmarks/speed.py device``) on a GPU.
"""

import numpy as np
import pytest
import torch as th

from sb3_m3po import M3PO
from sb3_m3po.m3po.world_model_update import world_model_targets

OBS = np.zeros((1, 3), np.float32)  # a Pendulum-v1 observation


@pytest.fixture
def trained(device: str, tiny: dict) -> M3PO:
    return M3PO("MlpPolicy", "Pendulum-v1", seed=0, device=device, **tiny).learn(96)


def test_learns_and_predicts_on_the_device(trained: M3PO, device: str) -> None:
    assert next(trained.policy.parameters()).device.type == th.device(device).type
    assert trained.replay_buffer.size() == 96
    action = trained.predict(OBS, deterministic=True)[0]
    assert action.shape == (1, 1) and np.all(np.abs(action) <= 2.0)


def test_planner_call_makes_no_host_sync(trained: M3PO, device: str) -> None:
    if not device.startswith("cuda"):
        pytest.skip("host syncs are a CUDA notion")
    obs, plan = th.zeros(8, trained.policy.obs_dim, device=device), trained.policy.initial_plan(8)
    th.cuda.synchronize()
    th.cuda.set_sync_debug_mode("error")  # a host sync inside the planner raises
    try:
        with th.inference_mode():
            trained.policy.act(obs, plan)
    finally:
        th.cuda.set_sync_debug_mode("default")


def test_saved_on_the_device_loads_on_the_cpu_and_back_with_the_same_actions(trained: M3PO, device: str, tmp_path) -> None:
    trained.save(tmp_path / "on_device.zip")
    on_cpu = M3PO.load(tmp_path / "on_device.zip", device="cpu")
    on_cpu.save(tmp_path / "on_cpu.zip")
    back = M3PO.load(tmp_path / "on_cpu.zip", device=device)
    actions = [model.predict(OBS, deterministic=True)[0] for model in (trained, on_cpu, back)]
    tolerance = 0.0 if device == "cpu" else 1e-4  # other kernels, other rounding
    assert np.abs(np.stack(actions) - actions[0]).max() <= tolerance


def test_first_world_model_losses_match_the_cpu(device: str, tiny: dict) -> None:
    def first_losses(on: str, source: M3PO) -> dict[str, float]:
        """Losses of one batch, drawn with the same seed from the source's replay, of a twin on ``on``."""
        twin = M3PO("MlpPolicy", "Pendulum-v1", seed=0, device=on, **tiny)
        twin.policy.load_state_dict(source.policy.state_dict())
        th.manual_seed(0)
        np.random.seed(0)
        source.replay_buffer.device = th.device(on)
        batch = source.replay_buffer.sample(8, twin.planner_config.horizon)
        with th.random.fork_rng(devices=[]):
            target_z, td = world_model_targets(twin.policy, batch, None, twin.gamma)
        args = (batch.observations, batch.actions, batch.rewards, target_z, td, None, twin.world_model_config)
        losses = twin.policy.world_model_losses(*args)
        return {k: float(v.detach()) for k, v in losses._asdict().items() if k != "latents"}

    source = M3PO("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", **tiny).learn(64)
    cpu, on_device = first_losses("cpu", source), first_losses(device, source)
    assert set(cpu) >= {"total", "consistency", "reward", "value"} and cpu["total"] > 0
    assert on_device == pytest.approx(cpu, rel=0 if device == "cpu" else 1e-4, abs=0 if device == "cpu" else 1e-6)
