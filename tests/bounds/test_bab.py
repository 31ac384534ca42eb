"""Branch and bound: the anytime interval [lower, upper] always contains the true maximum (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeldiff.bounds import make_bounder
from modeldiff.bounds import bab
from modeldiff.bounds.bab import branch_and_bound_box
from modeldiff.errors import BoundError
from modeldiff.search import evaluate
from tests._models import ResMLP, mlp, perturbed, pruned


def _grid_max(a, b, lo, hi, divergence, output_index, n=161):
    xs = torch.linspace(0, 1, n, dtype=torch.float64)
    g = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    pts = lo + (hi - lo) * g
    return float(evaluate(a, b, pts, divergence, output_index).max())


@pytest.mark.parametrize("kind", ["mlp", "pruned", "residual"])
@pytest.mark.parametrize("method", ["diff", "crown"])
@settings(max_examples=3, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), divergence=st.sampled_from(["delta", "linf", "l1"]))
def test_interval_contains_grid_maximum(method, kind, seed, divergence):
    a = ResMLP(2, 8, 3, seed) if kind == "residual" else mlp([2, 8, 8, 3], seed, scale=2.0)
    b = pruned(a, 1 / 3, seed + 1) if kind == "pruned" else perturbed(a, 0.05, seed + 1)
    lo = torch.tensor([[-1.0, -0.5]], dtype=torch.float64)
    hi = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    bounder, used = make_bounder(a, b, (2,), method)
    assert used == method
    out = 0 if divergence == "delta" else None
    result = branch_and_bound_box(a, b, bounder, lo, hi, divergence, output_index=out, tolerance=1e-2,
                                  max_nodes=400, time_budget_s=20)
    grid = _grid_max(a, b, lo[0], hi[0], divergence, out)
    assert result.lower <= grid + 1e-9 or result.lower <= result.upper  # lower is a value at a point
    assert result.upper >= grid - 1e-9, f"certified {result.upper} below the grid maximum {grid}"
    assert result.upper <= result.initial_upper + 1e-12
    x = result.witness.unsqueeze(0)
    assert float(evaluate(a, b, x, divergence, out)[0]) == pytest.approx(result.lower, abs=1e-12)
    assert ((x >= lo - 1e-12) & (x <= hi + 1e-12)).all()


def test_tightens_and_converges_on_a_small_pair():
    a = mlp([2, 6, 2], 3, scale=2.0)
    b = perturbed(a, 0.05, 4)
    lo = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    hi = -lo
    bounder, _ = make_bounder(a, b, (2,), "diff")
    result = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=1e-3, max_nodes=5000, time_budget_s=60)
    assert result.status == "converged"
    assert result.upper <= result.lower * (1 + 1e-3) + 1e-12
    assert result.upper < result.initial_upper


def test_threshold_decides_and_budget_keeps_the_interval_valid():
    a = mlp([2, 6, 2], 5, scale=2.0)
    b = perturbed(a, 0.05, 6)
    lo, hi = torch.full((1, 2), -1.0, dtype=torch.float64), torch.full((1, 2), 1.0, dtype=torch.float64)
    bounder, _ = make_bounder(a, b, (2,), "diff")
    grid = _grid_max(a, b, lo[0], hi[0], "linf", None)
    high = branch_and_bound_box(a, b, bounder, lo, hi, "linf", threshold=grid * 2, max_nodes=5000)
    assert high.status == "proven" and high.proven is True
    low = branch_and_bound_box(a, b, bounder, lo, hi, "linf", threshold=grid * 0.5, max_nodes=5000)
    assert low.status == "disproven" and low.proven is False
    tiny = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=0.0, max_nodes=3)
    assert tiny.status == "node-limit"
    assert tiny.lower <= grid + 1e-12 <= tiny.upper + 2e-12


def test_identical_models_certify_zero():
    a = mlp([3, 5, 5, 2], 7)
    bounder, _ = make_bounder(a, a, (3,), "diff")
    lo, hi = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    result = branch_and_bound_box(a, a, bounder, lo, hi, "linf")
    assert result.initial_upper == 0.0 and result.upper == 0.0 and result.status == "converged"


def test_seed_witness_sets_the_lower_bound_and_must_lie_in_the_box():
    a = mlp([2, 6, 2], 3, scale=2.0)
    b = perturbed(a, 0.05, 4)
    lo, hi = torch.full((1, 2), -1.0, dtype=torch.float64), torch.full((1, 2), 1.0, dtype=torch.float64)
    bounder, _ = make_bounder(a, b, (2,), "diff")
    corner = hi[0].clone()
    seeded = branch_and_bound_box(a, b, bounder, lo, hi, "linf", max_nodes=1, witness=corner)
    assert seeded.lower >= float(evaluate(a, b, corner.unsqueeze(0), "linf")[0])
    with pytest.raises(BoundError, match="the seed witness lies outside the box"):
        branch_and_bound_box(a, b, bounder, lo, hi, "linf", witness=hi[0] + 1)


def _sampled_max(a, b, lo, hi, divergence, output_index, n=60_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, lo.shape[-1], dtype=torch.float64, generator=g)
    u[: n // 4] = u[: n // 4].round()  # corners too
    return float(evaluate(a, b, lo + (hi - lo) * u, divergence, output_index).max())


@pytest.mark.parametrize("stalled", [False, True])
@pytest.mark.parametrize("cut_gain", [0.0, 0.5, math.inf])
def test_children_cover_their_parent_and_bound_each_child(monkeypatch, cut_gain, stalled):
    monkeypatch.setattr(bab, "CUT_GAIN", cut_gain)
    # stalled: every box counts as not improved by its candidates and gets a lookahead along every dimension
    monkeypatch.setattr(bab, "STALL_GAIN", math.inf if stalled else -math.inf)
    monkeypatch.setattr(bab, "STALL_MARGIN", math.inf)  # and its best cut is always kept
    a = mlp([4, 10, 10, 2], 11, scale=2.0)
    b = perturbed(a, 0.05, 12)
    bounder, _ = make_bounder(a, b, (4,), "diff")
    objective = bab._Objective(bounder, "linf", None, None)
    g = torch.Generator().manual_seed(1)
    shift = torch.zeros(5, 4, dtype=torch.float64)
    shift[:, 0] = 2.0 * torch.arange(5)  # disjoint parents, so that each child has one
    lo = -torch.rand(5, 4, dtype=torch.float64, generator=g) + shift
    hi = torch.rand(5, 4, dtype=torch.float64, generator=g) + shift
    up, states = objective(lo, hi)
    c_lo, c_hi, c_up, c_states, bounded, c_own, c_fresh = bab._children(objective, lo, hi, states, up)
    assert bounded == 5 * 2 * (bab.LOOKAHEAD_DIMS + (4 if stalled else 0)) and len(c_states) == c_lo.shape[0]
    if cut_gain == 0.0 and not stalled:
        assert c_lo.shape[0] == 20  # every box cut into quarters
        assert not c_fresh.any()  # each bounded as the two halves it is the intersection of
    if cut_gain == math.inf or stalled:
        assert c_lo.shape[0] == 10
        assert c_fresh.all()
    # each child lies in exactly one parent, and the children of a parent tile it
    inside = ((c_lo.unsqueeze(1) >= lo - 1e-15) & (c_hi.unsqueeze(1) <= hi + 1e-15)).all(-1)  # [children, parents]
    assert (inside.sum(dim=1) == 1).all()
    owner = inside.int().argmax(dim=1)
    vol = (c_hi - c_lo).prod(dim=1)
    for p in range(5):
        assert float(vol[owner == p].sum()) == pytest.approx(float((hi[p] - lo[p]).prod()), rel=1e-12)
    for i in range(c_lo.shape[0]):
        truth = _sampled_max(a, b, c_lo[i], c_hi[i], "linf", None, n=4000, seed=i)
        assert float(c_up[i]) >= truth - 1e-12, f"child {i}: bound {float(c_up[i])} below a sampled {truth}"
        assert float(c_up[i]) <= float(up[owner[i]]) + 1e-15
    if stalled:  # each box was cut along the dimension whose halves' own bounds sum lowest, among all four
        for p in range(5):
            kids = torch.nonzero(owner == p).flatten()
            total = float(c_own[kids].sum())
            for d in range(4):
                l1, h1, l2, h2 = bab._split(lo[p : p + 1], hi[p : p + 1], torch.tensor([d]))
                u, _ = objective(torch.cat([l1, l2]), torch.cat([h1, h2]), states[p : p + 1].repeat(2, 1, 1))
                assert total <= float(u.sum()) + 1e-12


def test_refresh_bounds_quarters_as_they_are(monkeypatch):
    """A quarter inherits the bounds of the two halves it is cut from; bounded as it is, its bound is no larger
    and still above every sampled value."""
    monkeypatch.setattr(bab, "CUT_GAIN", 0.0)  # every box cut into quarters
    monkeypatch.setattr(bab, "STALL_GAIN", -math.inf)
    a = mlp([3, 12, 12, 2], 5, scale=2.0)
    b = perturbed(a, 0.05, 6)
    bounder, _ = make_bounder(a, b, (3,), "diff")
    objective = bab._Objective(bounder, "delta", 0, None)
    lo, hi = torch.full((1, 3), -1.0, dtype=torch.float64), torch.full((1, 3), 1.0, dtype=torch.float64)
    up, states = objective(lo, hi)
    c_lo, c_hi, c_up, c_states, _, c_own, c_fresh = bab._children(objective, lo, hi, states, up)
    assert not c_fresh.any()
    r_up, r_states, r_own, bounded = bab._refresh(objective, c_lo, c_hi, c_up, c_states, c_own, ~c_fresh)
    assert bounded == c_lo.shape[0] and r_states.shape == c_states.shape
    assert (r_up <= c_up).all() and (r_up < c_up).any()
    for i in range(c_lo.shape[0]):
        truth = _sampled_max(a, b, c_lo[i], c_hi[i], "delta", 0, n=4000, seed=i)
        assert float(r_up[i]) >= truth - 1e-12 and float(r_own[i]) >= truth - 1e-12


@pytest.mark.parametrize("cut_gain", [0.0, 0.5])
def test_interval_contains_sampled_maximum_in_three_dimensions(monkeypatch, cut_gain):
    monkeypatch.setattr(bab, "CUT_GAIN", cut_gain)
    for seed in (21, 22):
        a = mlp([3, 8, 8, 2], seed, scale=2.0)
        b = perturbed(a, 0.05, seed + 1)
        lo, hi = torch.full((1, 3), -1.0, dtype=torch.float64), torch.full((1, 3), 1.0, dtype=torch.float64)
        bounder, _ = make_bounder(a, b, (3,), "diff")
        result = branch_and_bound_box(a, b, bounder, lo, hi, "delta", output_index=1, tolerance=1e-3,
                                      max_nodes=600, time_budget_s=30, search_every=0)
        truth = _sampled_max(a, b, lo[0], hi[0], "delta", 1)
        assert result.upper >= truth - 1e-12, f"certified {result.upper} below a sampled {truth}"
        assert result.upper < result.initial_upper


def test_wider_lookahead_is_kept_to_few_varying_dimensions(monkeypatch):
    """A stalled box gets a lookahead along every varying dimension only where there are few of them: along all
    561 of HAR's inputs, a batch of stalled boxes ran out of memory."""
    monkeypatch.setattr(bab, "STALL_GAIN", math.inf)  # every box counts as stalled
    calls = []
    original = bab._wider_lookahead
    monkeypatch.setattr(bab, "_wider_lookahead", lambda *args: calls.append(1) or original(*args))
    a = mlp([40, 8, 2], 3, scale=2.0)
    b = perturbed(a, 0.05, 4)
    bounder, _ = make_bounder(a, b, (40,), "diff")
    lo, hi = torch.zeros(1, 40, dtype=torch.float64), torch.full((1, 40), 0.1, dtype=torch.float64)
    assert 40 > bab.STALL_MAX_DIMS
    wide = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=0.0, max_nodes=30, time_budget_s=None)
    assert not calls and wide.nodes >= 30
    few = hi.clone()
    few[0, 3:] = 0.0  # three varying dimensions
    branch_and_bound_box(a, b, bounder, lo, few, "linf", tolerance=0.0, max_nodes=30, time_budget_s=None)
    assert calls
