"""The search's values are reachable, the bounds' values are certified: found <= certified on every region of
random pairs, for every divergence and the main methods (float64). This checks both the search and the bounds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modeldiff
from modeldiff.divergences import DIVERGENCES
from modeldiff.regions import ball
from tests.bounds.test_soundness import _pair


@pytest.mark.parametrize("method", ["crown", "diff"])
@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_found_never_exceeds_certified(divergence, method):
    @settings(max_examples=3, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 10_000), kind=st.sampled_from(["relu", "cnn", "resmlp"]), nearly_same=st.booleans(),
           eps=st.sampled_from([0.01, 0.1, 0.5]))
    def run(seed, kind, nearly_same, eps):
        a, b, shape = _pair(kind, seed, nearly_same)
        g = torch.Generator().manual_seed(seed)
        region = ball(torch.rand((3, *shape), generator=g, dtype=torch.float64) * 2 - 1, eps, domain=(-1.0, 1.0))
        certified = modeldiff.bound(a, b, region, divergence, method)
        found = modeldiff.search(a, b, region, divergence, restarts=4, steps=30, seed=seed)
        upper = certified.upper
        assert (found.found <= upper + 1e-9 * (1 + upper.abs())).all(), (found.found, upper)

    run()
