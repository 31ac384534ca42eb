"""Tests of modeldiff.regions: Region, ball, box, point/label loading, VNN-LIB parsing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeldiff.errors import ModelDiffError, RegionError
from modeldiff.regions import Region, ball, box, from_vnnlib, load_labels, load_points

ROOT = Path(__file__).resolve().parents[1]
ACAS = ROOT / "benchmarks" / "data" / "acasxu"


# ------------------------------------------------------------------------------------------
# Region validation
# ------------------------------------------------------------------------------------------


def test_region_error_is_modeldiff_error():
    assert issubclass(RegionError, ModelDiffError)


def test_region_basic_properties():
    lo = torch.zeros(3, 2, 2)
    hi = torch.ones(3, 2, 2)
    r = Region(lo, hi, description="unit")
    assert len(r) == 3
    assert r.input_shape == (2, 2)
    assert r.dtype == torch.float32
    assert torch.equal(r.midpoints, torch.full((3, 2, 2), 0.5))
    assert torch.equal(r.width, torch.ones(3, 2, 2))
    assert "n=3" in repr(r) and "unit" in repr(r)
    assert r.eps is None and r.centers is None


def test_region_midpoints_prefer_centers():
    c = torch.tensor([[0.1, 0.9]])
    r = ball(c, 0.2, domain=(0.0, 1.0))
    assert torch.equal(r.midpoints, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lower=torch.zeros(2, 3), upper=torch.ones(2, 4)), r"lower shape \(2, 3\) != upper shape \(2, 4\)"),
        (dict(lower=torch.zeros(0, 3), upper=torch.ones(0, 3)), "no boxes"),
        (dict(lower=torch.tensor(0.0), upper=torch.tensor(1.0)), "batch dimension"),
        (dict(lower=torch.zeros(2, 3, dtype=torch.int64), upper=torch.ones(2, 3, dtype=torch.int64)), "floating dtype"),
        (dict(lower=torch.zeros(2, 3), upper=torch.ones(2, 3, dtype=torch.float64)), "dtypes differ"),
        (dict(lower=torch.tensor([[0.0, math.nan]]), upper=torch.ones(1, 2)), "lower bounds contain NaN"),
        (dict(lower=torch.zeros(1, 2), upper=torch.tensor([[1.0, math.inf]])), "upper bounds contain inf"),
        (dict(lower=torch.tensor([[0.0, 2.0, 3.0]]), upper=torch.tensor([[1.0, 1.0, 1.0]])), "lower > upper at 2 entries"),
        (dict(lower=np.zeros((1, 2)), upper=np.ones((1, 2))), "must be torch tensors"),
        (dict(lower=torch.zeros(1, 2), upper=torch.ones(1, 2), centers=torch.zeros(1, 3)), "centers shape"),
        (dict(lower=torch.zeros(1, 2), upper=torch.ones(1, 2), centers=torch.tensor([[math.nan, 0.0]])), "centers contain NaN"),
        (dict(lower=torch.zeros(1, 2), upper=torch.ones(1, 2), eps=-0.1), r"eps must be >= 0, got -0.1"),
        (dict(lower=torch.zeros(1, 2), upper=torch.ones(1, 2), eps=math.nan), "eps is NaN"),
        (dict(lower=torch.zeros(1, 2), upper=torch.ones(1, 2), eps=torch.ones(3)), "does not broadcast"),
        (dict(lower=torch.zeros(1, 2), upper=torch.ones(1, 2), description=3), "description must be a str"),
    ],
)
def test_region_validation_errors(kwargs, match):
    with pytest.raises(RegionError, match=match) as info:
        Region(**kwargs)
    assert "\n" not in str(info.value)


def test_region_is_frozen_and_identity_eq():
    r = box(torch.zeros(2), torch.ones(2))
    with pytest.raises(Exception):
        r.lower = torch.ones(1, 2)  # type: ignore[misc]
    r2 = box(torch.zeros(2), torch.ones(2))
    assert r == r and r != r2
    assert len({r, r2}) == 2  # hashable


def test_region_eps_tensor_scalar_becomes_float():
    r = Region(torch.zeros(1, 2), torch.ones(1, 2), eps=torch.tensor(0.5))
    assert isinstance(r.eps, float) and r.eps == 0.5


# ------------------------------------------------------------------------------------------
# ball
# ------------------------------------------------------------------------------------------


def test_ball_basic():
    c = torch.tensor([[0.5, 0.2], [0.0, 1.0]])
    r = ball(c, 0.1)
    assert len(r) == 2 and r.input_shape == (2,)
    assert torch.allclose(r.lower, c - 0.1) and torch.allclose(r.upper, c + 0.1)
    assert r.eps == pytest.approx(0.1)
    assert torch.equal(r.centers, c)
    assert "eps=0.1" in r.description


def test_ball_one_point_gets_batch_dim_and_ints_become_float():
    r = ball([1, 2, 3], 1)
    assert r.lower.shape == (1, 3) and r.dtype == torch.get_default_dtype()
    assert r.lower.tolist() == [[0.0, 1.0, 2.0]]


def test_ball_keeps_float64():
    r = ball(torch.zeros(2, 3, dtype=torch.float64), 0.25)
    assert r.dtype == torch.float64


def test_ball_zero_eps_is_a_point():
    c = torch.rand(4, 3)
    r = ball(c, 0.0)
    assert torch.equal(r.lower, c) and torch.equal(r.upper, c)
    assert r.corners().shape == (1, 4, 3)


def test_ball_domain_intersection():
    c = torch.tensor([[0.05, 0.5, 0.98]])
    r = ball(c, 0.1, domain=(0.0, 1.0))
    assert torch.allclose(r.lower, torch.tensor([[0.0, 0.4, 0.88]]))
    assert torch.allclose(r.upper, torch.tensor([[0.15, 0.6, 1.0]]))
    assert "domain [0, 1]" in r.description


def test_ball_domain_tensors_per_feature():
    c = torch.zeros(2, 3)
    lo = torch.tensor([-1.0, -0.05, -math.inf])
    hi = torch.tensor([0.01, 1.0, math.inf])
    r = ball(c, 0.1, domain=(lo, hi))
    assert torch.allclose(r.lower, torch.tensor([[-0.1, -0.05, -0.1]] * 2))
    assert torch.allclose(r.upper, torch.tensor([[0.01, 0.1, 0.1]] * 2))


def test_ball_center_outside_domain_is_clipped():
    r = ball(torch.tensor([[1.05]]), 0.1, domain=(0.0, 1.0))
    assert torch.allclose(r.lower, torch.tensor([[0.95]])) and r.upper.item() == 1.0
    assert r.centers.item() == pytest.approx(1.05)  # seed kept


def test_ball_empty_after_domain_raises():
    with pytest.raises(RegionError, match="ball around center 1 does not intersect the domain"):
        ball(torch.tensor([[0.5], [2.0]]), 0.1, domain=(0.0, 1.0))


def test_ball_per_feature_eps():
    c = torch.zeros(2, 2, 3)
    eps = torch.tensor([0.0, 0.1, 0.2])  # broadcasts over the (2, 3) input
    r = ball(c, eps)
    assert isinstance(r.eps, torch.Tensor) and r.eps.shape == (2, 3)
    assert torch.allclose(r.upper[0, 1], eps) and torch.allclose(r.lower[1, 0], -eps)
    d = r.to_dict()
    assert d["eps"] == [[0.0, pytest.approx(0.1), pytest.approx(0.2)]] * 2
    assert "per-feature" in r.description
    # fixed dims: 4 varying entries per box -> 16 corners
    assert r.corners().shape == (16, 2, 2, 3)


def test_ball_per_feature_eps_single_element_is_float():
    r = ball(torch.zeros(1, 3), np.array([0.3]))
    assert isinstance(r.eps, float) and r.eps == pytest.approx(0.3)


@pytest.mark.parametrize(
    "centers, eps, domain, match",
    [
        (torch.zeros(1, 2), -0.1, None, r"eps must be >= 0, got -0\.1"),
        (torch.zeros(1, 2), math.nan, None, "eps is NaN"),
        (torch.zeros(1, 2), math.inf, None, "eps must be finite"),
        (torch.zeros(1, 2), torch.tensor([0.1, -0.2]), None, r"eps must be >= 0, got -0\.2"),
        (torch.zeros(1, 2), torch.tensor([0.1, math.nan]), None, "eps is NaN"),
        (torch.zeros(1, 2), torch.ones(3), None, r"eps of shape \(3,\) does not broadcast to input shape \(2,\)"),
        (torch.zeros(1, 2), True, None, "eps must be a number"),
        (torch.zeros(1, 2), "x", None, "eps must be a number"),
        (torch.tensor([[0.0, math.nan]]), 0.1, None, "centers contain NaN"),
        (torch.tensor([[0.0, math.inf]]), 0.1, None, "centers contain inf"),
        (torch.tensor(1.0), 0.1, None, "at least 1 dimension"),
        (torch.zeros(0, 2), 0.1, None, "no inputs"),
        (torch.tensor([[True, False]]), 0.1, None, "real numbers"),
        (torch.zeros(1, 2), 0.1, (0.0,), r"domain must be a \(lo, hi\) pair"),
        (torch.zeros(1, 2), 0.1, (1.0, 0.0), "domain lo > hi at 2 input entries"),
        (torch.zeros(1, 2), 0.1, (math.nan, 1.0), "domain lo contains NaN"),
        (torch.zeros(1, 2), 0.1, (torch.zeros(3), 1.0), "domain lo of shape"),
        (torch.full((1, 2), 3e38), 1e38, None, "overflow"),
    ],
)
def test_ball_errors(centers, eps, domain, match):
    with pytest.raises(RegionError, match=match) as info:
        ball(centers, eps, domain=domain)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# box
# ------------------------------------------------------------------------------------------


def test_box_one_box_and_batch():
    r = box(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    assert r.lower.shape == (1, 2) and r.centers is None and r.eps is None
    assert torch.equal(r.midpoints, torch.tensor([[0.5, 1.5]]))
    r2 = box(np.zeros((3, 2, 2)), np.ones((3, 2, 2)))
    assert len(r2) == 3 and r2.input_shape == (2, 2) and r2.dtype == torch.float64
    r3 = box([0, 0], [1, 1])
    assert r3.dtype == torch.get_default_dtype()


def test_box_mixed_dtypes_promote():
    r = box(torch.zeros(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64))
    assert r.dtype == torch.float64


def test_box_domain():
    r = box(torch.tensor([[-0.5, 0.2]]), torch.tensor([[0.5, 2.0]]), domain=(0.0, 1.0))
    assert r.lower.tolist() == [[0.0, pytest.approx(0.2)]]
    assert r.upper.tolist() == [[0.5, 1.0]]


@pytest.mark.parametrize(
    "lower, upper, domain, match",
    [
        (torch.zeros(2), torch.ones(3), None, r"lower shape \(1, 2\) != upper shape \(1, 3\)"),
        (torch.tensor([0.0, 2.0, 5.0]), torch.tensor([1.0, 1.0, 1.0]), None, "lower > upper at 2 entries"),
        (torch.tensor([math.nan]), torch.tensor([1.0]), None, "lower bounds contain NaN"),
        (torch.tensor([0.0]), torch.tensor([math.inf]), None, "upper bounds contain inf"),
        (torch.tensor(0.0), torch.tensor(1.0), None, "at least 1 dimension"),
        (["a"], ["b"], None, "not numeric"),
        (torch.tensor([[2.0, 3.0]]), torch.tensor([[4.0, 5.0]]), (0.0, 1.0), "box 0 does not intersect the domain"),
    ],
)
def test_box_errors(lower, upper, domain, match):
    with pytest.raises(RegionError, match=match) as info:
        box(lower, upper, domain=domain)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# indexing, conversion, to_dict
# ------------------------------------------------------------------------------------------


def test_getitem():
    c = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    r = ball(c, 0.5)
    assert len(r[0]) == 1 and torch.equal(r[0].centers, c[:1])
    assert torch.equal(r[-1].lower, c[4:] - 0.5)
    assert torch.equal(r[1:3].centers, c[1:3])
    assert torch.equal(r[torch.tensor([4, 0])].centers, c[[4, 0]])
    assert torch.equal(r[[1, 1]].centers, c[[1, 1]])
    assert torch.equal(r[np.array([2])].centers, c[[2]])
    mask = torch.tensor([True, False, True, False, False])
    assert torch.equal(r[mask].centers, c[mask])
    assert torch.equal(r[torch.tensor(3)].centers, c[3:4])
    assert r[2].eps == 0.5
    assert [len(s) for s in r] == [1] * 5  # iteration via __getitem__/IndexError


def test_getitem_errors():
    r = box(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(IndexError):
        r[3]
    with pytest.raises(IndexError):
        r[torch.tensor([0, 7])]
    with pytest.raises(RegionError, match="selects no boxes"):
        r[5:]
    with pytest.raises(RegionError, match="bool mask has 2 entries"):
        r[torch.tensor([True, False])]
    with pytest.raises(RegionError, match="Region index must be"):
        r[torch.zeros(2, 2, dtype=torch.long)]


def test_getitem_per_feature_eps_kept():
    r = ball(torch.zeros(3, 2), torch.tensor([0.1, 0.2]))
    assert torch.equal(r[1].eps, r.eps)


def test_to_dtype_and_device():
    r = ball(torch.rand(3, 4, dtype=torch.float64), 0.1, domain=(0.0, 1.0))
    r32 = r.to(dtype=torch.float32)
    assert r32.dtype == torch.float32 and r32.centers.dtype == torch.float32
    assert r32.eps == r.eps and r32.description == r.description
    assert torch.allclose(r32.lower.double(), r.lower, atol=1e-7)
    assert r.to("cpu").device.type == "cpu"
    rp = ball(torch.zeros(1, 2), torch.tensor([0.1, 0.2])).to(dtype=torch.float64)
    assert rp.eps.dtype == torch.float64
    with pytest.raises(RegionError, match="floating torch dtype"):
        r.to(dtype=torch.int32)


def test_to_dict_json():
    r = ball(torch.tensor([[0.5, 0.5]]), 0.25, domain=(0.0, 1.0))
    d = r.to_dict()
    json.dumps(d)
    assert d["n"] == 1 and d["input_shape"] == [2] and d["eps"] == 0.25
    assert d["lower"] == [[0.25, 0.25]] and d["upper"] == [[0.75, 0.75]]
    assert d["centers"] == [[0.5, 0.5]] and d["dtype"] == "float32"
    big = ball(torch.zeros(2, 100), torch.full((100,), 0.1))
    db = big.to_dict()
    json.dumps(db)
    assert "lower" not in db and db["eps"]["per_feature"] is True
    assert db["eps"]["max"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------
# contains / project / sample / corners
# ------------------------------------------------------------------------------------------


def test_contains():
    r = box(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    x = torch.tensor([[0.5, 1.0], [0.5, 1.5]])
    assert r.contains(x).tolist() == [True, False]
    assert r.contains(torch.tensor([[1.05, 0.5], [1.0, 2.0]]), atol=0.1).tolist() == [True, True]
    assert r.contains(torch.tensor([[math.nan, 0.5], [1.0, 2.0]])).tolist() == [False, True]
    # leading restart dimension
    xs = torch.stack([x, r.lower, r.upper])
    assert r.contains(xs).tolist() == [[True, False], [True, True], [True, True]]
    with pytest.raises(RegionError, match="does not end in the region's shape"):
        r.contains(torch.zeros(3, 2))
    with pytest.raises(RegionError, match="atol must be >= 0"):
        r.contains(x, atol=-1.0)


def test_project():
    r = box(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    x = torch.tensor([[-1.0, 0.5], [3.0, 1.5]])
    p = r.project(x)
    assert p.tolist() == [[0.0, 0.5], [2.0, 1.5]]
    assert r.contains(p).all()
    xs = torch.randn(7, 2, 2) * 5
    ps = r.project(xs)
    assert ps.shape == (7, 2, 2) and r.contains(ps).all()
    assert torch.equal(r.project(ps), ps)
    assert r.project(torch.tensor([[5, -5], [0, 0]])).dtype == torch.float32
    with pytest.raises(RegionError, match="does not end in the region's shape"):
        r.project(torch.zeros(2, 3))


def test_sample_inside_and_shape():
    c = torch.rand(5, 3, 4)
    r = ball(c, 0.1, domain=(0.0, 1.0))
    g = torch.Generator().manual_seed(0)
    s = r.sample(100, generator=g)
    assert s.shape == (100, 5, 3, 4) and s.dtype == torch.float32
    assert r.contains(s).all()
    # reproducible with a seeded generator, and it spreads over the box
    s2 = r.sample(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, s2)
    assert (s.amax(0) - s.amin(0) > 0.5 * (r.upper - r.lower)).all()
    assert r.sample(0).shape == (0, 5, 3, 4)
    with pytest.raises(RegionError, match="sample count must be an int >= 0"):
        r.sample(-1)


def test_sample_fixed_dims_and_float64():
    r = box(torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.0, 1.5, 2.0]], dtype=torch.float64))
    s = r.sample(50)
    assert s.dtype == torch.float64
    assert (s[..., 0] == 0).all() and (s[..., 2] == 2).all()
    assert r.contains(s).all()


def test_corners_all():
    r = box(torch.tensor([[0.0, 10.0, 5.0]]), torch.tensor([[1.0, 11.0, 5.0]]))
    k = r.corners()
    assert k.shape == (4, 1, 3)  # 2 varying dims
    got = {tuple(v.tolist()) for v in k[:, 0]}
    assert got == {(0.0, 10.0, 5.0), (1.0, 10.0, 5.0), (0.0, 11.0, 5.0), (1.0, 11.0, 5.0)}
    assert (k[..., 2] == 5.0).all()


def test_corners_boxes_with_different_varying_dims():
    lower = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    upper = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    r = box(lower, upper)
    assert r.num_varying().tolist() == [3, 1]
    k = r.corners()
    assert k.shape == (8, 2, 3)
    assert len({tuple(v.tolist()) for v in k[:, 0]}) == 8
    assert {tuple(v.tolist()) for v in k[:, 1]} == {(0.0, 0.0, 0.0), (0.0, 1.0, 0.0)}


def test_corners_random_when_too_many():
    c = torch.rand(3, 20)
    r = ball(c, 0.1)
    fixed = box(torch.cat([torch.zeros(1, 10), torch.ones(1, 10)], 1), torch.cat([torch.ones(1, 10), torch.ones(1, 10)], 1))
    k = r.corners(max_corners=64, generator=torch.Generator().manual_seed(1))
    assert k.shape == (64, 3, 20)
    assert (torch.isclose(k, r.lower) | torch.isclose(k, r.upper)).all()
    assert r.contains(k).all()
    assert len({tuple(v.tolist()) for v in k[:, 0]}) > 50
    # exactly 10 varying dims -> 1024 corners enumerated, fixed dims stay
    kf = fixed.corners(max_corners=1024)
    assert kf.shape == (1024, 1, 20) and (kf[..., 10:] == 1).all()
    assert len({tuple(v.tolist()) for v in kf[:, 0]}) == 1024
    kr = fixed.corners(max_corners=100)
    assert kr.shape == (100, 1, 20) and (kr[..., 10:] == 1).all()
    with pytest.raises(RegionError, match="max_corners must be an int >= 1"):
        r.corners(max_corners=0)


def test_corners_large_input():
    r = ball(torch.rand(2, 1, 28, 28), 0.01, domain=(0.0, 1.0))
    k = r.corners(max_corners=16)
    assert k.shape == (16, 2, 1, 28, 28) and r.contains(k).all()


# ------------------------------------------------------------------------------------------
# hypothesis property test
# ------------------------------------------------------------------------------------------

_finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def _ball_case(draw):
    n = draw(st.integers(1, 3))
    d = draw(st.integers(1, 4))
    centers = draw(st.lists(st.lists(_finite, min_size=d, max_size=d), min_size=n, max_size=n))
    eps = draw(st.floats(min_value=0, max_value=50, allow_nan=False, width=32))
    a = draw(_finite)
    b = draw(_finite)
    use_domain = draw(st.booleans())
    domain = (min(a, b), max(a, b)) if use_domain else None
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.tensor(centers, dtype=torch.float32), eps, domain, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ball_case())
def test_ball_property(case):
    centers, eps, domain, seed = case
    try:
        r = ball(centers, eps, domain=domain)
    except RegionError as exc:
        # only legitimate failure: some ball misses the domain
        assert domain is not None and "does not intersect the domain" in str(exc)
        lo, hi = domain
        assert ((centers + eps < lo) | (centers - eps > hi)).any()
        return
    clipped = centers if domain is None else centers.clamp(domain[0], domain[1])
    assert r.contains(clipped).all()
    if domain is not None:
        assert (r.lower >= domain[0]).all() and (r.upper <= domain[1]).all()
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, *centers.shape, generator=g) - 0.5) * 400
    p = r.project(x)
    assert r.contains(p).all()
    assert torch.equal(r.project(p), p)
    inside = r.contains(x)
    assert torch.equal(p[inside], x[inside])
    assert r.contains(r.sample(3, generator=g)).all()
    assert r.contains(r.corners(max_corners=8, generator=g)).all()


# ------------------------------------------------------------------------------------------
# load_points / load_labels
# ------------------------------------------------------------------------------------------


def test_load_points_formats(tmp_path):
    x = torch.rand(4, 1, 3, 3)
    torch.save(x, tmp_path / "a.pt")
    assert torch.equal(load_points(tmp_path / "a.pt"), x)
    for key in ("x", "data", "inputs", "points"):
        torch.save({key: x, "other": torch.zeros(1)}, tmp_path / f"{key}.pt")
        assert torch.equal(load_points(str(tmp_path / f"{key}.pt")), x)
    np.save(tmp_path / "b.npy", x.numpy().astype(np.float64))
    got = load_points(tmp_path / "b.npy")
    assert got.dtype == torch.float64 and torch.allclose(got.float(), x)
    np.save(tmp_path / "u8.npy", np.arange(12, dtype=np.uint8).reshape(3, 4))
    got = load_points(tmp_path / "u8.npy")
    assert got.dtype == torch.get_default_dtype() and got[2, 3] == 11.0
    np.save(tmp_path / "one.npy", np.array([1.0, 2.0]))
    assert load_points(tmp_path / "one.npy").shape == (1, 2)
    np.savez(tmp_path / "c.npz", inputs=np.ones((2, 3)), y=np.zeros(2))
    assert load_points(tmp_path / "c.npz").shape == (2, 3)
    torch.save([torch.zeros(3), torch.ones(3)], tmp_path / "list.pt")
    assert load_points(tmp_path / "list.pt").shape == (2, 3)


def test_load_points_errors(tmp_path):
    with pytest.raises(RegionError, match="points file not found"):
        load_points(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(RegionError, match="cannot read points file") as info:
        load_points(tmp_path / "bad.pt")
    assert "\n" not in str(info.value)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RegionError, match="cannot read points file"):
        load_points(tmp_path / "bad.npy")
    (tmp_path / "p.csv").write_text("1,2\n")
    with pytest.raises(RegionError, match=r"unknown points file suffix '\.csv'"):
        load_points(tmp_path / "p.csv")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(RegionError, match="not numeric"):
        load_points(tmp_path / "s.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RegionError, match="cannot read points file|not numeric"):
        load_points(tmp_path / "obj.npy")
    torch.save(torch.tensor([[True, False]]), tmp_path / "bool.pt")
    with pytest.raises(RegionError, match="not numeric"):
        load_points(tmp_path / "bool.pt")
    torch.save({"wrong": torch.zeros(2, 2)}, tmp_path / "k.pt")
    with pytest.raises(RegionError, match="has no 'x'/'data'/'inputs'/'points' key"):
        load_points(tmp_path / "k.pt")
    torch.save({"x": "hello"}, tmp_path / "str.pt")
    with pytest.raises(RegionError, match="not numeric"):
        load_points(tmp_path / "str.pt")
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(RegionError, match="contain NaN"):
        load_points(tmp_path / "nan.npy")
    np.save(tmp_path / "inf.npy", np.array([[0.0, np.inf]]))
    with pytest.raises(RegionError, match="contain inf"):
        load_points(tmp_path / "inf.npy")
    np.save(tmp_path / "big_endian.npy", np.ones((2, 2), dtype=">f4"))
    assert load_points(tmp_path / "big_endian.npy").tolist() == [[1.0, 1.0], [1.0, 1.0]]
    np.save(tmp_path / "scalar.npy", np.array(1.0))
    with pytest.raises(RegionError, match="holds a scalar"):
        load_points(tmp_path / "scalar.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(RegionError, match="holds no points"):
        load_points(tmp_path / "empty.npy")
    with pytest.raises(RegionError, match="not a file"):
        load_points(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_points_refuses_pickles(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(RegionError, match="cannot read points file") as info:
        load_points(tmp_path / "evil.pt")
    assert "\n" not in str(info.value)


def test_load_labels(tmp_path):
    y = torch.tensor([3, 1, 4, 1, 5])
    torch.save(y, tmp_path / "y.pt")
    assert torch.equal(load_labels(tmp_path / "y.pt"), y)
    torch.save({"x": torch.zeros(5, 2), "y": y}, tmp_path / "d.pt")
    assert torch.equal(load_labels(tmp_path / "d.pt"), y)
    torch.save({"labels": y.int()}, tmp_path / "l.pt")
    got = load_labels(tmp_path / "l.pt")
    assert got.dtype == torch.int64 and torch.equal(got, y)
    np.save(tmp_path / "y.npy", y.numpy().astype(np.float64).reshape(5, 1))
    assert torch.equal(load_labels(tmp_path / "y.npy"), y)
    np.save(tmp_path / "y0.npy", np.array(7))
    assert load_labels(tmp_path / "y0.npy").tolist() == [7]


def test_load_labels_errors(tmp_path):
    with pytest.raises(RegionError, match="labels file not found"):
        load_labels(tmp_path / "nope.npy")
    np.save(tmp_path / "f.npy", np.array([0.5, 1.0]))
    with pytest.raises(RegionError, match="not integers"):
        load_labels(tmp_path / "f.npy")
    np.save(tmp_path / "nan.npy", np.array([np.nan, 1.0]))
    with pytest.raises(RegionError, match="contain NaN or inf"):
        load_labels(tmp_path / "nan.npy")
    np.save(tmp_path / "2d.npy", np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(RegionError, match=r"must be 1-D, got shape \(3, 4\)"):
        load_labels(tmp_path / "2d.npy")
    np.save(tmp_path / "neg.npy", np.array([1, -1]))
    with pytest.raises(RegionError, match="negative"):
        load_labels(tmp_path / "neg.npy")
    torch.save({"x": torch.zeros(2)}, tmp_path / "k.pt")
    with pytest.raises(RegionError, match="has no 'y'/'labels' key"):
        load_labels(tmp_path / "k.pt")
    np.save(tmp_path / "e.npy", np.zeros(0, dtype=np.int64))
    with pytest.raises(RegionError, match="holds no labels"):
        load_labels(tmp_path / "e.npy")
    (tmp_path / "y.txt").write_text("1\n")
    with pytest.raises(RegionError, match="unknown labels file suffix"):
        load_labels(tmp_path / "y.txt")


# ------------------------------------------------------------------------------------------
# VNN-LIB
# ------------------------------------------------------------------------------------------


def _write(tmp_path, text, name="p.vnnlib"):
    p = tmp_path / name
    p.write_text(text)
    return p


SIMPLE = """
; a comment (with parens
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)

(assert (<= X_0 1.5))   ; trailing comment
(assert (>= X_0 -0.5))
(assert (<= -2 X_1))      ; reversed: X_1 >= -2
(assert (>= 3e0 X_1))     ; reversed: X_1 <= 3
(assert (and (>= X_2 (- 0.25)) (< X_2 0.75)))
(assert (<= X_0 2.0))     ; looser: ignored by intersection
(assert (<= Y_0 Y_1))     ; output property, ignored
(check-sat)
"""


def test_vnnlib_simple(tmp_path):
    r = from_vnnlib(_write(tmp_path, SIMPLE), dtype=torch.float64)
    assert len(r) == 1 and r.input_shape == (3,)
    assert r.lower.tolist() == [[-0.5, -2.0, -0.25]]
    assert r.upper.tolist() == [[1.5, 3.0, 0.75]]
    assert "p.vnnlib" in r.description
    assert from_vnnlib(tmp_path / "p.vnnlib").dtype == torch.get_default_dtype()


def test_vnnlib_or_of_and(tmp_path):
    text = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (<= X_1 1.0))
(assert (or
    (and (>= X_0 0.0) (<= X_0 1.0) (>= X_1 0.0))
    (and (>= X_0 2.0) (<= X_0 3.0) (>= X_1 0.5) (<= Y_0 5.0))
    (and (= X_0 4.0) (>= X_1 -1.0))
))
(assert (or (and (>= Y_0 Y_1)) (and (<= Y_0 0.0))))
"""
    r = from_vnnlib(_write(tmp_path, text), dtype=torch.float64)
    assert len(r) == 3
    assert r.lower.tolist() == [[0.0, 0.0], [2.0, 0.5], [4.0, -1.0]]
    assert r.upper.tolist() == [[1.0, 1.0], [3.0, 1.0], [4.0, 1.0]]


def test_vnnlib_input_shape(tmp_path):
    decls = "".join(f"(declare-const X_{i} Real)\n" for i in range(6))
    bounds = "".join(f"(assert (>= X_{i} {i}))\n(assert (<= X_{i} {i + 1}))\n" for i in range(6))
    p = _write(tmp_path, decls + bounds)
    r = from_vnnlib(p, input_shape=(1, 2, 3))
    assert r.lower.shape == (1, 1, 2, 3)
    assert r.lower.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(RegionError, match=r"input_shape \(4,\) has 4 elements but p.vnnlib declares 6 inputs"):
        from_vnnlib(p, input_shape=(4,))


def test_vnnlib_quoted_symbols_and_declare_fun(tmp_path):
    text = "(declare-fun |X_0| () Real)\n(assert (>= |X_0| 1))(assert (<= X_0 2))"
    r = from_vnnlib(_write(tmp_path, text))
    assert r.lower.tolist() == [[1.0]] and r.upper.tolist() == [[2.0]]


@pytest.mark.parametrize(
    "text, match",
    [
        ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))",
         "X_1 has no lower bound"),
        ("(declare-const X_0 Real)\n(assert (>= X_0 0))", "X_0 has no upper bound"),
        ("(declare-const X_0 Real)\n(assert (>= X_0 2))\n(assert (<= X_0 1))", "X_0 has lower bound 2.0 > upper bound 1.0"),
        ("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(assert (>= X_0 0))", "not contiguous: missing X_1"),
        ("(declare-const Y_0 Real)\n(assert (>= Y_0 0))", "no input variables"),
        ("(declare-const X_0 Real)\n(assert (>= X_0 0)", r"p.vnnlib:2: parse error: unclosed"),
        ("(declare-const X_0 Real))", r"p.vnnlib:1: parse error: unexpected '\)'"),
        ("(declare-const X_0 Real)\nfoo", r"p.vnnlib:2: parse error: atom 'foo' outside parentheses"),
        ("(declare-const X_0 Real)\n(assert (>= X_0 0) (<= X_0 1))", "parse error: assert takes one expression"),
        ("(declare-const X_0 Real)\n(declare-const X_0 Real)", "X_0 declared twice"),
        ("(declare-const X_0 Real)\n(assert (>= X_1 0))", "X_1 is used but not declared"),
        ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(assert (<= X_0 X_1))", "need one X variable and a constant"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 abc))", "unknown symbol 'abc'"),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Y_0))", "mixing X and Y"),
        ("(declare-const X_0 Real)\n(assert (not (<= X_0 1)))", "unsupported negated input constraint"),
        ("(declare-const X_0 Real)\n(assert (or (and (<= X_0 1) (>= X_0 0))))\n(assert (or (and (<= X_0 1) (>= X_0 0))))",
         "more than one 'or'"),
        ("(declare-const X_0 Real)\n(assert (or (or (<= X_0 1)) (>= X_0 0)))", "unsupported nested 'or'"),
        ("(declare-const X_0 Real)\n(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 2))))",
         "X_0 has no lower bound in disjunct 1"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1 2))", "unsupported input constraint"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1e400))\n(assert (>= X_0 0))", "p.vnnlib:2: bound in .* is not finite"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1e39))\n(assert (>= X_0 0))", "upper bounds .*float32.* contain inf"),
    ],
)
def test_vnnlib_errors(tmp_path, text, match):
    with pytest.raises(RegionError, match=match) as info:
        from_vnnlib(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_vnnlib_missing_file(tmp_path):
    with pytest.raises(RegionError, match="vnnlib file not found"):
        from_vnnlib(tmp_path / "nope.vnnlib")
    (tmp_path / "bin.vnnlib").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(RegionError, match="cannot read vnnlib file"):
        from_vnnlib(tmp_path / "bin.vnnlib")


# ------------------------------------------------------------------------------------------
# generated ACAS Xu VNN-LIB files
# ------------------------------------------------------------------------------------------


def _acas_props():
    return json.loads((ACAS / "properties.json").read_text())["boxes"]


def test_acas_vnnlib_files_match_properties():
    boxes = _acas_props()
    files = sorted((ACAS / "vnnlib").glob("prop_*.vnnlib"))
    assert {f.stem[len("prop_"):] for f in files} == set(boxes)
    for prop, b in boxes.items():
        path = ACAS / "vnnlib" / f"prop_{prop}.vnnlib"
        r = from_vnnlib(path, dtype=torch.float64)
        assert len(r) == 1 and r.input_shape == (5,)
        assert r.lower[0].tolist() == [float(v) for v in b["lower"]], prop
        assert r.upper[0].tolist() == [float(v) for v in b["upper"]], prop
        text = path.read_text()
        assert "(declare-const Y_4 Real)" in text
        # the output part is a comment only
        assert not any("Y_" in line.split(";")[0] and "assert" in line for line in text.splitlines())
        assert "; Output (not asserted): target output Y_" in text
        r32 = from_vnnlib(path)
        assert r32.dtype == torch.float32 and r32.contains(r.midpoints.float()).all()


def test_acas_vnnlib_targets_match_published():
    import csv

    with (ACAS / "published.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for prop in _acas_props():
        targets = {r["target"] for r in rows if r["property"] == prop}
        text = (ACAS / "vnnlib" / f"prop_{prop}.vnnlib").read_text()
        for t in targets:
            assert f"target output Y_{t}" in text


def test_acas_generator_is_deterministic(tmp_path):
    before = {p.name: p.read_text() for p in (ACAS / "vnnlib").glob("*.vnnlib")}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import make_acas_vnnlib as gen
    finally:
        sys.path.pop(0)
    boxes = _acas_props()
    targets, nets, eps = gen.published_info(ACAS / "published.csv")
    for prop, b in boxes.items():
        text = gen.render(prop, b["lower"], b["upper"], targets.get(prop, set()), nets.get(prop, set()), eps)
        assert text == before[f"prop_{prop}.vnnlib"], prop
