"""Branch and bound: the anytime interval [lower, upper] always contains the true maximum (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeldiff.bounds import make_bounder
from modeldiff.bounds.bab import branch_and_bound_box
from modeldiff.errors import BoundError
from modeldiff.search import evaluate
from tests._models import mlp, perturbed


def _grid_max(a, b, lo, hi, divergence, output_index, n=161):
    xs = torch.linspace(0, 1, n, dtype=torch.float64)
    g = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    pts = lo + (hi - lo) * g
    return float(evaluate(a, b, pts, divergence, output_index).max())


@pytest.mark.parametrize("method", ["diff", "crown"])
@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), divergence=st.sampled_from(["delta", "linf", "l1"]))
def test_interval_contains_grid_maximum(method, seed, divergence):
    a = mlp([2, 8, 8, 3], seed, scale=2.0)
    b = perturbed(a, 0.05, seed + 1)
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
