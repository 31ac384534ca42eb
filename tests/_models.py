"""Small random model pairs for tests (float64)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int], seed: int, act: type[nn.Module] = nn.ReLU, scale: float = 1.0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(m, n).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, m, generator=g, dtype=torch.float64) * scale / m**0.5)
            lin.bias.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.1)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def apply_layers(layers, x: torch.Tensor) -> torch.Tensor:
    """Evaluate :func:`modeldiff.linearize.linearize`'s dense layers on ``x`` ``[N, ...]`` (the activation after every
    layer but the last)."""
    from modeldiff.linearize import activate

    h = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(layers):
        h = h @ layer.weight.T + layer.bias
        if i < len(layers) - 1:
            h = activate(h, layer)
    return h


def perturbed(model: nn.Module, rel: float, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameter moved by ``rel`` times its scale in a random direction."""
    import copy

    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * rel * (p.abs().mean() + 1e-3))
    return out.eval()


def pruned(model: nn.Sequential, frac: float, seed: int) -> nn.Sequential:
    """A copy of an :func:`mlp` with ``frac`` of each hidden layer's neurons removed (weight row and bias zeroed)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    linears = [m for m in out if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin in linears[:-1]:
            drop = torch.rand(lin.out_features, generator=g) < frac
            lin.weight[drop] = 0.0
            lin.bias[drop] = 0.0
    return out.eval()


class SmallCNN(nn.Module):
    """1x6x6 -> conv(2, 3x3) -> BN -> ReLU -> conv -> ReLU (+ residual add) -> avgpool(2) -> flatten -> linear(3)."""

    def __init__(self, seed: int, residual: bool = True):
        super().__init__()
        self.residual = residual
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.double().eval()

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.relu(self.conv2(h)) + h if self.residual else torch.relu(self.conv2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


class ResMLP(nn.Module):
    """``x -> h1 = relu(fc1 x) -> h2 = relu(fc2 h1) + h1 -> fc3 h2 + skip x``: a ReLU output skipping one layer and the
    input skipping both (the residual forms :func:`modeldiff.linearize.linearize` carries)."""

    def __init__(self, d_in: int, hidden: int, k: int, seed: int, scale: float = 2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden)
        self.fc3, self.skip = nn.Linear(hidden, k), nn.Linear(d_in, k)
        with torch.no_grad():
            for lin in (self.fc1, self.fc2, self.fc3, self.skip):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * scale / lin.in_features**0.5)
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
        self.double().eval()

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h)) + h
        return self.fc3(h) + self.skip(x)


class BasicBlockNet(nn.Module):
    """1x5x5 -> conv -> ReLU -> a torchvision-style basic block (conv-BN-ReLU-conv-BN, ``out += identity``, in-place
    ReLU) -> ``pool`` -> linear(3). ``pool``: ``flatten`` (no pooling), ``adaptive`` (``AdaptiveAvgPool2d(1)``, then
    flatten) or ``mean`` (``out.mean((2, 3))``: global average pooling as in ResNets)."""

    def __init__(self, seed: int, pool: str = "flatten"):
        super().__init__()
        torch.manual_seed(seed)
        self.pool = pool
        self.stem = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
        self.c1, self.b1 = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.c2, self.b2 = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * 5 * 5 if pool == "flatten" else 2, 3)
        with torch.no_grad():
            for bn in (self.b1, self.b2):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
        self.double().eval()

    def forward(self, x):
        identity = self.stem(x)
        out = self.relu(self.b1(self.c1(identity)))
        out = self.b2(self.c2(out))
        out += identity
        out = self.relu(out)
        if self.pool == "mean":
            return self.fc(out.mean((2, 3)))
        return self.fc(torch.flatten(self.avg(out) if self.pool == "adaptive" else out, 1))
