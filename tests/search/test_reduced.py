"""The reduced forward of the search (few free input entries of dense ReLU chains) and the stacked forward (small
dense pairs in one product per layer): same outputs as the models."""

from __future__ import annotations

import torch
from torch import nn

from modeldiff.regions import box
from modeldiff.search import search
from modeldiff.search.reduced import ReducedPair, StackedPair
from modeldiff.search.starts import unit_design, unit_to_box
from tests._models import mlp, perturbed

F64 = torch.float64


def _boxes(n: int, d: int, free: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, d, generator=g, dtype=F64)
    hi = lo.clone()
    for i in range(n):
        idx = torch.randperm(d, generator=g)[: free - (i % 2)]  # boxes with different numbers of free entries
        hi[i, idx] = lo[i, idx] + 0.5
    return lo, hi


def test_outputs_match_the_models_on_every_path():
    a = mlp([40, 12, 12, 3], 0)
    b = perturbed(a, 0.05, 1)
    lo, hi = _boxes(5, 40, 4, 2)
    pair = ReducedPair.build(a, b, lo, hi)
    assert pair is not None
    g = torch.Generator().manual_seed(3)
    x = lo + (hi - lo) * torch.rand(3, 5, 40, generator=g, dtype=F64)
    flat = x.reshape(15, 40)
    region_of = torch.arange(15) % 5
    with torch.no_grad():
        ya, yb = pair.outputs(flat, region_of)  # whole blocks of boxes
        assert torch.allclose(ya, a(flat), atol=1e-12) and torch.allclose(yb, b(flat), atol=1e-12)
        ya, yb = pair.outputs(flat[1:8], region_of[1:8])  # arbitrary rows
        assert torch.allclose(ya, a(flat[1:8]), atol=1e-12) and torch.allclose(yb, b(flat[1:8]), atol=1e-12)
        u = unit_design(6, 4, sobol=True, seed=0)
        pts = unit_to_box(u, lo, hi).reshape(30, 40)
        ya, yb = pair.outputs_unit(u)
        assert torch.allclose(ya, a(pts), atol=1e-12) and torch.allclose(yb, b(pts), atol=1e-12)


def test_gradients_flow_to_the_free_entries():
    a = mlp([40, 12, 3], 4)
    lo, hi = _boxes(2, 40, 3, 5)
    pair = ReducedPair.build(a, a, lo, hi)
    x = ((lo + hi) / 2).requires_grad_(True)
    (g_red,) = torch.autograd.grad(pair.outputs(x, torch.arange(2))[0].sum(), x)
    x2 = ((lo + hi) / 2).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(a(x2).sum(), x2)
    free = lo < hi
    assert torch.allclose(g_red[free], g_ref[free], atol=1e-12) and (g_red[~free] == 0).all()


def test_not_used_for_many_free_entries_or_other_models():
    a = mlp([8, 6, 2], 0)
    lo, hi = torch.zeros(1, 8, dtype=F64), torch.ones(1, 8, dtype=F64)
    assert ReducedPair.build(a, a, lo, hi) is None  # every entry free
    hi[0, 2:] = 0.0
    odd = nn.Sequential(nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, 2)).double()
    assert ReducedPair.build(odd, odd, lo, hi) is None


def test_search_with_the_reduced_forward_reports_plain_values(monkeypatch):
    a = mlp([40, 16, 16, 3], 6)
    b = perturbed(a, 0.05, 7)
    lo, hi = _boxes(4, 40, 3, 8)
    region = box(lo, hi)
    res = search(a, b, region, "linf", restarts=3, steps=20, seed=0)
    assert res.settings["reduced_forward"] and res.settings["global_mode"]
    with torch.no_grad():
        plain = (a(res.witnesses) - b(res.witnesses)).abs().amax(dim=1)
    assert torch.equal(res.found, plain) and bool(region.contains(res.witnesses).all())
    monkeypatch.setattr(ReducedPair, "build", classmethod(lambda cls, *args: None))
    off = search(a, b, region, "linf", restarts=3, steps=20, seed=0, n_starts=16384)
    assert not off.settings["reduced_forward"]
    assert torch.allclose(off.found, res.found, rtol=1e-6)  # the same search, up to rounding


# --- the stacked forward (both small networks in one product per layer) ------------------------------------------


def test_stacked_outputs_and_gradients_match_the_models():
    from tests._models import ResMLP

    for a, shape in ((mlp([5, 50, 50, 5], 0), (5,)), (ResMLP(4, 6, 3, 0), (4,))):
        b = perturbed(a, 0.05, 1)
        pair = StackedPair.build(a, b, shape)
        assert pair is not None
        x = torch.rand(7, *shape, generator=torch.Generator().manual_seed(2), dtype=F64).requires_grad_(True)
        ya, yb = pair.outputs(x)
        assert torch.allclose(ya, a(x), atol=1e-12) and torch.allclose(yb, b(x), atol=1e-12)
        (g,) = torch.autograd.grad((ya - yb).sum(), x)
        x2 = x.detach().requires_grad_(True)
        (g_ref,) = torch.autograd.grad((a(x2) - b(x2)).sum(), x2)
        assert torch.allclose(g, g_ref, atol=1e-12)


def test_stacked_outputs_in_chunks_match_the_models():
    from modeldiff.search.reduced import STACKED_CHUNK_ROWS

    a = mlp([5, 20, 3], 3)
    b = perturbed(a, 0.05, 4)
    pair = StackedPair.build(a, b, (5,))
    m = 2 * STACKED_CHUNK_ROWS + 7  # two full chunks and a partial one
    x = torch.rand(m, 5, generator=torch.Generator().manual_seed(5), dtype=F64).requires_grad_(True)
    ya, yb = pair.outputs(x)
    assert ya.shape == (m, 3) and torch.allclose(ya, a(x), atol=1e-12) and torch.allclose(yb, b(x), atol=1e-12)
    (g,) = torch.autograd.grad((ya - yb).sum(), x)
    x2 = x.detach().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((a(x2) - b(x2)).sum(), x2)
    assert torch.allclose(g, g_ref, atol=1e-12)


def test_stacked_forward_only_for_small_dense_pairs():
    assert StackedPair.build(mlp([300, 200, 2], 0), mlp([300, 200, 2], 1), (300,)) is None  # 60,400 weights
    odd = nn.Sequential(nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, 2)).double()
    assert StackedPair.build(odd, odd, (8,)) is None
    assert StackedPair.build(mlp([4, 6, 2], 0), mlp([4, 7, 2], 0), (4,)) is None  # different shapes


def test_search_with_the_stacked_forward_reports_plain_values(monkeypatch):
    a = mlp([5, 30, 30, 3], 6)
    b = perturbed(a, 0.05, 7)
    g = torch.Generator().manual_seed(8)
    lo = torch.rand(3, 5, generator=g, dtype=F64)
    region = box(lo, lo + 0.3)
    res = search(a, b, region, "linf", restarts=4, steps=30, seed=0, n_starts=4096)
    assert res.settings["stacked_forward"]
    with torch.no_grad():
        plain = (a(res.witnesses) - b(res.witnesses)).abs().amax(dim=1)
    assert torch.equal(res.found, plain) and bool(region.contains(res.witnesses).all())
    assert search(a, b, region, "linf", restarts=2, steps=5).settings["n_starts"] == 16384  # cheap: more starts
    monkeypatch.setattr(StackedPair, "build", classmethod(lambda cls, *args: None))
    off = search(a, b, region, "linf", restarts=4, steps=30, seed=0, n_starts=4096)
    assert not off.settings["stacked_forward"]
    torch.testing.assert_close(res.found, off.found, rtol=1e-6, atol=1e-12)  # the same search, other rounding
