"""``modeldiff.bound`` / ``refine``: argument checks (one error message each) and the result's shape."""

from __future__ import annotations

import pytest
import torch

import modeldiff
from modeldiff.bounds import refine
from modeldiff.errors import BoundError
from modeldiff.regions import ball
from tests._models import mlp

A, B = mlp([3, 5, 2], 0), mlp([3, 5, 2], 1)
REGION = ball(torch.zeros(2, 3, dtype=torch.float64), 0.1)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"method": "exact"}, BoundError, r"unknown bound method 'exact'; expected one of auto, ibp"),
    ({"dtype": "float16"}, BoundError, r"unknown dtype 'float16'; expected one of float64, float32"),
    ({"dtype": torch.int32}, BoundError, r"expected dtype float64 or float32, got torch.int32"),
    ({"batch_size": 0}, BoundError, r"expected batch_size to be a positive int, got 0"),
    ({"divergence": "delta", "output_index": 1.5}, BoundError, r"expected integer output indices"),
    ({"divergence": "delta", "output_index": [0, 1, 0]}, BoundError, r"expected one output index or 2 \(one per"),
    ({"divergence": "delta", "output_index": 2}, BoundError, r"output index out of range: the models have 2 outputs"),
    ({"divergence": "linf", "output_index": 0}, BoundError, r"output_index applies to the delta divergence only"),
    ({"divergence": "js"}, BoundError, r"unknown divergence 'js'"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        modeldiff.bound(A, B, REGION, **kwargs)


def test_region_must_be_a_region():
    with pytest.raises(TypeError, match=r"expected a modeldiff.regions.Region, got Tensor"):
        modeldiff.bound(A, B, torch.zeros(2, 3))


def test_refine_checks_like_bound_and_returns_one_result_per_box():
    with pytest.raises(BoundError, match="unknown bound method"):
        refine(A, B, REGION, method="exact")
    results = refine(A, B, REGION, "delta", output_index=torch.tensor([0, 1]), time_budget_s=5)
    assert len(results) == 2
    single = modeldiff.bound(A, B, REGION, "delta", output_index=torch.tensor([0, 1]))
    for r, u in zip(results, single.upper):
        assert r.lower <= r.upper <= float(u) + 1e-12


def test_result_fields_and_json():
    result = modeldiff.bound(A, B, REGION, "delta", output_index=1)
    assert result.upper.shape == (2,) and result.delta_lower.shape == (2, 2)
    assert torch.equal(result.output_index, torch.tensor([1, 1]))
    record = result.to_dict()["regions"][0]
    assert record["output_index"] == 1 and len(record["delta_interval"]) == 2
    assert result.method == "diff"


def test_device_is_checked():
    with pytest.raises(BoundError, match="unknown device 'nowhere'"):
        modeldiff.bound(A, B, REGION, device="nowhere")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"search_restarts": -1}, r"expected search_restarts to be an int >= 0, got -1"),
    ({"search_steps": 0}, r"expected search_steps to be an int >= 1, got 0"),
])
def test_refine_search_arguments_are_checked(kwargs, message):
    with pytest.raises(BoundError, match=message):
        refine(A, B, REGION, **kwargs)


def test_refine_is_seeded_by_the_search():
    seeded = refine(A, B, REGION, "linf", max_nodes=1)
    found = modeldiff.search(A, B, REGION, "linf", restarts=5, steps=50).found
    for r, f in zip(seeded, found):
        assert r.lower >= float(f) - 1e-12


def test_refine_takes_witnesses_instead_of_searching():
    found = modeldiff.search(A, B, REGION, "linf", restarts=2, steps=10)
    results = refine(A, B, REGION, "linf", max_nodes=1, witnesses=found.witnesses)
    for r, f in zip(results, found.found):
        assert r.lower >= float(f) - 1e-12
    with pytest.raises(BoundError, match=r"expected witnesses of shape \(2, 3\), got \(3,\)"):
        refine(A, B, REGION, witnesses=torch.zeros(3))
