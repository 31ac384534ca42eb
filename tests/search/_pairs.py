"""Model pairs with known maximal disagreement, for the search tests (float64)."""

from __future__ import annotations

import torch
from torch import nn


def linear(weight, bias=0.0) -> nn.Linear:
    """An ``nn.Linear`` with the given weight ``[K, D]`` (or ``[D]`` for one output) and bias."""
    w = torch.as_tensor(weight, dtype=torch.float64)
    if w.dim() == 1:
        w = w.unsqueeze(0)
    lin = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.as_tensor(bias, dtype=torch.float64).expand(w.shape[0]))
    return lin.eval()


class PlantedBump(nn.Module):
    """``base(x) + height * relu(1 - |x - center|_1 / radius)``: a ReLU network (the L1 norm as a sum of ReLUs)."""

    def __init__(self, base: nn.Module, center: torch.Tensor, radius: float, height: float):
        super().__init__()
        self.base = base
        self.register_buffer("center", center.to(torch.float64))
        self.radius = radius
        self.height = height

    def forward(self, x):
        u = x - self.center
        dist = (torch.relu(u) + torch.relu(-u)).sum(dim=1, keepdim=True)
        return self.base(x) + self.height * torch.relu(1 - dist / self.radius)


class Round(nn.Module):
    """Rounds to a grid of ``1 / scale``: zero gradient almost everywhere."""

    def __init__(self, scale: float = 4.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.round(x * self.scale) / self.scale


def quantised(weight, bias=0.0, scale: float = 4.0) -> nn.Module:
    """``round(W x + b)`` on a grid: a step-function model."""
    return nn.Sequential(linear(weight, bias), Round(scale)).eval()


def linear_box_max(w: torch.Tensor, c: float, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``max |w . x + c|`` over each box ``[N, D]``: at the corner picked by the signs of ``w``."""
    hi = torch.where(w > 0, upper * w, lower * w).sum(dim=1) + c
    lo = torch.where(w > 0, lower * w, upper * w).sum(dim=1) + c
    return torch.maximum(hi.abs(), lo.abs())
