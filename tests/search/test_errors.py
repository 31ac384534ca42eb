"""Argument checking: one-line messages saying what was expected and what was given."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeldiff.errors import BoundError, IncompatibleModelsError, SearchError
from modeldiff.regions import box
from modeldiff.search import evaluate, search

F64 = torch.float64


@pytest.fixture
def pair():
    return nn.Linear(3, 2).double(), nn.Linear(3, 2).double()


@pytest.fixture
def region():
    return box(torch.zeros(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(restarts=0), SearchError, r"expected restarts >= 1, got 0"),
        (dict(restarts=2.5), TypeError, r"expected restarts to be an int, got float"),
        (dict(steps=0), SearchError, r"expected steps >= 1, got 0"),
        (dict(steps="10"), TypeError, r"expected steps to be an int, got str"),
        (dict(optimizer="adam"), SearchError, r"unknown optimizer 'adam'; expected one of auto, apgd, random, square"),
        (dict(optimizer=3), TypeError, r"expected optimizer to be a str, got int"),
        (dict(time_budget_s=-1.0), SearchError, r"expected time_budget_s >= 0, got -1.0"),
        (dict(seed=1.0), TypeError, r"expected seed to be an int, got float"),
        (dict(dtype=torch.int64), TypeError, r"expected dtype to be a floating torch.dtype"),
        (dict(batch_size=0), SearchError, r"expected batch_size >= 1, got 0"),
        (dict(global_mode="maybe"), SearchError, r"unknown global_mode 'maybe'"),
        (dict(n_starts=0), SearchError, r"expected n_starts >= 1, got 0"),
        (dict(explore=-1), SearchError, r"expected explore >= 0, got -1"),
        (dict(explore=2.0), TypeError, r"expected explore to be an int, got float"),
        (dict(progress="yes"), TypeError, r"expected progress to be a bool, got str"),
    ],
)
def test_bad_arguments(pair, region, kwargs, error, match):
    with pytest.raises(error, match=match):
        search(*pair, region, "linf", **kwargs)


def test_unknown_divergence(pair, region):
    with pytest.raises(BoundError, match=r"unknown divergence 'js'"):
        search(*pair, region, "js")


def test_region_must_be_a_region(pair):
    with pytest.raises(TypeError, match=r"expected region to be a modeldiff.regions.Region, got Tensor"):
        search(*pair, torch.zeros(2, 3), "linf")


def test_region_dims_must_match_the_models(pair):
    wrong = box(torch.zeros(2, 4, dtype=F64), torch.ones(2, 4, dtype=F64))
    match = r"expected regions over inputs of shape \(3,\) .* got regions of shape \(4,\)"
    with pytest.raises(SearchError, match=match):
        search(*pair, wrong, "linf")


def test_models_must_agree(region):
    with pytest.raises(IncompatibleModelsError, match=r"outputs differ in shape"):
        search(nn.Linear(3, 2).double(), nn.Linear(3, 4).double(), region, "linf")
    with pytest.raises(TypeError, match=r"expected model B to be a torch.nn.Module"):
        evaluate(nn.Linear(3, 2), "model.pt", torch.zeros(1, 3), "linf")


@pytest.mark.parametrize(
    "divergence, index, error, match",
    [
        ("linf", 0, SearchError, r"output_index applies only to the delta divergence, got divergence 'linf'"),
        ("delta", 2, SearchError, r"expected output_index in \[0, 2\), got values in \[2, 2\]"),
        ("delta", torch.tensor([0, 1, 0]), SearchError, r"expected output_index of shape \[2\]"),
        ("delta", torch.tensor([0.0, 1.0]), TypeError, r"expected output_index to be an integer tensor"),
        ("delta", "0", TypeError, r"expected output_index to be an int or a long tensor, got str"),
    ],
)
def test_bad_output_index(pair, region, divergence, index, error, match):
    with pytest.raises(error, match=match):
        search(*pair, region, divergence, output_index=index)
