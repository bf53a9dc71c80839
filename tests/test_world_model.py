import pytest
import torch as th

from sb3_m3po import M3PO
from sb3_m3po.common.layers import EnsembleLinear, EnsembleMLP
from sb3_m3po.m3po.config import WorldModelConfig, WorldModelTrainingConfig
from sb3_m3po.m3po.world_model import WorldModel
from sb3_m3po.m3po.world_model_update import world_model_targets


def test_shapes_and_task_embedding_gets_gradients():
    config = WorldModelConfig(latent_dim=16, enc_dim=32, mlp_dim=32, num_q=3, num_bins=21, task_dim=4)
    wm = WorldModel(obs_dim=5, action_dim=2, config=config, num_tasks=3)
    task = th.tensor([0, 1, 2, 0, 1, 2, 0])
    # multi-task observations end with the one-hot id, which the encoder does not see
    obs = th.cat([th.randn(7, 5), th.nn.functional.one_hot(task, 3).float()], -1)
    z = wm.encode(obs, task)
    changed = obs.clone()
    changed[:, 5:] = 0.0
    assert th.equal(wm.encode(changed, task), z), "the id reaches the networks through the embedding only"
    a = th.rand(7, 2) * 2 - 1
    assert z.shape == (7, 16)
    assert wm.next(z, a, task).shape == (7, 16)
    assert wm.reward(z, a, task).shape == (7, 1)
    assert wm.q_logits(z, a, task).shape == (3, 7, 21)
    assert wm.q_value(z, a, task, reduce="min").shape == (7, 1)
    (wm.reward_logits(z, a, task).sum() + wm.next(z, a, task).sum()).backward()
    assert wm.task_embedding.weight.grad is not None and wm.task_embedding.weight.grad.abs().sum() > 0
    assert th.all(wm.task_embedding.weight.norm(dim=-1) <= 1.0 + 1e-5)


def test_fused_ensemble_equals_member_by_member():
    net = EnsembleMLP(4, 6, [8, 8], 3)
    x = th.randn(5, 6)
    full = net(x)
    for k in range(4):
        assert th.allclose(full[k], net(x, members=th.tensor([k]))[0], atol=1e-6)


def test_targets_carry_no_gradient_and_consistency_trains_the_online_side(tiny):
    model = M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny)
    model.learn(64)
    wm = model.policy.world_model
    batch = model.replay_buffer.sample(16, model.planner_config.horizon)
    target_z, td_targets = world_model_targets(model.policy, batch, None, model.gamma)
    assert not target_z.requires_grad and not td_targets.requires_grad
    consistency_only = WorldModelTrainingConfig(consistency_coef=1.0, reward_coef=0.0, value_coef=0.0)
    losses = wm.losses(batch.observations, batch.actions, batch.rewards, target_z, td_targets, None, consistency_only)
    wm.zero_grad(set_to_none=True)
    losses.total.backward()
    assert wm.dynamics[0].weight.grad.abs().sum() > 0, "dynamics must learn from the consistency loss"
    assert wm.encoder[0].weight.grad.abs().sum() > 0, "the encoder learns through the predicted latents"


def test_polyak_target_update():
    wm = WorldModel(3, 1, WorldModelConfig(latent_dim=8, enc_dim=8, mlp_dim=8, num_bins=11))
    with th.no_grad():
        for p in wm.q_ensemble.parameters():
            p.add_(1.0)
    before = [p.clone() for p in wm.target_q_ensemble.parameters()]
    wm.soft_update_target(0.25)
    for b, t, p in zip(before, wm.target_q_ensemble.parameters(), wm.q_ensemble.parameters()):
        assert th.allclose(t, 0.75 * b + 0.25 * p)
    assert not any(p.requires_grad for p in wm.target_q_ensemble.parameters())


def test_small_weight_init_is_the_default_gives_tdmpc2_scales_and_keeps_zero_heads():
    config = WorldModelConfig(latent_dim=64, enc_dim=128, mlp_dim=128, num_q=3, num_bins=21, task_dim=4, weight_init="small")
    wm = WorldModel(obs_dim=9, action_dim=2, config=config, num_tasks=3, episodic=True)
    weights = [m.weight for m in wm.modules() if isinstance(m, th.nn.Linear | EnsembleLinear | th.nn.Embedding)]
    zero_heads = {id(wm.reward_head[-1].weight), id(wm.q_ensemble.head.weight), id(wm.target_q_ensemble.head.weight)}
    for w in weights:
        if id(w) in zero_heads:
            assert th.count_nonzero(w) == 0, "reward and Q output layers start at 0 (predictions 0)"
        elif w is wm.task_embedding.weight:
            assert w.abs().max() <= 0.02
        else:
            assert 0.015 < float(w.detach().std()) < 0.025, (
                f"a weight of shape {tuple(w.shape)} has std {float(w.detach().std()):.3f}"
            )
    assert WorldModelConfig().weight_init == "small", "the default"
    torch_init = WorldModel(obs_dim=9, action_dim=2, config=WorldModelConfig(latent_dim=64, enc_dim=128, weight_init="torch"))
    assert float(torch_init.encoder[0].weight.detach().std()) > 0.1, "PyTorch's is several times larger on a 9-input layer"
    for p, t in zip(wm.q_ensemble.parameters(), wm.target_q_ensemble.parameters()):
        assert th.equal(p, t)


def test_weight_init_typo_names_the_setting(tiny):
    tiny["policy_kwargs"]["architecture"]["weight_init"] = "tdmpc"
    with pytest.raises(ValueError, match="weight_init must be 'torch' or 'small', got 'tdmpc'"):
        M3PO("MlpPolicy", "Pendulum-v1", **tiny)
