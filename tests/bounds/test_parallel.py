"""Branch and bound over many boxes in worker processes (modeldiff.bounds.parallel, refine(workers=...))."""

from __future__ import annotations

import logging

import pytest
import torch

import modeldiff
from modeldiff.bounds import make_bounder, parallel, refine
from modeldiff.bounds.bab import branch_and_bound_box
from modeldiff.errors import BoundError
from modeldiff.search import evaluate
from tests._models import mlp, perturbed


def _pair():
    a = mlp([3, 12, 12, 2], 0, scale=2.0)
    return a, perturbed(a, 0.02, 1)


def _region(n=4):
    return modeldiff.regions.ball(torch.rand(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
                                  eps=0.3)


def _sampled_max(a, b, lo, hi, divergence="linf"):
    x = lo + (hi - lo) * torch.rand(20_000, lo.shape[-1], dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(1))
    return float(evaluate(a, b, x, divergence).max())


def _summary(results):
    return [(r.status, r.nodes, r.upper, r.lower) for r in results]


def test_workers_give_the_results_of_one_process():
    a, b = _pair()
    region = _region()
    kwargs = dict(max_nodes=120, time_budget_s=None, tolerance=0.0, search_restarts=1, search_steps=5)
    one = refine(a, b, region, "linf", workers=1, **kwargs)
    two = refine(a, b, region, "linf", workers=2, **kwargs)
    assert len(two) == len(region)
    for r1, r2 in zip(one, two):
        assert (r1.status, r1.nodes) == (r2.status, r2.nodes)
        assert r2.upper == pytest.approx(r1.upper, rel=1e-9) and r2.lower == pytest.approx(r1.lower, rel=1e-9)


def test_interrupt_stops_every_box_and_keeps_valid_intervals():
    a, b = _pair()
    region = _region(6)
    a64, b64 = (modeldiff.graph.prepare_model(m, torch.float64) for m in (a, b))
    bounder, used = make_bounder(a64, b64, (3,), "diff")
    boxes = [dict(lower=region.lower[i : i + 1].clone(), upper=region.upper[i : i + 1].clone(), divergence="linf",
                  tolerance=0.0, max_nodes=10**9, time_budget_s=60.0) for i in range(len(region))]
    calls = []

    def ctrl_c():  # the first finished box "presses Ctrl-C"
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    # the first box is easy (a tiny box): it finishes first and triggers the interrupt
    boxes[0] = dict(boxes[0], max_nodes=1)
    results = parallel.run_boxes(a64, b64, bounder, used, (3,), boxes, workers=2, done=ctrl_c)
    assert len(results) == len(boxes)
    assert all(r.status == "interrupted" for r in results[1:])
    for r, box in zip(results, boxes):
        assert r.upper >= _sampled_max(a64, b64, box["lower"][0], box["upper"][0]) - 1e-12
        assert r.lower <= r.upper


def test_one_process_stops_the_remaining_boxes_after_an_interrupt(monkeypatch):
    a, b = _pair()
    region = _region(3)
    real = branch_and_bound_box
    seen = []

    def first_interrupted(*args, **kwargs):
        res = real(*args, **kwargs)
        seen.append(kwargs.get("max_nodes"))
        if len(seen) == 1:  # as if Ctrl-C had stopped the first box
            import dataclasses

            res = dataclasses.replace(res, status="interrupted")
        return res

    monkeypatch.setattr(parallel, "branch_and_bound_box", first_interrupted)
    results = refine(a, b, region, "linf", max_nodes=50, time_budget_s=None, search_restarts=0)
    assert [r.status for r in results] == ["interrupted"] * 3
    assert seen[1:] == [1, 1]  # the later boxes got their bound before any split only
    assert all(r.nodes == 1 for r in results[1:])


def test_stop_callback_ends_a_run_with_a_valid_interval():
    a, b = _pair()
    lo = torch.full((1, 3), -1.0, dtype=torch.float64)
    hi = torch.full((1, 3), 1.0, dtype=torch.float64)
    bounder, _ = make_bounder(a, b, (3,), "diff")
    rounds = []
    res = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=0.0, time_budget_s=None,
                               stop=lambda: len(rounds.append(1) or rounds) > 2)
    assert res.status == "interrupted" and res.nodes > 1
    assert res.upper >= _sampled_max(a, b, lo[0], hi[0]) - 1e-12


def test_models_that_cannot_be_pickled_run_in_this_process(caplog):
    a, b = _pair()
    a.not_picklable = lambda x: x  # a lambda cannot be sent to a worker process
    region = _region(2)
    with caplog.at_level(logging.WARNING, logger="modeldiff.bounds.parallel"):
        results = refine(a, b, region, "linf", workers=2, max_nodes=20, time_budget_s=None, search_restarts=0)
    assert len(results) == 2
    assert "cannot be sent to worker processes" in caplog.text


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_int(workers):
    a, b = _pair()
    with pytest.raises(BoundError, match="expected workers to be an int >= 1"):
        refine(a, b, _region(1), "linf", workers=workers)
