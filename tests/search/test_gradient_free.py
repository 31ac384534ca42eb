"""The gradient-free fallback: step-function models, explicit random / square searches."""

from __future__ import annotations

import pytest
import torch

from modeldiff.regions import box
from modeldiff.search import evaluate, search
from tests.search._pairs import linear, quantised

F64 = torch.float64


def _pair(dim: int):
    g = torch.Generator().manual_seed(dim)
    wa = torch.randn(2, dim, generator=g, dtype=F64)
    wb = wa + 0.3 * torch.randn(2, dim, generator=g, dtype=F64)
    return quantised(wa), quantised(wb)


@pytest.mark.parametrize("dim, global_mode", [(3, "auto"), (24, "off")])
def test_fallback_engages_on_zero_gradients(dim, global_mode):
    a, b = _pair(dim)
    region = box(torch.zeros(2, dim, dtype=F64), torch.ones(2, dim, dtype=F64) * 0.5)
    x = region.midpoints.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((a(x) - b(x)).abs().sum(), x)
    assert (grad == 0).all()  # the premise: no gradient anywhere we look
    res = search(a, b, region, "linf", restarts=3, steps=40, global_mode=global_mode)
    assert res.settings["fallback"] is True
    assert res.optimizer == "square"
    assert (res.found > 0).all()
    assert torch.equal(res.found, evaluate(a, b, res.witnesses, "linf"))
    assert bool(region.contains(res.witnesses).all())


def test_no_fallback_when_gradients_exist():
    a = linear(torch.ones(2, 4))
    b = linear(torch.zeros(2, 4))
    res = search(a, b, box(torch.zeros(1, 4, dtype=F64), torch.ones(1, 4, dtype=F64)), "linf",
                 restarts=2, steps=5, global_mode="off")
    assert res.settings["fallback"] is False and res.optimizer == "apgd"
    assert float(res.found[0]) == 4.0


@pytest.mark.parametrize("optimizer", ["random", "square"])
def test_explicit_gradient_free_optimizers(optimizer):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 12, generator=g, dtype=F64)
    a, b = linear(w), linear(-w)
    region = box(-torch.ones(3, 12, dtype=F64), torch.ones(3, 12, dtype=F64))
    res = search(a, b, region, "linf", restarts=4, steps=400, optimizer=optimizer, global_mode="off")
    assert res.optimizer == optimizer and res.settings["fallback"] is False
    best = 2 * w.abs().sum()
    assert (res.found > 0.5 * best).all() and (res.found <= best + 1e-12).all()
    if optimizer == "square":  # a local search reaches the corner
        assert torch.allclose(res.found, best.expand(3), rtol=1e-9)
