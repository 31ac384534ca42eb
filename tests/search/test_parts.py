"""The search's parts: APGD checkpoints, starting designs, objectives, mode selection."""

from __future__ import annotations

import torch

from modeldiff.divergences import get_divergence
from modeldiff.regions import box
from modeldiff.search import search
from modeldiff.search.apgd import apgd_checkpoints
from modeldiff.search.objectives import TOP1_KEEP_A, TOP1_KEEP_B, TOP1_TARGET, RestartPlan, objective, plan_restarts
from modeldiff.search.starts import sobol_points, unit_to_box
from tests.search._pairs import linear

F64 = torch.float64


def test_apgd_checkpoints():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]
    w = apgd_checkpoints(1000)
    assert w[0] == 220 and all(b - a >= 60 for a, b in zip(w, w[1:]))


def test_designs_fill_only_the_free_entries():
    lower = torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]], dtype=F64)
    upper = torch.tensor([[1.0, 1.0, 3.0], [5.0, 6.0, 5.0]], dtype=F64)
    pts = sobol_points(lower, upper, 64, seed=0)
    assert pts.shape == (64, 2, 3)
    assert (pts[:, 0, 1] == 1.0).all() and (pts[:, 1, 0] == 5.0).all() and (pts[:, 1, 2] == 5.0).all()
    assert ((pts >= lower) & (pts <= upper)).all()
    # box 1 has one free entry: it gets the design's first coordinate, spread over the whole interval
    assert pts[:, 1, 1].min() < 5.05 and pts[:, 1, 1].max() > 5.95
    per_box = unit_to_box(torch.full((1, 2, 2), 0.5, dtype=F64), lower, upper)
    assert torch.equal(per_box[0], torch.tensor([[0.5, 1.0, 2.5], [5.0, 5.5, 5.0]], dtype=F64))


def test_top1_margins_are_positive_exactly_on_disagreement():
    div = get_divergence("top1")
    ya = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], dtype=F64)
    yb = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 0.0], [0.0, 3.0, 2.0]], dtype=F64)
    for mode in (TOP1_KEEP_A, TOP1_KEEP_B):
        plan = RestartPlan(torch.full((3,), mode), torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=F64),
                           torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), None)
        loss, value, score = objective(div, plan, ya, yb)
        assert torch.equal(value, torch.tensor([1.0, 0.0, 0.0], dtype=F64))
        assert (loss > 0).tolist() == [True, False, False]
        assert score[0] > 2 > score[1]
    targeted = RestartPlan(torch.full((3,), TOP1_TARGET), torch.zeros(3, dtype=torch.long),
                           torch.ones(3, dtype=F64), torch.tensor([0, 0, 1]), torch.tensor([1, 1, 2]), None)
    loss, _, _ = objective(div, targeted, ya, yb)
    assert (loss > 0).tolist() == [True, False, False]


def test_restart_plans():
    ya = torch.tensor([[0.0, 1.0, 5.0]], dtype=F64)
    yb = torch.tensor([[0.5, 1.0, 2.0]], dtype=F64)
    plan = plan_restarts(get_divergence("linf"), 4, ya, yb, None)
    assert plan.mode[:, 0].tolist() == [0, 1, 1, 1]
    assert (plan.out[1, 0], plan.sign[1, 0]) == (2, 1.0)  # d_2 = +3 is the most promising pair
    top1 = plan_restarts(get_divergence("top1"), 4, ya, yb, None)
    assert top1.mode[:, 0].tolist() == [TOP1_KEEP_A, TOP1_KEEP_B, TOP1_TARGET, TOP1_TARGET]
    assert (int(top1.class_a[2, 0]), int(top1.class_b[2, 0])) == (2, 1)
    assert (int(top1.class_a[3, 0]), int(top1.class_b[3, 0])) == (1, 2)
    idx = plan_restarts(get_divergence("delta"), 3, ya, yb, torch.tensor([0]))
    assert idx.sign[:, 0].tolist() == [0.0, 1.0, 0.0]  # d_0 < 0 at the midpoint: restart 1 tries the + side


def test_global_mode_threshold():
    a, b = linear(torch.ones(1, 17)), linear(torch.zeros(1, 17))
    lower, upper = torch.zeros(1, 17, dtype=F64), torch.ones(1, 17, dtype=F64)
    assert not search(a, b, box(lower, upper), "linf", restarts=1, steps=2).settings["global_mode"]
    upper[0, 16] = 0.0  # 16 free entries
    res = search(a, b, box(lower, upper), "linf", restarts=3, steps=2, n_starts=32)
    assert res.settings["global_mode"] and res.settings["n_starts"] == 32
    assert float(res.found[0]) == 16.0  # the best Sobol points and the ascent reach the corner


def _rare_basin_pair():
    """A - B over [0, 1]^20 is 20 relu(x_0 - 0.9) + relu(1 - x_0): the gradient leads most starts to x_0 = 0
    (value 1); only starts with x_0 near 1 reach the maximum 2 at x_0 = 1."""
    from torch import nn

    a = nn.Sequential(nn.Linear(20, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        a[0].weight.zero_()
        a[0].weight[0, 0], a[0].weight[1, 0] = 1.0, -1.0
        a[0].bias.copy_(torch.tensor([-0.9, 1.0]))
        a[2].weight.copy_(torch.tensor([[20.0, 1.0]]))
        a[2].bias.zero_()
    b = linear(torch.zeros(1, 20))
    return a, b


def test_exploration_finds_a_rare_basin():
    a, b = _rare_basin_pair()
    region = box(torch.zeros(3, 20, dtype=F64), torch.ones(3, 20, dtype=F64))
    res = search(a, b, region, "linf", restarts=2, steps=40, seed=0, explore=15)
    assert res.settings["explore"] == 15 and not res.settings["global_mode"]
    assert torch.allclose(res.found, torch.full((3,), 2.0, dtype=F64))
    assert bool(region.contains(res.witnesses).all())
    again = search(a, b, region, "linf", restarts=2, steps=40, seed=0, explore=15)
    assert torch.equal(res.found, again.found) and torch.equal(res.witnesses, again.witnesses)


def test_exploration_is_skipped_for_short_runs_and_when_off():
    a, b = _rare_basin_pair()
    region = box(torch.zeros(1, 20, dtype=F64), torch.ones(1, 20, dtype=F64))
    assert search(a, b, region, "linf", restarts=2, steps=10, explore=15).settings["explore"] == 0
    assert search(a, b, region, "linf", restarts=2, steps=40, explore=0).settings["explore"] == 0
