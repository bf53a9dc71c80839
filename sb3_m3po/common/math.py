"""Small pure functions used by the world model, the planner and the bonus.

Each function is free of module state so it can be unit-tested alone.
"""

import math
from typing import NamedTuple

import numpy as np
import torch as th
import torch.nn.functional as F
from torch.distributions import Normal


def symlog(x: th.Tensor) -> th.Tensor:
    """Symmetric log: ``sign(x) * log(1 + |x|)``; compresses large rewards and values."""
    return th.sign(x) * th.log1p(x.abs())


def symexp(x: th.Tensor) -> th.Tensor:
    """Inverse of :func:`symlog`."""
    return th.sign(x) * th.expm1(x.abs())


def bin_centers(vmin: float, vmax: float, num_bins: int, device: th.device | str = "cpu") -> th.Tensor:
    """Evenly spaced bin centres of the two-hot support (in symlog space)."""
    return th.linspace(vmin, vmax, num_bins, device=device)


def two_hot(x: th.Tensor, vmin: float, vmax: float, num_bins: int) -> th.Tensor:
    """
    Encode scalars as a two-hot distribution over ``num_bins`` bins of ``symlog(x)``.

    :param x: scalars of any shape
    :param vmin: lowest bin centre (symlog space)
    :param vmax: highest bin centre (symlog space)
    :param num_bins: number of bins
    :return: tensor of shape ``x.shape + (num_bins,)`` whose rows sum to one
    """
    bin_size = (vmax - vmin) / (num_bins - 1)
    y = symlog(x).clamp(vmin, vmax)
    pos = (y - vmin) / bin_size
    low = pos.floor().clamp(0, num_bins - 1)
    high_weight = pos - low
    low_idx = low.long()
    high_idx = (low_idx + 1).clamp(max=num_bins - 1)
    out = th.zeros(*x.shape, num_bins, device=x.device, dtype=x.dtype)
    out.scatter_add_(-1, low_idx.unsqueeze(-1), (1.0 - high_weight).unsqueeze(-1))
    out.scatter_add_(-1, high_idx.unsqueeze(-1), high_weight.unsqueeze(-1))
    return out


def two_hot_inv(logits: th.Tensor, vmin: float, vmax: float) -> th.Tensor:
    """
    Decode logits over two-hot bins back to scalars: ``symexp(E[bin])``.

    :param logits: tensor of shape ``(..., num_bins)``
    :return: tensor of shape ``(..., 1)``
    """
    centers = bin_centers(vmin, vmax, logits.shape[-1], logits.device).to(logits.dtype)
    # a matrix-vector product instead of multiply + sum: no (..., num_bins) temporary
    return symexp(F.softmax(logits, dim=-1) @ centers.unsqueeze(-1))


def soft_ce(logits: th.Tensor, target: th.Tensor, vmin: float, vmax: float) -> th.Tensor:
    """
    Cross-entropy between predicted bin logits and the two-hot encoding of scalar targets.

    :param logits: ``(..., num_bins)``
    :param target: scalars of shape ``(..., 1)`` or ``(...)``
    :return: per-element loss of shape ``(..., 1)``
    """
    if target.dim() == logits.dim():
        target = target.squeeze(-1)
    target_dist = two_hot(target, vmin, vmax, logits.shape[-1])
    return -(target_dist * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)


def simnorm(x: th.Tensor, group_size: int) -> th.Tensor:
    """
    Simplicial normalisation: softmax over consecutive groups of ``group_size`` features.

    Keeps latents on a product of simplices, which bounds them and stabilises
    multi-step latent rollouts.
    """
    shape = x.shape
    assert shape[-1] % group_size == 0, f"latent dim {shape[-1]} must be a multiple of simnorm group {group_size}"
    x = x.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    # Written out rather than F.softmax: torch's CPU softmax kernel pays a per-row overhead that dominates
    # on rows of 8, and this form is 2-6x faster forward and backward
    # (benchmarks/results/throughput/profile_after.md showed it as the planner's largest operator).
    # The max is detached because softmax is shift invariant: its gradient is zero either way.
    exp = (x - x.detach().amax(dim=-1, keepdim=True)).exp()
    return (exp / exp.sum(dim=-1, keepdim=True)).reshape(shape)


class MPPIRefit(NamedTuple):
    mean: th.Tensor  # (B, H, A)
    std: th.Tensor  # (B, H, A)
    elite_actions: th.Tensor  # (B, K, H, A)
    elite_values: th.Tensor  # (B, K)
    weights: th.Tensor  # (B, K), sum to one


def mppi_refit(
    actions: th.Tensor,
    values: th.Tensor,
    num_elites: int,
    temperature: float,
    min_std: float,
    max_std: float,
    action_mask: th.Tensor | None = None,
) -> MPPIRefit:
    """
    Refit the MPPI Gaussian to the elite action sequences.

    :param actions: candidate sequences ``(B, N, H, A)``
    :param values: their returns ``(B, N)``
    :param num_elites: how many best candidates are kept
    :param temperature: multiplies the (max-shifted) elite values before the softmax
    :param min_std: lower clamp of the refitted std
    :param max_std: upper clamp of the refitted std
    :param action_mask: optional ``(B, A)`` of 0/1; masked dims get mean 0 and std 0
    """
    elite_values, elite_idx = th.topk(values, num_elites, dim=1)
    gather_idx = elite_idx[:, :, None, None].expand(-1, -1, actions.shape[2], actions.shape[3])
    elite_actions = th.gather(actions, 1, gather_idx)
    weights = th.softmax(temperature * (elite_values - elite_values.max(1, keepdim=True).values), dim=1)
    w = weights[:, :, None, None]
    mean = (w * elite_actions).sum(1)
    std = ((w * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1)).sqrt().clamp(min_std, max_std)
    if action_mask is not None:
        mask = action_mask[:, None, :]
        mean = mean * mask
        std = std * mask
    return MPPIRefit(mean, std, elite_actions, elite_values, weights)


def exploration_bonus(
    q_mb: th.Tensor,
    q_mf: th.Tensor,
    clip: float,
    groups: th.Tensor | None = None,
    num_groups: int = 1,
) -> tuple[th.Tensor, th.Tensor]:
    """
    Hybrid exploration bonus from the gap between model-based and model-free one-step values.

    :param q_mb: ``R(z, a) + gamma * V(d(z, a))``, shape ``(N,)``
    :param q_mf: ``r + gamma * (1 - terminated) * V(h(s'))``, shape ``(N,)``
    :param clip: upper clip of the z-scored gap
    :param groups: optional ``(N,)`` group ids (tasks): z-score within each group instead of over the batch
    :param num_groups: number of groups (ids in ``[0, num_groups)``)
    :return: raw gap ``|q_mb - q_mf|`` and its z-score clipped to ``[0, clip]``
    """
    eps = (q_mb - q_mf).abs()
    if groups is None:
        if eps.numel() < 2:
            return eps, th.zeros_like(eps)
        normalised = (eps - eps.mean()) / (eps.std() + 1e-8)
        return eps, normalised.clamp(0.0, clip)
    mean, std = group_mean_std(eps, groups, num_groups)
    # a group with a single element has std 0 and a gap of 0 to its mean: its bonus is 0
    normalised = (eps - mean[groups]) / (std[groups] + 1e-8)
    return eps, normalised.clamp(0.0, clip)


def group_mean_std(x: th.Tensor, groups: th.Tensor, num_groups: int) -> tuple[th.Tensor, th.Tensor]:
    """
    Mean and (unbiased) std of ``x`` within each group, vectorised with ``index_add``.

    :param x: ``(N,)`` values
    :param groups: ``(N,)`` integer ids in ``[0, num_groups)``
    :return: ``(num_groups,)`` means and stds (0 for groups with fewer than 2 elements)
    """
    count = th.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, th.ones_like(x))
    total = th.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, x)
    mean = total / count.clamp(min=1)
    sq = th.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, (x - mean[groups]) ** 2)
    std = (sq / (count - 1).clamp(min=1)).sqrt() * (count > 1)
    return mean, std


def masked_gaussian_log_prob(x: th.Tensor, mean: th.Tensor, std: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """
    Log-density of a diagonal Gaussian summed over the valid dimensions of the last axis.

    Masked dimensions contribute nothing whatever ``x``, ``mean`` and ``std`` hold there
    (a masked std may be 0, as MPPI's refit leaves it).

    :param x: ``(..., A)`` points
    :param mean: ``(..., A)``
    :param std: ``(..., A)``
    :param mask: optional ``(..., A)`` of 0/1, 1 on valid dimensions
    :return: ``(...)``
    """
    if mask is None:
        return Normal(mean, std, validate_args=False).log_prob(x).sum(-1)
    valid = mask > 0
    safe_std = th.where(valid, std, th.ones_like(std))
    log_prob = Normal(th.where(valid, mean, x), safe_std, validate_args=False).log_prob(x)
    return (log_prob * mask).sum(-1)


def masked_gaussian_entropy(std: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """
    Entropy of a diagonal Gaussian over the valid dimensions of the last axis: ``sum_valid 0.5 log(2 pi e std^2)``.

    :param std: ``(..., A)``
    :param mask: optional ``(..., A)`` of 0/1
    :return: ``(...)``
    """
    if mask is None:
        return (0.5 + 0.5 * math.log(2 * math.pi) + th.log(std)).sum(-1)
    valid = mask > 0
    entropy = 0.5 + 0.5 * math.log(2 * math.pi) + th.log(th.where(valid, std, th.ones_like(std)))
    return (entropy * mask).sum(-1)


def importance_corrected_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    dones: np.ndarray,
    log_ratio: np.ndarray,
    gamma: float,
    gae_lambda: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """
    GAE(lambda) with V-trace truncated importance weights, arrays of shape ``(n_steps, n_envs)``.

    The executed action came from the behaviour distribution ``mu`` (MPPI), while PPO
    optimises the prior ``pi``; ``log_ratio = log pi_old(a) - log mu(a)``.
    With ``rho_t = min(rho_bar, exp(log_ratio))`` and ``c_t = min(c_bar, exp(log_ratio))``::

        delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)
        D_t     = rho_t * delta_t + gamma * lambda * (1 - done_t) * c_t * D_{t+1}   (value target - V)
        A_t     = rho_t * (delta_t + gamma * lambda * (1 - done_t) * D_{t+1})       (policy advantage)

    ``next_values`` is the value of the real next observation (the terminal one on
    episode end), so truncated episodes bootstrap and terminated ones do not.
    When ``log_ratio == 0`` (planner off) both equal plain GAE, i.e. PPO.

    :return: ``(advantages, returns)`` where ``returns = D + values``
    """
    weight = np.exp(log_ratio)
    rho = np.minimum(rho_bar, weight)
    c = np.minimum(c_bar, weight)
    delta = rewards + gamma * (1.0 - terminated) * next_values - values
    advantages = np.zeros_like(rewards)
    residual = np.zeros_like(rewards)
    next_residual = np.zeros(rewards.shape[1:], dtype=rewards.dtype)
    for step in reversed(range(rewards.shape[0])):
        carry = gamma * gae_lambda * (1.0 - dones[step]) * next_residual
        advantages[step] = rho[step] * (delta[step] + carry)
        residual[step] = rho[step] * delta[step] + c[step] * carry
        next_residual = residual[step]
    return advantages, residual + values


class SurrogateTerms(NamedTuple):
    """PPO policy loss and its diagnostics for one minibatch."""

    loss: th.Tensor  # scalar to minimise
    clip_fraction: th.Tensor  # share of samples whose ratio left [1 - clip, 1 + clip]
    approx_kl: th.Tensor  # Schulman's k3 estimate of KL(old || new), from the bounded log-ratio


def clipped_surrogate(
    log_ratio: th.Tensor,
    advantages: th.Tensor,
    clip_range: float,
    dual_clip: float | None = None,
    max_log_ratio: float = 20.0,
) -> SurrogateTerms:
    """
    PPO's clipped surrogate with a bounded log-ratio and optional dual clip (Ye et al. 2020).

    Inside ``[-max_log_ratio, max_log_ratio]`` and without ``dual_clip`` this is SB3's PPO loss.
    The bound matters when actions come from another distribution (the planner): a prior
    log-probability of such an action can rise by tens of nats within the epochs, and
    ``exp`` of that overflows float32; clamping first keeps the ratio finite and gives such
    samples zero gradient. The dual clip bounds ``ratio * A`` for negative advantages at
    ``dual_clip * A``, so a few far-off samples cannot dominate a minibatch.

    :param log_ratio: ``log pi_new(a) - log pi_old(a)`` per sample
    :param advantages: advantages, same shape
    :param clip_range: PPO clip epsilon
    :param dual_clip: lower bound multiplier ``c > 1`` for negative advantages (None: off)
    :param max_log_ratio: bound on ``|log_ratio|`` before exponentiation
    :return: loss, clip fraction and approximate KL
    """
    assert dual_clip is None or dual_clip > 1.0, f"dual_clip must be > 1 (or None), got {dual_clip}"
    log_ratio = log_ratio.clamp(-max_log_ratio, max_log_ratio)
    ratio = th.exp(log_ratio)
    surrogate = th.min(advantages * ratio, advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))
    if dual_clip is not None:
        surrogate = th.where(advantages < 0, th.max(surrogate, dual_clip * advantages), surrogate)
    with th.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
    return SurrogateTerms(-surrogate.mean(), clip_fraction, approx_kl)


def masked_mean_squared_error(x: th.Tensor, target: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """
    Mean over the valid dimensions of the last axis of ``(x - target) ** 2``, shape ``(..., 1)``.

    :param mask: optional ``(..., A)`` of 0/1, 1 on valid dimensions (a masked dimension neither counts nor divides)
    """
    if mask is None:
        return (x - target).pow(2).mean(-1, keepdim=True)
    return ((x - target) * mask).pow(2).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
