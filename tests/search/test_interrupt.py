"""Budgets and interrupts: the search stops early and still returns valid witnesses."""

from __future__ import annotations

import torch
from torch import nn

from modeldiff.regions import ball
from modeldiff.search import evaluate, search
from tests._models import mlp

F64 = torch.float64


def test_zero_time_budget_returns_valid_witnesses():
    a = mlp([4, 8, 2], 0)
    b = mlp([4, 8, 2], 1)
    region = ball(torch.rand(3, 4, dtype=F64), 0.3)
    for global_mode in ("on", "off"):
        res = search(a, b, region, "linf", time_budget_s=0.0, global_mode=global_mode)
        assert res.interrupted is True
        assert bool(region.contains(res.witnesses).all())
        assert torch.equal(res.found, evaluate(a, b, res.witnesses, "linf"))
        assert res.history.shape[1] == 3 and res.history.shape[0] >= 1


def test_small_time_budget_stops_a_long_run():
    a = mlp([4, 32, 2], 0)
    b = mlp([4, 32, 2], 1)
    region = ball(torch.rand(2, 4, dtype=F64), 0.3)
    res = search(a, b, region, "linf", restarts=4, steps=100_000, time_budget_s=0.3, global_mode="off")
    assert res.interrupted and res.time_s < 5.0
    assert bool(region.contains(res.witnesses).all())
    assert int(res.history_steps[-1]) < 100_000


class _InterruptOnCall(nn.Module):
    """Wraps a model and raises KeyboardInterrupt on its ``at``-th call (once), as Ctrl-C would."""

    def __init__(self, model: nn.Module, at: int):
        super().__init__()
        self.model = model
        self.at = at
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.model(x)


def test_keyboard_interrupt_returns_what_was_found(monkeypatch):
    from modeldiff.search.reduced import StackedPair

    # the interrupt comes from the model's forward: the search's steps must call it, not the stacked dense layers
    monkeypatch.setattr(StackedPair, "build", classmethod(lambda cls, *args: None))
    a = mlp([3, 8, 2], 0)
    b = _InterruptOnCall(mlp([3, 8, 2], 1), at=12)  # the search works on a copy: the counter starts fresh
    region = ball(torch.zeros(2, 3, dtype=F64), 0.5)
    res = search(a, b, region, "l2", restarts=2, steps=50, global_mode="off")
    assert res.interrupted is True
    assert bool(region.contains(res.witnesses).all())
    assert torch.equal(res.found, evaluate(a, b.model, res.witnesses, "l2"))
    assert 1 <= res.history.shape[0] < 51
