"""Small MLPs that can also run their own backward pass (a vector-Jacobian product).

The HMC target needs d log p*/d eps inside the sampler. Writing that gradient out
as ordinary tensor operations (instead of calling autograd inside the target) lets
training differentiate through it once, and lets the sampler export to ONNX as a
plain forward graph. Tests check `vjp` against torch.autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def silu_and_slope(x: Tensor) -> tuple[Tensor, Tensor]:
    """SiLU and its derivative s (1 + x (1 - s)), written as s + silu (1 - s): one elementwise op fewer."""
    s = torch.sigmoid(x)
    y = x * s
    return y, s + y * (1.0 - s)


def tanh_and_slope(x: Tensor) -> tuple[Tensor, Tensor]:
    """tanh and its derivative 1 - t^2, which needs only the output: ONNX Runtime fuses the matrix product, its
    bias and the tanh into one kernel, and the slope costs two cheap passes (SiLU's needs five)."""
    t = torch.tanh(x)
    return t, 1.0 - t * t


ACTIVATIONS = {"silu": silu_and_slope, "tanh": tanh_and_slope}


class MLP(nn.Module):
    """Linear -> activation -> ... -> Linear (activation: one of ACTIVATIONS)."""

    def __init__(self, sizes: list[int], activation: str = "silu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (expected one of {', '.join(ACTIVATIONS)})")
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_cached(x)[0]

    def forward_cached(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Output and the activation slopes the backward pass needs."""
        slopes = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x, slope = self.activation(x)
                slopes.append(slope)
        return x, slopes

    def vjp(self, slopes: list[Tensor], grad_out: Tensor) -> Tensor:
        """grad_out^T d(output)/d(input), given the slopes from `forward_cached`."""
        g = grad_out
        for i in range(len(self.layers) - 1, -1, -1):
            if i < len(self.layers) - 1:
                g = g * slopes[i]
            g = g @ self.layers[i].weight
        return g


class GroupedMLP(nn.Module):
    """G independent MLPs of the same shape run as one batched computation.

    Input [..., G, in], output [..., G, out]; used for the per-feature marginal VAEs
    so that all features train in one step instead of a loop over features.
    """

    def __init__(self, groups: int, sizes: list[int]):
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(nn.Parameter(torch.empty(groups, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(groups, b).uniform_(-bound, bound)))

    def forward(self, x: Tensor) -> Tensor:
        """[..., G, in] -> [..., G, out]: one batched matrix product per layer over [G, N, in] (an einsum here
        exports to ONNX Runtime's Einsum, about 6x slower on these shapes)."""
        lead, g = x.shape[:-2], x.shape[-2]
        h = x.reshape(-1, g, x.shape[-1]).transpose(0, 1)  # [G, N, in]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h * w[:, :1, :] if w.shape[1] == 1 else torch.bmm(h, w)  # a 1-wide input: a broadcast multiply
            h = h + b.unsqueeze(1)
            if i < last:
                h = torch.nn.functional.silu(h)
        return h.transpose(0, 1).reshape(*lead, g, h.shape[-1])
