"""Network building blocks of the implicit world model (TD-MPC2 style)."""

import math

import torch as th
from torch import nn

from sb3_m3po.common.math import simnorm


class SimNorm(nn.Module):
    """Softmax over groups of ``group_size`` features (see :func:`sb3_m3po.common.math.simnorm`)."""

    def __init__(self, group_size: int = 8) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: th.Tensor) -> th.Tensor:
        return simnorm(x, self.group_size)


def mlp(
    in_dim: int,
    hidden_dims: list[int],
    out_dim: int,
    out_act: nn.Module | None = None,
    activation_fn: type[nn.Module] = nn.SiLU,
) -> nn.Sequential:
    """
    Linear -> LayerNorm -> activation blocks followed by a linear output layer.

    TD-MPC2 uses Mish; our default is SiLU, nearly the same curve, because this torch
    CPU build runs Mish about 7x slower (see benchmarks/results/throughput).

    :param out_act: optional module after the output layer (e.g. :class:`SimNorm`)
    :param activation_fn: hidden activation
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden_dims]
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.LayerNorm(d_out), activation_fn()]
    layers.append(nn.Linear(dims[-1], out_dim))
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def small_init_(module: nn.Module, std: float = 0.02) -> None:
    """
    TD-MPC2's initialisation, in place: every linear weight (plain or ensemble) drawn from a normal of ``std``,
    biases 0, embeddings uniform in ``[-std, std]``.

    A hidden layer feeds a LayerNorm, which undoes its weights' scale in the forward pass; the scale then only sets
    how far one Adam step (of about the learning rate) moves the layer relative to its weights, so small weights learn
    faster. PyTorch's default scale grows as the input shrinks (std ``1 / sqrt(3 * fan_in)``): an encoder's first
    layer on a few observation features starts an order of magnitude larger than TD-MPC2's.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear | EnsembleLinear):
            nn.init.trunc_normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.uniform_(m.weight, -std, std)


class EnsembleLinear(nn.Module):
    """``num_members`` independent linear layers evaluated with one batched matmul."""

    def __init__(self, num_members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(th.empty(num_members, in_dim, out_dim))
        self.bias = nn.Parameter(th.empty(num_members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: th.Tensor, members: th.Tensor | None = None) -> th.Tensor:
        # x: (K, M, in) -> (K, M, out); ``members`` picks a subset of the ensemble
        if members is None:
            return th.baddbmm(self.bias, x, self.weight)
        return th.baddbmm(self.bias[members], x, self.weight[members])


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with separate affine parameters per ensemble member."""

    def __init__(self, num_members: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(th.ones(num_members, 1, dim))
        self.bias = nn.Parameter(th.zeros(num_members, 1, dim))
        self.dim = dim

    def forward(self, x: th.Tensor, members: th.Tensor | None = None) -> th.Tensor:
        weight, bias = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        return nn.functional.layer_norm(x, (self.dim,)) * weight + bias


class EnsembleMLP(nn.Module):
    """
    An ensemble of :func:`mlp` networks with shared input, fused into batched matmuls.

    Input ``(..., in_dim)``, output ``(num_members, ..., out_dim)`` (or ``len(members)``).
    """

    def __init__(
        self,
        num_members: int,
        in_dim: int,
        hidden_dims: list[int],
        out_dim: int,
        activation_fn: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        self.num_members = num_members
        self.activation = activation_fn()
        dims = [in_dim, *hidden_dims]
        self.linears = nn.ModuleList(EnsembleLinear(num_members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(EnsembleLayerNorm(num_members, b) for b in dims[1:])
        self.head = EnsembleLinear(num_members, dims[-1], out_dim)

    def forward(self, x: th.Tensor, members: th.Tensor | None = None) -> th.Tensor:
        lead = x.shape[:-1]
        k = self.num_members if members is None else len(members)
        h = x.reshape(1, -1, x.shape[-1]).expand(k, -1, -1)
        for linear, norm in zip(self.linears, self.norms):
            h = self.activation(norm(linear(h, members), members))
        out = self.head(h, members)
        return out.reshape(k, *lead, out.shape[-1])
