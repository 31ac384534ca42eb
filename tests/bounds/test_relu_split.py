"""ReLU-split branch and bound: the anytime interval [lower, upper] contains the true maximum (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modeldiff
from modeldiff.bounds import RELU_SPLIT_MIN_DIMS, _choose_splits, make_bounder, refine
from modeldiff.bounds import relu_split
from modeldiff.bounds.bab import branch_and_bound_box
from modeldiff.errors import BoundError
from modeldiff.search import evaluate, search
from tests._models import ResMLP, mlp, perturbed, pruned


def _pair(kind: str, n_in: int, seed: int):
    a = ResMLP(n_in, 8, 3, seed) if kind == "residual" else mlp([n_in, 8, 8, 3], seed, scale=2.0)
    b = pruned(a, 1 / 3, seed + 1) if kind == "pruned" else perturbed(a, 0.05, seed + 1)
    return a, b


def _grid_max(a, b, lo, hi, divergence, output_index, n=161):
    xs = torch.linspace(0, 1, n, dtype=torch.float64)
    g = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    return float(evaluate(a, b, lo + (hi - lo) * g, divergence, output_index).max())


def _check(a, b, lo, hi, result, divergence, out, true_max):
    assert result.upper >= true_max - 1e-9, f"certified {result.upper} below the maximum reached {true_max}"
    assert result.upper <= result.initial_upper + 1e-12
    assert result.lower <= result.upper + 1e-12
    x = result.witness.unsqueeze(0)
    assert float(evaluate(a, b, x, divergence, out)[0]) == pytest.approx(result.lower, abs=1e-12)
    assert ((x >= lo) & (x <= hi)).all()


@pytest.mark.parametrize("kind", ["mlp", "pruned", "residual"])
@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), divergence=st.sampled_from(["delta", "linf"]),
       width=st.sampled_from([0.05, 0.5, 2.0]))
def test_interval_contains_grid_maximum(kind, seed, divergence, width):
    a, b = _pair(kind, 2, seed)
    lo = torch.tensor([[-0.5, -0.2]], dtype=torch.float64)
    hi = lo + width
    bounder, _ = make_bounder(a, b, (2,), "diff")
    out = seed % 3 if divergence == "delta" else None
    result = branch_and_bound_box(a, b, bounder, lo, hi, divergence, output_index=out, tolerance=0.0,
                                  max_nodes=300, time_budget_s=20, split="relu")
    _check(a, b, lo, hi, result, divergence, out, _grid_max(a, b, lo[0], hi[0], divergence, out))


@pytest.mark.parametrize("kind", ["mlp", "pruned", "residual"])
@settings(max_examples=3, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), width=st.sampled_from([0.1, 1.0]))
def test_interval_contains_sampled_and_searched_maximum_in_six_dimensions(kind, seed, width):
    a, b = _pair(kind, 6, seed)
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(1, 6, dtype=torch.float64, generator=g) - 0.5
    hi = lo + width
    bounder, _ = make_bounder(a, b, (6,), "diff")
    result = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=0.0, max_nodes=500, time_budget_s=20,
                                  split="relu")
    u = torch.rand(40_000, 6, dtype=torch.float64, generator=g)
    u[:10_000] = u[:10_000].round()  # corners too
    sampled = float(evaluate(a, b, lo + (hi - lo) * u, "linf").max())
    found = float(search(a, b, modeldiff.regions.box(lo, hi), "linf", restarts=10, steps=100, seed=seed).found[0])
    _check(a, b, lo, hi, result, "linf", None, max(sampled, found))


def test_splits_tighten_and_converge_on_a_small_pair():
    a = mlp([2, 6, 2], 3, scale=2.0)
    b = perturbed(a, 0.05, 4)
    lo = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    hi = -lo
    bounder, _ = make_bounder(a, b, (2,), "diff")
    result = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=1e-3, max_nodes=20_000,
                                  time_budget_s=60, split="relu")
    assert result.upper < result.initial_upper
    assert result.status == "converged", result
    _check(a, b, lo, hi, result, "linf", None, _grid_max(a, b, lo[0], hi[0], "linf", None))


def test_identical_models_certify_zero():
    a = mlp([20, 8, 8, 3], 7)
    bounder, _ = make_bounder(a, a, (20,), "diff")
    lo, hi = torch.zeros(1, 20, dtype=torch.float64), torch.ones(1, 20, dtype=torch.float64)
    result = branch_and_bound_box(a, a, bounder, lo, hi, "linf", split="relu")
    assert result.initial_upper == 0.0 and result.upper == 0.0 and result.status == "converged"


def test_stop_and_interrupt_keep_a_valid_interval(monkeypatch):
    a, b = _pair("mlp", 6, 11)
    lo, hi = torch.full((1, 6), -1.0, dtype=torch.float64), torch.full((1, 6), 1.0, dtype=torch.float64)
    bounder, _ = make_bounder(a, b, (6,), "diff")
    g = torch.Generator().manual_seed(0)
    sampled = float(evaluate(a, b, lo + (hi - lo) * torch.rand(50_000, 6, dtype=torch.float64, generator=g),
                             "linf").max())
    rounds = []
    res = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=0.0, time_budget_s=None, split="relu",
                               stop=lambda: len(rounds.append(1) or rounds) > 2)
    assert res.status == "interrupted" and res.nodes > 1
    assert res.upper >= sampled - 1e-12
    # Ctrl-C in the middle of bounding a round: the subdomains being split stay in the pool
    calls = []
    original = relu_split._Bounder.bound

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(relu_split._Bounder, "bound", interrupted)
    res = branch_and_bound_box(a, b, bounder, lo, hi, "linf", tolerance=0.0, time_budget_s=None, split="relu")
    assert res.status == "interrupted"
    assert res.upper >= sampled - 1e-12


def test_empty_subdomains_are_dropped_and_children_cover_their_parent():
    a, b = _pair("mlp", 3, 5)
    lo, hi = torch.full((1, 3), -1.0, dtype=torch.float64), torch.full((1, 3), 1.0, dtype=torch.float64)
    bounder, _ = make_bounder(a, b, (3,), "diff")
    engine = relu_split._Bounder(bounder, lo, hi, relu_split.BETA_STEPS)
    total = sum(bounder.hidden_sizes)
    spec = torch.zeros(1, 3, dtype=torch.float64)
    spec[0, 0] = 1.0
    split = torch.zeros(1, 2, total, dtype=torch.int8)
    up, states, beta, slack, _ = engine.bound(spec, None, split, torch.zeros(1, 2, total, dtype=torch.float64),
                                              torch.zeros(1))
    unstable = ((states[0, 0] < 0) & (states[0, 1] > 0) & (states[0, 2] < 0) & (states[0, 3] > 0)).nonzero()
    neuron = unstable[0]
    c_states, c_split, parent = relu_split._children(states, split, neuron, torch.tensor([True]),
                                                     torch.tensor([True]))
    assert c_states.shape[0] == 4 and parent.tolist() == [0, 0, 0, 0]
    # every point of the box lies in a child whose constraints it meets, inside that child's bounds
    x = lo + (hi - lo) * torch.rand(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer_a, layer_b = bounder.layers_a[0], bounder.layers_b[0]
    z_a = (x @ layer_a.weight.T + layer_a.bias)[:, neuron[0]]
    z_b = (x @ layer_b.weight.T + layer_b.bias)[:, neuron[0]]
    for za, zb in zip(z_a, z_b):
        inside = [(c_split[c, 0, neuron[0]] * za >= 0) & (c_split[c, 1, neuron[0]] * zb >= 0) for c in range(4)]
        c = [i for i, ok in enumerate(inside) if ok][0]
        assert c_states[c, 0, neuron[0]] <= za <= c_states[c, 1, neuron[0]]
        assert c_states[c, 2, neuron[0]] <= zb <= c_states[c, 3, neuron[0]]
    # a child whose constraints no point meets: z_A >= 0 with z_A's upper bound below 0 (bounds cross)
    st = states.clone()
    st[0, 1, neuron[0]] = -1.0
    sp = split.clone()
    sp[0, 0, neuron[0]] = 1
    st[0, 0, neuron[0]] = 0.0
    up, *_ = engine.bound(spec, st, sp, torch.zeros(1, 2, total, dtype=torch.float64), torch.zeros(1))
    assert up[0] == -math.inf


def test_auto_splits_by_relu_signs_for_many_free_entries_only():
    a, b = _pair("mlp", 20, 3)
    bounder, _ = make_bounder(a, b, (20,), "diff")
    lo = torch.zeros(2, 20, dtype=torch.float64)
    hi = lo.clone()
    hi[0] += 1.0  # 20 free entries
    hi[1, :3] = 1.0  # 3 free entries
    region = modeldiff.regions.box(lo, hi)
    assert RELU_SPLIT_MIN_DIMS < 20
    assert _choose_splits("auto", bounder, "linf", region) == ["relu", "input"]
    assert _choose_splits("auto", bounder, "l2", region) == ["input", "input"]
    assert _choose_splits("input", bounder, "linf", region) == ["input", "input"]
    crown, _ = make_bounder(a, b, (20,), "crown")
    assert _choose_splits("auto", crown, "linf", region) == ["input", "input"]
    results = refine(a, b, region, "linf", max_nodes=50, time_budget_s=10, search_restarts=1, search_steps=5)
    assert [r.nodes for r in results][0] > 1


def test_errors_name_the_problem():
    a, b = _pair("mlp", 3, 3)
    lo, hi = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    region = modeldiff.regions.box(lo, hi)
    crown, _ = make_bounder(a, b, (3,), "crown")
    with pytest.raises(BoundError, match="does not apply: it needs the differential bound"):
        branch_and_bound_box(a, b, crown, lo, hi, "linf", split="relu")
    diff, _ = make_bounder(a, b, (3,), "diff")
    with pytest.raises(BoundError, match="does not apply: it certifies delta and linf, not l1"):
        branch_and_bound_box(a, b, diff, lo, hi, "l1", split="relu")
    with pytest.raises(BoundError, match="expected split to be one of input, relu, got 'box'"):
        branch_and_bound_box(a, b, diff, lo, hi, "linf", split="box")
    with pytest.raises(BoundError, match="expected split to be one of auto, input, relu, got 'box'"):
        refine(a, b, region, "linf", split="box")
    with pytest.raises(BoundError, match="does not apply: it certifies delta and linf, not l2"):
        refine(a, b, region, "l2", split="relu")
    with pytest.raises(BoundError, match="does not apply: it needs the differential bound"):
        refine(a, b, region, "linf", method="crown", split="relu")
