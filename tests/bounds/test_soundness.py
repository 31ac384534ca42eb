"""Soundness, property-based, in float64: no point of a region exceeds the certified upper bound.

For random pairs of small MLPs and CNNs (independent pairs and nearly identical pairs), random regions, every
divergence and every method, the divergence is evaluated at uniform samples, box corners and the end points of a
short projected-gradient ascent, and compared with the certificate.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeldiff
from modeldiff.divergences import DIVERGENCES, get_divergence
from modeldiff.regions import ball
from tests._models import BasicBlockNet, ResMLP, SmallCNN, mlp, perturbed, pruned

METHOD_EXAMPLES = {"ibp": 8, "crown": 10, "alpha-crown": 3, "diff": 25}
TOL = 1e-9


def _pgd(objective, region, starts: torch.Tensor, steps: int = 25) -> torch.Tensor:
    """Sign-gradient ascent of ``objective(x) -> [B]`` from ``starts`` ``[R, N, ...]``, projected into the region."""
    x = starts.clone()
    width = (region.upper - region.lower).unsqueeze(0)
    step = width / 4
    for _ in range(steps):
        x.requires_grad_(True)
        val = objective(x.flatten(0, 1)).sum()
        (g,) = torch.autograd.grad(val, x)
        with torch.no_grad():
            x = region.project(x + step * g.sign())
            step = step * 0.85
    return x.detach()


def _candidates(region, objective, seed: int) -> torch.Tensor:
    """Samples, corners and PGD end points: ``[M, N, ...]``."""
    g = torch.Generator().manual_seed(seed)
    samples = region.sample(300, generator=g)
    corners = region.corners(max_corners=64, generator=g)
    starts = torch.cat([region.midpoints.unsqueeze(0), region.sample(3, generator=g)])
    ascended = _pgd(objective, region, starts)
    return torch.cat([samples, corners, ascended, region.midpoints.unsqueeze(0)])


def _pair(kind: str, seed: int, nearly_same: bool):
    """Two models: ``cnn`` (residual CNNs), ``resmlp`` (a residual MLP), ``relu`` or ``tanh`` (MLPs), ``pruned``
    (an MLP and a pruned copy)."""
    if kind == "cnn":  # odd seeds: a ResNet-style basic block with global average pooling
        make = SmallCNN if seed % 2 == 0 else (lambda s: BasicBlockNet(s, pool="mean"))
        a = make(seed)
        b = perturbed(a, 0.05, seed + 1) if nearly_same else make(seed + 1)
        return a, b, (1, 6, 6) if seed % 2 == 0 else (1, 5, 5)
    g = torch.Generator().manual_seed(seed)
    d_in = int(torch.randint(2, 5, (1,), generator=g))
    hidden = int(torch.randint(3, 9, (1,), generator=g))
    k = int(torch.randint(2, 5, (1,), generator=g))
    if kind == "resmlp":
        a = ResMLP(d_in, hidden, k, seed)
        b = perturbed(a, 0.05, seed + 1) if nearly_same else ResMLP(d_in, hidden, k, seed + 7)
        return a, b, (d_in,)
    depth = int(torch.randint(1, 3, (1,), generator=g))
    sizes = [d_in] + [hidden] * depth + [k]
    act = torch.nn.Tanh if kind == "tanh" else torch.nn.ReLU
    a = mlp(sizes, seed, act=act, scale=2.0)
    if kind == "pruned":  # B: A (or a perturbed copy) with about a third of its hidden neurons removed (zero rows)
        return a, pruned(a if nearly_same else perturbed(a, 0.05, seed + 2), 1 / 3, seed + 1), (d_in,)
    b = perturbed(a, 0.05, seed + 1) if nearly_same else mlp(sizes, seed + 7, act=act, scale=2.0)
    return a, b, (d_in,)


def _check(a, b, shape, divergence, method, eps, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand((3, *shape), generator=g, dtype=torch.float64) * 2 - 1
    region = ball(centers, eps, domain=(-1.0, 1.0))
    result = modeldiff.bound(a, b, region, divergence=divergence, method=method, alpha_iterations=5)
    assert result.method == method
    assert result.upper.shape == (3,)
    assert not torch.isnan(result.upper).any()
    div = get_divergence(divergence)
    n = len(region)

    if divergence == "top1":
        lab = result.agree_label
        proven = result.upper == 0

        def margin(x):  # > 0 somewhere means A or B leaves label `lab` there
            ya, yb = a(x), b(x)
            r = x.shape[0] // n
            c = lab.repeat(r)
            worst = []
            for y in (ya, yb):
                own = y.gather(1, c.unsqueeze(1))
                y_other = y.scatter(1, c.unsqueeze(1), float("-inf"))
                worst.append((y_other - own).amax(dim=1))
            return torch.maximum(*worst)

        xs = _candidates(region, margin, seed)
        with torch.no_grad():
            m = margin(xs.flatten(0, 1)).view(xs.shape[0], n).amax(dim=0)
        assert not (proven & (m >= 0)).any(), f"agreement certified but labels leave {lab.tolist()}: {m.tolist()}"
        return

    def value(x):
        v = div(a(x), b(x))
        return v.abs().amax(dim=1) if divergence == "delta" else v

    xs = _candidates(region, value, seed)
    with torch.no_grad():
        ya, yb = a(xs.flatten(0, 1)), b(xs.flatten(0, 1))
        vals = value(xs.flatten(0, 1)).view(xs.shape[0], n)
        worst = vals.amax(dim=0)
        assert (worst <= result.upper + TOL * (1 + result.upper.abs())).all(), (
            f"{divergence}/{method}: found {worst.tolist()} above certified {result.upper.tolist()}"
        )
        if result.delta_lower is not None:
            d = (ya - yb).view(xs.shape[0], n, -1)
            assert (d <= result.delta_upper + TOL).all() and (d >= result.delta_lower - TOL).all()


def _kinds(method: str, divergence: str) -> list[str]:
    if method == "diff":  # affine layers and ReLUs only (residual connections included)
        return ["relu", "relu", "pruned", "cnn", "resmlp"]
    if divergence == "tv":  # auto_LiRPA's tanh set-up costs seconds per node; tv traces two graphs
        return ["relu", "relu", "pruned", "cnn", "resmlp"]
    return ["relu", "relu", "pruned", "tanh", "cnn", "resmlp"]


@pytest.mark.parametrize("method", list(METHOD_EXAMPLES))
@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_certified_bound_is_never_exceeded(divergence, method):
    @settings(
        max_examples=METHOD_EXAMPLES[method],
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        seed=st.integers(0, 10_000),
        kind=st.sampled_from(_kinds(method, divergence)),
        nearly_same=st.booleans(),
        eps=st.sampled_from([0.0, 0.01, 0.1, 0.3, 1.0]),
    )
    def run(seed, kind, nearly_same, eps):
        a, b, shape = _pair(kind, seed, nearly_same)
        _check(a, b, shape, divergence, method, eps, seed)

    run()


def test_identical_models_bound_linf_by_zero_on_points():
    a = mlp([3, 6, 2], 0)
    centers = torch.rand(4, 3, dtype=torch.float64)
    result = modeldiff.bound(a, a, ball(centers, 0.0), "linf", "crown")
    assert torch.allclose(result.upper, torch.zeros(4, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("kind", ["relu", "pruned", "resmlp"])
@pytest.mark.parametrize("seed", range(4))
def test_differential_forward_mode_intermediate_bounds_are_sound(seed, kind):
    from modeldiff.bounds.diff import DiffBounder

    a, b, shape = _pair(kind, seed, nearly_same=bool(seed % 2))
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand((4, *shape), generator=g, dtype=torch.float64) * 2 - 1
    hi = lo + 0.3
    lb, ub = DiffBounder(a, b, shape, intermediate="forward").delta_bounds(lo, hi)
    x = lo + (hi - lo) * torch.rand((500, *lo.shape), generator=g, dtype=torch.float64)
    with torch.no_grad():
        d = (a(x.flatten(0, 1)) - b(x.flatten(0, 1))).view(500, 4, -1)
    assert (d <= ub + 1e-9).all() and (d >= lb - 1e-9).all()
