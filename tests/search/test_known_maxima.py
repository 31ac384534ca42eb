"""The search reaches maxima known by construction (within 1%)."""

from __future__ import annotations

import pytest
import torch

from modeldiff.regions import ball, box
from modeldiff.search import evaluate, search
from tests._models import mlp
from tests.search._pairs import PlantedBump, linear, linear_box_max

F64 = torch.float64


def test_linear_pair_maximum_at_a_corner():
    g = torch.Generator().manual_seed(0)
    d = 50
    wa, wb = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    a, b = linear(wa, 0.3), linear(wb, -0.2)
    lower = torch.rand(4, d, generator=g, dtype=F64) - 1
    upper = lower + torch.rand(4, d, generator=g, dtype=F64)
    res = search(a, b, box(lower, upper), "linf", restarts=3, steps=30)
    expected = linear_box_max(wa - wb, 0.5, lower, upper)
    assert torch.allclose(res.found, expected, rtol=1e-12)
    assert res.optimizer == "apgd" and not res.settings["global_mode"]


@pytest.mark.parametrize("divergence", ["delta", "l1", "l2"])
def test_linear_pair_delta_on_one_output(divergence):
    g = torch.Generator().manual_seed(1)
    d = 30
    wa, wb = torch.randn(2, d, generator=g, dtype=F64), torch.randn(2, d, generator=g, dtype=F64)
    a, b = linear(wa), linear(wb)
    region = ball(torch.rand(3, d, generator=g, dtype=F64), 0.2, domain=(0.0, 1.0))
    if divergence == "delta":
        idx = torch.tensor([0, 1, 1])
        res = search(a, b, region, "delta", output_index=idx, restarts=2, steps=20)
        expected = linear_box_max((wa - wb)[idx], 0.0, region.lower, region.upper)
        assert torch.allclose(res.found, expected, rtol=1e-12)
        assert torch.equal(res.output_index, idx)
    else:  # a convex function of x: its maximum is at a corner; it is at least the per-output maximum
        res = search(a, b, region, divergence, restarts=8, steps=40)
        per_output = torch.stack([linear_box_max((wa - wb)[k], 0.0, region.lower, region.upper) for k in range(2)])
        assert (res.found >= per_output.amax(dim=0) * (1 - 1e-12)).all()


@pytest.mark.parametrize("dim, radius, global_mode", [(2, 0.3, "auto"), (3, 0.4, "auto"), (20, 25.0, "off")])
def test_planted_relu_bump_is_found(dim, radius, global_mode):
    """B = A + a ReLU bump of height h at c: max |A - B| = h, reached only at c."""
    g = torch.Generator().manual_seed(dim)
    a = linear(torch.randn(dim, generator=g, dtype=F64), 0.1)
    center = 0.2 + 0.6 * torch.rand(dim, generator=g, dtype=F64)
    b = PlantedBump(a, center, radius, height=0.7)
    region = box(torch.zeros(1, dim, dtype=F64), torch.ones(1, dim, dtype=F64))
    res = search(a, b, region, "linf", global_mode=global_mode, restarts=4, steps=100)
    assert res.settings["global_mode"] == (global_mode == "auto")
    assert 0.99 * 0.7 <= float(res.found[0]) <= 0.7 + 1e-12


@pytest.mark.parametrize("dim", [2, 20])
def test_top1_flip_in_a_small_corner(dim):
    """A always says class 0; B says class 1 only where mean(x) > 0.97 (a tiny corner of the unit box)."""
    a = linear(torch.zeros(2, dim), torch.tensor([1.0, 0.0]))
    wb = torch.zeros(2, dim, dtype=F64)
    wb[1] = 20.0 / dim
    b = linear(wb, torch.tensor([1.0, -20 * 0.92]))
    region = box(torch.zeros(2, dim, dtype=F64), torch.ones(2, dim, dtype=F64))
    # uniform sampling practically never lands there
    g = torch.Generator().manual_seed(0)
    assert evaluate(a, b, region.sample(200, generator=g).reshape(-1, dim), "top1").sum() == 0 or dim == 2
    res = search(a, b, region, "top1", restarts=4, steps=30)
    assert torch.equal(res.found, torch.ones(2, dtype=F64))
    assert (res.witnesses.mean(dim=1) > 0.97).all()


def test_top1_reports_zero_when_labels_never_differ():
    a = linear(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([5.0, 0.0]))
    b = linear(torch.tensor([[0.5, 0.0], [0.0, 0.0]]), torch.tensor([4.0, 0.0]))
    region = box(-torch.ones(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64))
    res = search(a, b, region, "top1", restarts=3, steps=10)
    assert float(res.found[0]) == 0.0
    assert bool(region.contains(res.witnesses).all())


@pytest.mark.parametrize("seed, divergence", [(0, "linf"), (1, "linf"), (2, "kl"), (3, "tv")])
def test_random_mlps_2d_match_dense_grid(seed, divergence):
    a = mlp([2, 12, 12, 3], seed)
    b = mlp([2, 12, 12, 3], seed + 100)
    region = box(torch.tensor([[-1.0, -0.5]], dtype=F64), torch.tensor([[1.0, 1.5]], dtype=F64))
    gx = torch.linspace(-1.0, 1.0, 401, dtype=F64)
    gy = torch.linspace(-0.5, 1.5, 401, dtype=F64)
    grid_max = evaluate(a, b, torch.cartesian_prod(gx, gy), divergence).max()
    res = search(a, b, region, divergence, restarts=6, steps=60)
    assert float(res.found[0]) >= 0.99 * float(grid_max)


def test_random_mlps_many_dims_beat_sampling():
    a = mlp([8, 16, 16, 4], 7)
    b = mlp([8, 16, 16, 4], 8)
    region = ball(torch.zeros(5, 8, dtype=F64), 0.5)
    g = torch.Generator().manual_seed(0)
    samples = region.sample(2000, generator=g)
    sampled = evaluate(a, b, samples.reshape(-1, 8), "linf").view(2000, 5).amax(dim=0)
    res = search(a, b, region, "linf", restarts=5, steps=50, global_mode="off")
    assert (res.found >= sampled).all()
