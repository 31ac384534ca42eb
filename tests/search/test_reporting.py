"""Honest reporting: witnesses inside their regions, values equal to a fresh forward pass, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeldiff.divergences import DIVERGENCES
from modeldiff.errors import SearchError
from modeldiff.regions import ball, box
from modeldiff.search import evaluate, search
from tests._models import SmallCNN, mlp, perturbed

F64 = torch.float64


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_witnesses_inside_and_found_is_a_fresh_forward_pass(divergence):
    a = mlp([6, 10, 4], 3)
    b = perturbed(a, 0.3, 4)
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(4, 6, generator=g, dtype=F64) * 1.2 - 0.1  # some centers outside the domain
    region = ball(centers, 0.15, domain=(0.0, 1.0))
    idx = torch.tensor([0, 1, 2, 3]) if divergence == "delta" else None
    res = search(a, b, region, divergence, output_index=idx, restarts=3, steps=15, batch_size=5, n_starts=96)
    assert res.witnesses.shape == (4, 6) and res.found.shape == (4,)
    assert bool(region.contains(res.witnesses).all())
    assert torch.equal(res.found, evaluate(a, b, res.witnesses, divergence, output_index=idx))
    assert res.divergence == divergence
    # the history is the best-so-far per region, and never above what was reported
    assert res.history.shape[1] == 4 and res.history.shape[0] == res.history_steps.shape[0]
    assert (res.history[1:] >= res.history[:-1]).all()
    assert int(res.history_steps[0]) == 0 and int(res.history_steps[-1]) == 15
    assert torch.allclose(res.history[-1], res.found, rtol=1e-9, atol=1e-12)
    assert res.restart_history.shape == (res.history.shape[0], 3, 4)


def test_same_seed_same_result_and_seeds_differ():
    a = mlp([5, 16, 3], 0)
    b = mlp([5, 16, 3], 1)
    region = ball(torch.zeros(3, 5, dtype=F64), 0.8)
    kw = dict(restarts=3, steps=20, global_mode="off")
    r1 = search(a, b, region, "l2", seed=5, **kw)
    r2 = search(a, b, region, "l2", seed=5, **kw)
    assert torch.equal(r1.found, r2.found)
    assert torch.equal(r1.witnesses, r2.witnesses)
    assert torch.equal(r1.history, r2.history)
    r3 = search(a, b, region, "l2", seed=6, **kw)
    assert bool(region.contains(r3.witnesses).all())
    # different random starts (restart 0 starts at the midpoint; its maximum may well be the same corner)
    assert not torch.equal(r1.restart_history[0, 1:], r3.restart_history[0, 1:])
    # the global mode (Sobol scrambling) is seeded too
    g1 = search(a, b, region, "l2", seed=5, restarts=2, steps=10, n_starts=64, global_mode="on")
    g2 = search(a, b, region, "l2", seed=5, restarts=2, steps=10, n_starts=64, global_mode="on")
    assert torch.equal(g1.witnesses, g2.witnesses)


def test_batch_size_does_not_change_validity():
    a = mlp([4, 8, 3], 2)
    b = mlp([4, 8, 3], 3)
    region = ball(torch.zeros(5, 4, dtype=F64), 0.5)
    whole = search(a, b, region, "linf", restarts=4, steps=20, global_mode="off")
    chunked = search(a, b, region, "linf", restarts=4, steps=20, global_mode="off", batch_size=3)
    assert chunked.settings["batch_size"] == 3
    assert torch.allclose(whole.found, chunked.found, rtol=1e-6)


def test_caller_models_untouched_and_dtype_conversion():
    a = mlp([3, 6, 2], 0).float().train()
    b = mlp([3, 6, 2], 1).float().train()
    before = [p.clone() for p in a.parameters()]
    region = box(torch.zeros(2, 3), torch.ones(2, 3) * 0.3)  # float32 region
    res = search(a, b, region, "linf", restarts=2, steps=5)
    assert a.training and b.training
    assert all(torch.equal(p, q) for p, q in zip(before, a.parameters()))
    assert res.witnesses.dtype == F64 and bool(region.contains(res.witnesses).all())
    # a float32 search over a float64 region stays inside the region (bounds are rounded inwards)
    region64 = box(torch.full((1, 3), 0.1, dtype=F64), torch.full((1, 3), 0.1 + 1e-7, dtype=F64))
    res32 = search(a, b, region64, "linf", restarts=2, steps=5, dtype=torch.float32)
    assert res32.witnesses.dtype == torch.float32 and bool(region64.contains(res32.witnesses).all())
    # ... and a box without any float32 number inside is refused
    tiny = box(torch.full((1, 3), 0.1, dtype=F64), torch.full((1, 3), 0.1 + 1e-9, dtype=F64))
    with pytest.raises(SearchError, match=r"expected every box to contain torch.float32 numbers"):
        search(a, b, tiny, "linf", restarts=2, steps=5, dtype=torch.float32)


def test_image_models_and_fixed_entries():
    a = SmallCNN(0)
    b = perturbed(a, 0.05, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 6, 6, generator=g, dtype=F64)
    lower, upper = x.clone(), x.clone()
    upper[:, :, 2:4, 2:4] += 0.2  # only four pixels free: global mode
    region = box(lower, upper)
    res = search(a, b, region, "linf", restarts=3, steps=10)
    assert res.settings["global_mode"] and res.optimizer == "apgd+square"
    assert bool(region.contains(res.witnesses).all())
    assert torch.equal(res.witnesses[:, :, :2], x[:, :, :2])  # fixed entries stay fixed
    full = search(a, b, ball(x, 0.1), "kl", restarts=2, steps=10, optimizer="square")
    assert full.optimizer == "square" and bool(ball(x, 0.1).contains(full.witnesses).all())


def test_evaluate_shapes_and_training_flags():
    a = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5)).double().train()
    b = nn.Linear(2, 3).double()
    x = torch.rand(7, 2, dtype=F64)
    v1 = evaluate(a, b, x, "l1")
    v2 = evaluate(a, b, x, "l1")
    assert v1.shape == (7,) and torch.equal(v1, v2)  # dropout off while evaluating
    assert a.training  # restored
    d = evaluate(a, b, x, "delta", output_index=torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    assert d.shape == (7,) and (d >= 0).all()
    assert evaluate(a, b, x, "top1").shape == (7,)


def test_progress_bar_and_to_dict():
    a = mlp([2, 4, 2], 0)
    b = mlp([2, 4, 2], 1)
    res = search(a, b, box(torch.zeros(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64)), "linf",
                 restarts=2, steps=3, progress=True)
    d = res.to_dict()
    assert d["divergence"] == "linf" and len(d["found"]) == 1 and d["interrupted"] is False
