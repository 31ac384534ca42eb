"""The auto_LiRPA adapter: one test per compatibility patch, version gating, global state, and error mapping."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import modeldiff
from modeldiff import _lirpa
from modeldiff.errors import UnsupportedModelError
from modeldiff.graph import ComparisonGraph, DeltaNet
from modeldiff.loading import ScriptedModule, load_model
from modeldiff.regions import ball
from tests._models import mlp

LEGACY = _lirpa.needs_legacy_patches(_lirpa.installed_version())
legacy_only = pytest.mark.skipif(not LEGACY, reason="the installed auto_LiRPA needs no compatibility patches")


@pytest.fixture(scope="module")
def lirpa():
    if _lirpa.installed_version() is None:
        pytest.skip("auto_LiRPA is not installed")
    return _lirpa.load()


# --- version gating ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.3", True), ("0.3.1", True), ("0.3.0.post1", True), ("0.2.9", True), ("0.6.0", False), ("0.4.0", False),
     ("1.0", False), (None, False), ("", False), ("garbage", False), ("0", False)],
)  # fmt: skip
def test_needs_legacy_patches(version, expected):
    assert _lirpa.needs_legacy_patches(version) is expected


def test_load_is_cached(lirpa):
    assert _lirpa.load() is lirpa
    assert lirpa.version == _lirpa.installed_version()
    for name in ("BoundedModule", "BoundedTensor", "PerturbationLpNorm"):
        assert callable(getattr(lirpa, name))


@legacy_only
def test_all_patches_applied_on_legacy_release(lirpa):
    assert set(_lirpa.applied_patches()) == set(_lirpa.PATCHES) == {"opset", "node_getitem", "arraysetops",
                                                                     "named_members"}  # fmt: skip


@legacy_only
def test_patches_are_idempotent(lirpa):
    """Each patch checks that its attribute is really missing: once applied (or when present), it is a no-op."""
    assert _lirpa.PATCHES["opset"]() is False
    assert _lirpa.PATCHES["node_getitem"]() is False
    assert _lirpa.PATCHES["arraysetops"]() is False
    assert _lirpa.PATCHES["named_members"](lirpa.BoundedModule) is False


# --- the patches, one test each ----------------------------------------------------------------------------------


@legacy_only
def test_patch_opset_sets_exporter_globals(lirpa):
    import torch.onnx.symbolic_helper as helper
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    saved = GLOBALS.export_onnx_opset_version
    try:
        helper._set_opset_version(12)
        assert GLOBALS.export_onnx_opset_version == 12
        helper._set_opset_version(13)
        assert GLOBALS.export_onnx_opset_version == 13
    finally:
        GLOBALS.export_onnx_opset_version = saved


def _traced_graph():
    def f(x):
        return x * 2.5 + torch.ones(3, dtype=torch.float64).sum(dim=0)

    return torch.jit.trace(f, torch.randn(3, dtype=torch.float64)).graph


@legacy_only
def test_patch_node_getitem(lirpa):
    checked = 0
    kinds = set()
    for node in _traced_graph().nodes():
        for key in node.attributeNames():
            expected = getattr(node, node.kindOf(key))(key)
            got = node[key]
            kinds.add(node.kindOf(key))
            if isinstance(expected, torch.Tensor):
                assert torch.equal(got, expected)
            else:
                assert got == expected
            checked += 1
    assert checked >= 2
    assert "t" in kinds  # a tensor constant (2.5) was read through node[...]


@legacy_only
def test_patch_arraysetops(lirpa):
    import numpy.lib.arraysetops as arraysetops

    assert arraysetops.isin([1, 2, 3, 4], [2, 4]).tolist() == [False, True, False, True]
    assert arraysetops.isin(np.array([[1, 5], [3, 2]]), [2, 3], invert=True).tolist() == [[True, True], [False, False]]
    if "arraysetops" in _lirpa.applied_patches():  # the shim re-exports numpy's own isin
        assert arraysetops.isin is np.isin


def test_patch_named_members(lirpa):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    bm = _lirpa.bounded_module(net, torch.zeros(1, 3, dtype=torch.float64))
    with_dups = list(bm.named_parameters(remove_duplicate=False))
    without = list(bm.named_parameters())
    assert [n for n, _ in with_dups] == [n for n, _ in without]
    assert len(without) == 4
    assert sorted(p.numel() for _, p in without) == sorted(p.numel() for p in net.parameters())
    list(bm.named_buffers(remove_duplicate=False))
    # the torch-2 keyword itself, on a member reported twice
    shared = nn.Parameter(torch.zeros(2))

    def members(module):
        return [("p", shared), ("q", shared), ("none", None)] if module is bm else []

    assert [n for n, _ in bm._named_members(members, remove_duplicate=True)] == ["p"]
    assert [n for n, _ in bm._named_members(members, remove_duplicate=False)] == ["p", "q"]
    assert [n for n, _ in bm._named_members(members, prefix="m", recurse=False)] == ["m.p"]


# --- global state --------------------------------------------------------------------------------------------------


_STATE_SCRIPT = textwrap.dedent(
    """
    import logging, sys, warnings
    import numpy, torch  # third-party imports may add filters of their own; modeldiff must add none
    # no logging configured (auto_LiRPA's logging.basicConfig would add a root handler), a filter of the user's
    warnings.simplefilter("error", UserWarning)
    root = logging.getLogger()
    handlers, level, filters = list(root.handlers), root.level, list(warnings.filters)
    import modeldiff
    from modeldiff import _lirpa
    assert "auto_LiRPA" not in sys.modules, "import modeldiff must not import auto_LiRPA"
    _lirpa.load()
    assert "auto_LiRPA" in sys.modules
    assert root.handlers == handlers, (root.handlers, handlers)
    assert root.level == level, (root.level, level)
    assert warnings.filters == filters, [f for f in warnings.filters if f not in filters]
    bm = _lirpa.bounded_module(torch.nn.Linear(3, 2).double(), torch.zeros(1, 3, dtype=torch.float64))
    _lirpa.compute_bounds(bm, torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), "crown")
    assert root.handlers == handlers and root.level == level and warnings.filters == filters
    print("OK")
    """
)


def test_load_leaves_logging_and_warnings_alone():
    """In a fresh interpreter, since ``load`` is cached."""
    proc = subprocess.run([sys.executable, "-c", _STATE_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_default_dtype_restored(lirpa):
    saved = torch.get_default_dtype()
    bm = _lirpa.bounded_module(nn.Linear(3, 2).double(), torch.zeros(1, 3, dtype=torch.float64))
    _lirpa.compute_bounds(bm, torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64), "ibp")
    assert torch.get_default_dtype() == saved


# --- conv_mode and residual adds ----------------------------------------------------------------------------------


class Residual(nn.Module):
    """``h = relu(l1(x)); l2(h) + h``: a 2-D Add of two perturbed tensors."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(3, 6).double()
        self.l2 = nn.Linear(6, 6).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l2(h) + h


def test_conv_mode_is_matrix(lirpa):
    assert _lirpa.BOUND_OPTS["conv_mode"] == "matrix"
    bm = _lirpa.bounded_module(Residual(0), torch.zeros(2, 3, dtype=torch.float64))
    assert bm.bound_opts["conv_mode"] == "matrix"


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_residual_add_bounds_are_sound(lirpa, method):
    model = Residual(1)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 3, generator=g, dtype=torch.float64)
    lower, upper = centers - 0.3, centers + 0.3
    bm = _lirpa.bounded_module(model, centers)
    lb, ub = _lirpa.compute_bounds(bm, lower, upper, method)
    assert lb.shape == ub.shape == (3, 6)
    assert torch.isfinite(lb).all() and torch.isfinite(ub).all()
    samples = lower + (upper - lower) * torch.rand(2000, 3, 3, generator=g, dtype=torch.float64)
    corners = torch.tensor([[(i >> j) & 1 for j in range(3)] for i in range(8)], dtype=torch.float64)
    samples = torch.cat([samples, lower + (upper - lower) * corners.unsqueeze(1)])
    with torch.no_grad():
        values = model(samples.reshape(-1, 3)).reshape(samples.shape[0], 3, 6)
    assert (values >= lb - 1e-9).all() and (values <= ub + 1e-9).all()
    # not vacuous: the bounds are within a modest factor of the sampled range
    assert ((ub - lb) <= 20 * (values.amax(0) - values.amin(0)) + 1e-6).all()


def test_residual_pair_through_bound(lirpa):
    a, b = Residual(2), Residual(3)
    region = ball(torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64), eps=0.2)
    result = modeldiff.bound(a, b, region, divergence="linf", method="crown")
    g = ComparisonGraph(a, b, "linf", input_shape=(3,))
    samples = region.sample(1000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        values = g(samples.reshape(-1, 3)).reshape(1000, 4)
    assert (values <= result.upper + 1e-9).all()


# --- errors: unsupported ops and TorchScript ------------------------------------------------------------------------


class _Head(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.lin = nn.Linear(3, 3).double()
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x))


def _row_max(y):
    return y - y.max(dim=1, keepdim=True).values


@legacy_only
def test_unsupported_op_named(lirpa):
    """``x.max(dim=1)`` traces to ReduceMax, which auto_LiRPA 0.3 cannot bound with CROWN."""
    x = torch.zeros(2, 3, dtype=torch.float64)
    bm = _lirpa.bounded_module(_Head(_row_max), x)
    with pytest.raises(UnsupportedModelError, match=r"ReduceMax") as info:
        _lirpa.compute_bounds(bm, x - 1, x + 1, "crown")
    assert "\n" not in str(info.value)
    assert "crown" in str(info.value)


@legacy_only
def test_unsupported_op_through_bound(lirpa):
    a, b = _Head(_row_max), _Head(_row_max)
    region = ball(torch.zeros(2, 3, dtype=torch.float64), eps=0.1)
    with pytest.raises(UnsupportedModelError, match=r"ReduceMax"):
        modeldiff.bound(a, b, region, divergence="linf", method="crown")


@pytest.mark.parametrize(
    ("fn", "op"),
    # (cumsum is no good here: whether torch exports it as onnx::CumSum, which auto_LiRPA bounds, or as an ATen
    # fallback depends on which symbolic opsets earlier exports in the process have registered)
    [(lambda y: torch.topk(y, 2, dim=1).values, "TopK"), (lambda y: torch.sort(y, dim=1).values, "TopK")],
    ids=["topk", "sort"],
)
def test_unsupported_op_at_conversion_named(lirpa, fn, op):
    with pytest.raises(UnsupportedModelError) as info:
        _lirpa.bounded_module(_Head(fn), torch.zeros(2, 3, dtype=torch.float64))
    assert op in str(info.value)
    assert "\n" not in str(info.value)


_TS_MESSAGE = r"^TorchScript modules cannot be traced for bound propagation; re-export the model with torch\.export " \
              r"\(save as \.pt2\) or to ONNX$"  # fmt: skip


def test_torchscript_refused_with_advice(lirpa):
    net = mlp([3, 5, 2], 0)
    x = torch.zeros(2, 3, dtype=torch.float64)
    for model in (ScriptedModule(torch.jit.trace(net, x)), torch.jit.script(net), DeltaNet(
            ScriptedModule(torch.jit.trace(net, x)), net, (3,))):  # fmt: skip
        with pytest.raises(UnsupportedModelError, match=_TS_MESSAGE):
            _lirpa.bounded_module(model, x)


def test_torchscript_file_through_bound(lirpa, tmp_path):
    net = mlp([3, 5, 2], 1)
    path = tmp_path / "net.ts"
    torch.jit.trace(net, torch.zeros(2, 3, dtype=torch.float64)).save(str(path))
    scripted = load_model(path)
    assert isinstance(scripted, ScriptedModule)
    region = ball(torch.zeros(2, 3, dtype=torch.float64), eps=0.1)
    with pytest.raises(UnsupportedModelError, match=_TS_MESSAGE):
        modeldiff.bound(scripted, net, region, divergence="linf", method="ibp")


class _Normalized(torch.nn.Module):
    """``(x - mean) / std`` with buffers before an MLP, as every .nnet model starts."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.full((3,), 0.25, dtype=torch.float64))
        self.register_buffer("std", torch.full((3,), 2.0, dtype=torch.float64))
        self.net = mlp([3, 6, 2], 4)

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


@pytest.mark.parametrize("batch", [3, 5])
def test_buffers_in_arithmetic_are_bounded_box_by_box(lirpa, batch):
    # auto_LiRPA 0.3 sums a buffer operand's A over the batch: batch 3 divides the 3 features and would mix
    # the boxes silently, batch 5 would raise; both must give the single-box bounds
    model = _Normalized()
    torch.manual_seed(batch)
    x = torch.rand(batch, 3, dtype=torch.float64)
    bm = _lirpa.bounded_module(model, x)
    assert bm._modeldiff_unbatched
    lb, ub = _lirpa.compute_bounds(bm, x - 0.1, x + 0.1, "crown")
    assert lb.shape == (batch, 2)
    single = _lirpa.bounded_module(model, x[:1])
    lb1, ub1 = _lirpa.compute_bounds(single, x[:1] - 0.1, x[:1] + 0.1, "crown")
    assert torch.allclose(ub[:1], ub1) and torch.allclose(lb[:1], lb1)
    samples = x + (torch.rand(500, batch, 3, dtype=torch.float64) * 0.2 - 0.1)
    with torch.no_grad():
        y = model(samples.flatten(0, 1)).view(500, batch, 2)
    assert (y <= ub + 1e-9).all() and (y >= lb - 1e-9).all()
