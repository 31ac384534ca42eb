"""Every divergence against an independent numpy/scipy reference, in float64, on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modeldiff import divergences
from modeldiff.divergences import DIVERGENCES, Divergence, get_divergence
from modeldiff.errors import BoundError, IncompatibleModelsError, ModelDiffError

FAST = settings(max_examples=60, deadline=None)


# --- references (numpy / scipy only) ------------------------------------------------------------------------


def ref_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a - b


def ref_linf(a, b):
    return np.linalg.norm(a - b, ord=np.inf, axis=1)


def ref_l1(a, b):
    return np.linalg.norm(a - b, ord=1, axis=1)


def ref_l2(a, b):
    return np.linalg.norm(a - b, ord=2, axis=1)


def ref_kl_entropy(a, b):
    """scipy.stats.entropy(p, q) = KL(p || q); only used where softmax(b) does not underflow."""
    p, q = scipy.special.softmax(a, axis=1), scipy.special.softmax(b, axis=1)
    return scipy.stats.entropy(p, q, axis=1)


def ref_kl_log(a, b):
    """KL from log-softmax, stable for logits of any size (softmax(b) may underflow to 0 there)."""
    la, lb = scipy.special.log_softmax(a, axis=1), scipy.special.log_softmax(b, axis=1)
    return np.maximum(np.sum(np.exp(la) * (la - lb), axis=1), 0.0)


def ref_tv(a, b):
    return 0.5 * np.abs(scipy.special.softmax(a, axis=1) - scipy.special.softmax(b, axis=1)).sum(axis=1)


def ref_top1(a, b):
    return (np.argmax(a, axis=1) != np.argmax(b, axis=1)).astype(np.float64)


REFERENCES = {
    "delta": ref_delta,
    "linf": ref_linf,
    "l1": ref_l1,
    "l2": ref_l2,
    "kl": ref_kl_log,
    "tv": ref_tv,
    "top1": ref_top1,
}


# --- strategies ------------------------------------------------------------------------------------------------


@st.composite
def output_pairs(draw, bound: float = 30.0, min_k: int = 1):
    """Two float64 arrays ``[N, K]`` with entries in ``[-bound, bound]``; B is sometimes a small move of A (the
    interesting regime for nearly identical models) and sometimes equal to it."""
    n = draw(st.integers(1, 5))
    k = draw(st.integers(min_k, 8))
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=64)
    a = draw(hnp.arrays(np.float64, (n, k), elements=elements))
    mode = draw(st.sampled_from(["independent", "nearby", "equal"]))
    if mode == "independent":
        b = draw(hnp.arrays(np.float64, (n, k), elements=elements))
    elif mode == "nearby":
        noise = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-1e-3, 1e-3, width=64)))
        b = np.clip(a + noise * max(1.0, bound / 100), -bound, bound)
    else:
        b = a.copy()
    return a, b


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _close(value: torch.Tensor, reference: np.ndarray, scale: float) -> None:
    assert value.dtype == torch.float64
    np.testing.assert_allclose(value.numpy(), reference, rtol=1e-9, atol=1e-12 * max(scale, 1.0))


# --- values against the references -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["delta", "linf", "l1", "l2", "top1"])
@FAST
@given(pair=output_pairs(bound=1e3))
def test_matches_reference(name, pair):
    a, b = pair
    value = getattr(divergences, name)(_t(a), _t(b))
    expected = REFERENCES[name](a, b)
    assert tuple(value.shape) == expected.shape
    _close(value, expected, 1e3)


@FAST
@given(pair=output_pairs(bound=30.0))
def test_kl_matches_scipy_entropy(pair):
    a, b = pair
    value = divergences.kl(_t(a), _t(b))
    assert value.shape == (a.shape[0],)
    np.testing.assert_allclose(value.numpy(), ref_kl_entropy(a, b), rtol=1e-8, atol=1e-10)


@FAST
@given(pair=output_pairs(bound=1e3))
def test_kl_stable_for_large_logits(pair):
    a, b = pair
    value = divergences.kl(_t(a), _t(b))
    assert torch.isfinite(value).all()
    assert (value >= 0).all()
    # la - lb carries an absolute error of a few ulps of 1e3
    np.testing.assert_allclose(value.numpy(), ref_kl_log(a, b), rtol=1e-8, atol=1e-9)


@FAST
@given(pair=output_pairs(bound=1e3))
def test_tv_matches_reference_for_large_logits(pair):
    a, b = pair
    value = divergences.tv(_t(a), _t(b))
    assert torch.isfinite(value).all()
    assert ((value >= 0) & (value <= 1 + 1e-12)).all()
    np.testing.assert_allclose(value.numpy(), ref_tv(a, b), rtol=1e-9, atol=1e-12)


def test_kl_huge_gap_is_finite_where_naive_softmax_underflows():
    a = torch.tensor([[1000.0, 0.0, -1000.0]], dtype=torch.float64)
    b = torch.tensor([[-1000.0, 0.0, 1000.0]], dtype=torch.float64)
    # softmax(b)[0] underflows to 0: the naive entropy is inf, the log-space value is 2000
    assert np.isinf(ref_kl_entropy(a.numpy(), b.numpy())[0])
    assert float(divergences.kl(a, b)[0]) == pytest.approx(2000.0, rel=1e-12)
    assert float(divergences.tv(a, b)[0]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_identical_outputs_give_zero(name):
    y = torch.randn(4, 5, dtype=torch.float64) * 100
    value = get_divergence(name)(y, y.clone())
    assert torch.equal(value, torch.zeros_like(value))


def test_top1_ties_use_first_maximum_like_numpy():
    a = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0, 1.0], [0.0, 2.0, 2.0]], dtype=torch.float64)
    assert divergences.top1(a, b).tolist() == ref_top1(a.numpy(), b.numpy()).tolist() == [1.0, 0.0]


def test_float32_keeps_dtype():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    for name in DIVERGENCES:
        assert get_divergence(name)(a, b).dtype == torch.float32


def test_gradients_flow_through_continuous_divergences():
    a = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64)
    for name in ("linf", "l1", "l2", "kl", "tv"):
        (g,) = torch.autograd.grad(get_divergence(name)(a, b).sum(), a)
        assert torch.isfinite(g).all()


# --- the module and the registry ------------------------------------------------------------------------------


def test_divergence_names_in_cli_order():
    assert DIVERGENCES == ("delta", "linf", "l1", "l2", "kl", "tv", "top1")


@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergence_module(name):
    module = Divergence(name)
    assert isinstance(module, torch.nn.Module)
    assert module.name == name
    assert module.vector_valued == (name == "delta")
    assert isinstance(module.value_range, str) and module.value_range
    assert name in repr(module) and module.value_range in repr(module)
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(module(a, b), getattr(divergences, name)(a, b))
    assert module(a, b).shape == ((3, 4) if name == "delta" else (3,))
    assert list(module.parameters()) == []


def test_documented_ranges():
    assert Divergence("tv").value_range == "[0, 1]"
    assert Divergence("top1").value_range == "{0, 1}"
    for name in ("linf", "l1", "l2", "kl"):
        assert Divergence(name).value_range == "[0, inf)"


def test_get_divergence():
    d = Divergence("l2")
    assert get_divergence(d) is d
    fresh = get_divergence("kl")
    assert isinstance(fresh, Divergence) and fresh.name == "kl"


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [Divergence, get_divergence])
def test_unknown_name(make):
    expected = r"^unknown divergence 'kld'; expected one of delta, linf, l1, l2, kl, tv, top1$"
    with pytest.raises(BoundError, match=expected):
        make("kld")


def test_unknown_name_is_a_modeldiff_error():
    with pytest.raises(ModelDiffError):
        get_divergence("")


def test_non_string_name():
    with pytest.raises(TypeError, match=r"expected a divergence name \(str\), got int"):
        Divergence(3)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_shape_mismatch(name):
    with pytest.raises(IncompatibleModelsError, match=r"^outputs differ in shape: A gives \(2, 3\), B gives \(2, 4\)$"):
        getattr(divergences, name)(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_not_two_dimensional(name, shape):
    with pytest.raises(IncompatibleModelsError, match=r"^expected outputs of shape \[N, K\], got \(") as info:
        get_divergence(name)(torch.zeros(shape), torch.zeros(shape))
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_not_tensors(name):
    fn = getattr(divergences, name)
    with pytest.raises(TypeError, match=r"^expected two tensors, got list and Tensor$"):
        fn([[1.0, 2.0]], torch.zeros(1, 2))
    with pytest.raises(TypeError, match=r"^expected two tensors, got Tensor and ndarray$"):
        fn(torch.zeros(1, 2), np.zeros((1, 2)))


@pytest.mark.parametrize("name", DIVERGENCES)
def test_messages_are_one_line(name):
    for args in ((torch.zeros(1, 2), torch.zeros(1, 3)), (torch.zeros(2), torch.zeros(2)), (1, 2)):
        with pytest.raises((TypeError, ModelDiffError)) as info:
            get_divergence(name)(*args)
        assert "\n" not in str(info.value)
