"""linearize on models loaded from ``.pt2`` files (torch.export): the exported ATen graph is read directly, so the
differential bound applies to exported pairs exactly as to the same pairs as plain modules."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import modeldiff
from modeldiff.linearize import NotLinearizable, linearize
from modeldiff.loading import ExportedModule, load_model
from modeldiff.regions import ball
from tests._models import BasicBlockNet, apply_layers

TOL = 1e-10


class Normalized(nn.Module):
    """``(x - mean) / std`` with buffers, then a small MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("std", torch.rand(4) + 0.5)
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class ViewCNN(nn.Module):
    """Conv, BatchNorm2d, in-place ReLU, ``x.view(x.size(0), -1)`` (a ``sym_size`` node in the graph), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(72, 3)

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        return self.fc(y.view(y.size(0), -1))


class Sigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return (self.fc(x),)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + x


class ResidualMLP(nn.Module):
    """A ReLU output skipping a layer, and the input skipping them all: both carried through ReLU layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc3(torch.relu(self.fc2(h)) + h) - x


class Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * x


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and batch-norm statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), (4,)),
    "normalized": (Normalized, (4,)),
    "cnn": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)), (1, 8, 8)),
    "batchnorm1d": (lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.3),
                                          nn.Linear(5, 3)), (4,)),  # fmt: skip
    "view_cnn": (ViewCNN, (1, 8, 8)),
    "residual": (Residual, (4,)),
    "residual_mlp": (ResidualMLP, (4,)),
    "resnet_mean": (lambda: BasicBlockNet(0, pool="mean").float(), (1, 5, 5)),
    "resnet_adaptive": (lambda: BasicBlockNet(0, pool="adaptive").float(), (1, 5, 5)),
}


def _build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    factory, shape = MODELS[name]
    torch.manual_seed(seed)  # buffers made in __init__
    return _randomized(factory(), seed), shape


def _save_load(model: nn.Module, shape, path, decompose: bool = False) -> nn.Module:
    """Export with a dynamic batch dimension, save, and load back with :func:`load_model` (float64)."""
    x = torch.randn(3, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        if decompose:  # core ATen: addmm + permute, _native_batch_norm_legit_no_training + getitem, clone, view
            program = program.run_decompositions()
        torch.export.save(program, str(path))
    loaded = load_model(path)
    assert isinstance(loaded, ExportedModule)
    return loaded


@pytest.mark.parametrize("decompose", [False, True], ids=["export", "decomposed"])
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_layers_compute_the_model(tmp_path, name, decompose):
    model, shape = _build(name)
    loaded = _save_load(model, shape, tmp_path / f"{name}.pt2", decompose)
    layers = linearize(loaded, shape)
    assert all(layer.weight.dtype == torch.float64 for layer in layers)
    x = torch.randn(11, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        expected = loaded(x)
    assert float((apply_layers(layers, x) - expected).abs().max()) < TOL
    if name == "view_cnn":  # the fx trace of the plain module refuses x.size(0); the exported graph has sym_size
        return
    # the same layers as the plain module's fx trace
    plain = linearize(copy.deepcopy(model).double(), shape)
    assert [tuple(p.weight.shape) for p in plain] == [tuple(q.weight.shape) for q in layers]
    for p, q in zip(plain, layers):
        assert float((p.weight - q.weight).abs().max()) < TOL and float((p.bias - q.bias).abs().max()) < TOL


def test_exported_pair_uses_diff_with_the_plain_pairs_bound(tmp_path):
    a, shape = _build("cnn", 1)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.01)
    pa, pb = _save_load(a, shape, tmp_path / "a.pt2"), _save_load(b, shape, tmp_path / "b.pt2")
    g = torch.Generator().manual_seed(3)
    region = ball(torch.rand((4, *shape), generator=g, dtype=torch.float64), 0.05)
    exported = modeldiff.bound(pa, pb, region, "linf", "auto")
    plain = modeldiff.bound(a.double(), b.double(), region, "linf", "auto")
    assert exported.method == "diff" and plain.method == "diff"
    assert torch.allclose(exported.upper, plain.upper, rtol=0, atol=1e-9)
    found = modeldiff.search(pa, pb, region, "linf", restarts=4, steps=30, seed=0)
    assert (found.found > 0).all()
    assert (found.found <= exported.upper + 1e-9).all(), (found.found, exported.upper)


def test_unsupported_exported_op_is_named_and_auto_falls_back_to_crown(tmp_path):
    a = _randomized(Sigmoid(), 0)
    b = _randomized(Sigmoid(), 1)
    pa, pb = _save_load(a, (4,), tmp_path / "a.pt2"), _save_load(b, (4,), tmp_path / "b.pt2")
    with pytest.raises(NotLinearizable, match=r"aten\.sigmoid"):
        linearize(pa, (4,))
    region = ball(torch.zeros(2, 4, dtype=torch.float64), 0.1)
    assert modeldiff.bound(pa, pb, region, "linf", "auto").method == "crown"


@pytest.mark.parametrize("model, match", [
    (TupleOut(), "output is not the end of the chain"),
    (Product(), "mixes two computed values"),
    (nn.Sequential(nn.Linear(4, 5), nn.MaxPool1d(1), nn.Linear(5, 3)), "max_pool"),
])  # fmt: skip
def test_exported_non_chains_are_refused(tmp_path, model, match):
    loaded = _save_load(_randomized(model, 0), (4,), tmp_path / "m.pt2")
    with pytest.raises(NotLinearizable, match=match):
        linearize(loaded, (4,))


@pytest.mark.parametrize("module", [nn.BatchNorm1d(5), nn.Dropout(0.5)], ids=["batchnorm", "dropout"])
def test_graph_exported_in_training_mode_is_refused(tmp_path, module):
    # the exported graph keeps training=True (and batch norm's statistics updates) whatever eval() says later
    model = nn.Sequential(nn.Linear(4, 5), module, nn.Linear(5, 3)).train()
    loaded = _save_load(model, (4,), tmp_path / "m.pt2")
    with pytest.raises(NotLinearizable, match="training mode|add_"):
        linearize(loaded, (4,))
