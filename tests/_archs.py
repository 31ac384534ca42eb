"""Architecture factories for ``load_model(..., arch="tests._archs:NAME")`` in tests/test_loading.py."""

from __future__ import annotations

from torch import nn


def small_mlp() -> nn.Module:
    """4 -> 8 -> 6 -> 3 ReLU MLP."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def wide_mlp() -> nn.Module:
    """Same parameter names as :func:`small_mlp`, different sizes."""
    return nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 6), nn.ReLU(), nn.Linear(6, 3))


def small_cnn() -> nn.Module:
    """1x8x8 -> Conv2d(3, 3x3) -> BatchNorm2d -> ReLU -> MaxPool2d(2) -> Flatten -> Linear(4)."""
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(27, 4))  # fmt: skip


def not_a_module() -> int:
    return 42


def broken() -> nn.Module:
    raise RuntimeError("factory exploded")


def residual_cnn() -> nn.Module:
    """1x5x5 -> conv -> ReLU -> a basic block (``out += identity``) -> global average pooling -> linear(3)."""
    from tests._models import BasicBlockNet

    return BasicBlockNet(0, pool="adaptive").float()
