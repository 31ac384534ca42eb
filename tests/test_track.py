"""modeldiff.track: drift along versions and stability across an ensemble, against direct bound/search calls;
found <= certified; identical models; the medoid; every argument error; and the example generator."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import modeldiff
from modeldiff import regions
from modeldiff.errors import BoundError, IncompatibleModelsError, ModelDiffError, SearchError
from modeldiff.results import BoundResult
from modeldiff.track import DriftResult, StabilityResult, drift, stability
from tests._models import mlp, perturbed

REPO = Path(__file__).resolve().parents[1]
FAST = {"restarts": 2, "steps": 5, "seed": 3}


@pytest.fixture(scope="module")
def region():
    g = torch.Generator().manual_seed(0)
    return regions.ball(torch.rand(6, 4, generator=g, dtype=torch.float64), 0.1)


@pytest.fixture(scope="module")
def chain():
    base = mlp([4, 8, 8, 3], seed=1)
    v1 = perturbed(base, 0.05, seed=2)
    v2 = perturbed(v1, 0.05, seed=3)
    return [base, v1, v2]


def _direct(a, b, region, divergence="linf", method="auto"):
    cert = modeldiff.bound(a, b, region, divergence, method)
    found = modeldiff.search(a, b, region, divergence, restarts=FAST["restarts"], steps=FAST["steps"],
                             seed=FAST["seed"])
    return found.found, cert.upper, cert.method


def _labels(model, region):
    with torch.no_grad():
        return model(region.midpoints).argmax(1)


# ------------------------------------------------------------------------------------------------------- drift


def test_drift_matches_direct_calls(chain, region):
    res = drift(chain, region, names=["v0", "v1", "v2"], **FAST)
    assert isinstance(res, DriftResult)
    assert res.versions == ("v1", "v2") and len(res) == 2 and res.n_regions == 6
    for shape_of in (res.found_vs_first, res.certified_vs_first, res.found_vs_previous, res.certified_vs_previous):
        assert shape_of.shape == (2, 6)
    for k in (1, 2):
        f, c, m = _direct(chain[0], chain[k], region)
        assert torch.equal(res.found_vs_first[k - 1], f)
        assert torch.equal(res.certified_vs_first[k - 1], c)
        assert res.methods_vs_first[k - 1] == m == "diff"
        f, c, m = _direct(chain[k - 1], chain[k], region)
        assert torch.equal(res.found_vs_previous[k - 1], f)
        assert torch.equal(res.certified_vs_previous[k - 1], c)
        l0, lp, lk = _labels(chain[0], region), _labels(chain[k - 1], region), _labels(chain[k], region)
        assert float(res.disagreement_vs_first[k - 1]) == pytest.approx(float((l0 != lk).double().mean()))
        assert float(res.disagreement_vs_previous[k - 1]) == pytest.approx(float((lp != lk).double().mean()))
    # the first version's two comparisons are the same pair
    assert torch.equal(res.found_vs_first[0], res.found_vs_previous[0])
    assert torch.equal(res.certified_vs_first[0], res.certified_vs_previous[0])


def test_drift_summary_and_json(chain, region):
    res = drift(chain, region, **FAST)
    rows = res.summary()
    assert [r["name"] for r in rows] == ["m1", "m2"] and [r["previous"] for r in rows] == ["m0", "m1"]
    assert rows[1]["certified_vs_first_median"] == pytest.approx(float(res.certified_vs_first[1].median()))
    assert rows[1]["certified_vs_first_max"] == pytest.approx(float(res.certified_vs_first[1].max()))
    assert rows[0]["found_vs_previous_median"] == pytest.approx(float(res.found_vs_previous[0].median()))
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["kind"] == "drift" and d["names"] == ["m0", "m1", "m2"] and d["divergence"] == "linf"
    assert d["settings"] == {"restarts": 2, "steps": 5, "seed": 3, "dtype": "float64", "device": "cpu",
                             "batch_size": 128}
    assert d["region"]["n"] == 6
    assert d["per_region"]["certified_vs_first"] == res.certified_vs_first.tolist()


@pytest.mark.parametrize("divergence", ["linf", "l2", "tv", "kl", "top1", "delta"])
def test_found_never_above_certified(chain, region, divergence):
    res = drift(chain, region, divergence=divergence, method="crown", **FAST)
    assert (res.found_vs_first <= res.certified_vs_first + 1e-9).all()
    assert (res.found_vs_previous <= res.certified_vs_previous + 1e-9).all()
    assert (res.found_vs_first >= 0).all()


def test_identical_models_give_zero(region):
    a = mlp([4, 8, 8, 3], seed=5)
    res = drift([a, copy.deepcopy(a), a], region, **FAST)
    for t in (res.found_vs_first, res.certified_vs_first, res.found_vs_previous, res.certified_vs_previous,
              res.disagreement_vs_first, res.disagreement_vs_previous):
        assert float(t.abs().max()) == 0.0
    st = stability([a, copy.deepcopy(a)], region, **FAST)
    assert float(st.certified.abs().max()) == 0.0 and float(st.found.abs().max()) == 0.0


def test_two_models_and_float32_models_unchanged(region):
    a = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[2].bias.add_(0.25)
    before = [p.clone() for p in a.parameters()]
    res = drift([a, b], region, **FAST)
    assert len(res) == 1
    # b = a + 0.25 on every output: the difference is exactly 0.25 everywhere
    assert torch.allclose(res.certified_vs_first[0], torch.full((6,), 0.25, dtype=torch.float64))
    assert torch.allclose(res.found_vs_first[0], torch.full((6,), 0.25, dtype=torch.float64))
    assert all(p.dtype == torch.float32 for p in a.parameters())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))


def test_unsound_bound_is_logged(chain, region, monkeypatch, caplog):
    import modeldiff.track.compute as track

    def too_small(a, b, reg, divergence, method, **kwargs):
        return BoundResult(divergence=divergence, method="fake", upper=torch.zeros(len(reg), dtype=torch.float64))

    monkeypatch.setattr(track, "bound", too_small)
    with caplog.at_level(logging.WARNING, logger="modeldiff.track.compute"):
        drift(chain[:2], region, **FAST)
    assert any("not sound" in r.getMessage() for r in caplog.records)


def test_progress_and_no_print(chain, region, capsys):
    drift(chain, region, progress=True, **FAST)
    out = capsys.readouterr()
    assert out.out == ""


# --------------------------------------------------------------------------------------------------- stability


def test_stability_matches_direct_calls(chain, region):
    res = stability(chain, region, names=["a", "b", "c"], **FAST)
    assert isinstance(res, StabilityResult)
    assert res.found.shape == res.certified.shape == (3, 3, 6)
    assert len(res) == 3 and res.pairs == [(0, 1), (0, 2), (1, 2)]
    for i, j in res.pairs:
        f, c, m = _direct(chain[i], chain[j], region)
        assert torch.equal(res.found[i, j], f) and torch.equal(res.found[j, i], f)
        assert torch.equal(res.certified[i, j], c) and torch.equal(res.certified[j, i], c)
        dis = float((_labels(chain[i], region) != _labels(chain[j], region)).double().mean())
        assert float(res.disagreement[i, j]) == pytest.approx(dis)
    assert [m for _, _, m in res.pair_methods] == ["diff"] * 3
    for t in (res.found, res.certified):
        assert float(t[torch.arange(3), torch.arange(3)].abs().max()) == 0.0
    assert (res.found <= res.certified + 1e-9).all()
    assert torch.equal(res.certified_median, res.certified.median(dim=2).values)
    assert torch.equal(res.found_max, res.found.amax(dim=2))


def test_stability_asymmetric_kl(chain, region):
    res = stability(chain[:2], region, divergence="kl", method="crown", **FAST)
    assert res.pairs == [(0, 1), (1, 0)]
    assert torch.equal(res.certified[1, 0], modeldiff.bound(chain[1], chain[0], region, "kl", "crown").upper)
    assert torch.equal(res.certified[0, 1], modeldiff.bound(chain[0], chain[1], region, "kl", "crown").upper)
    assert (res.found <= res.certified + 1e-9).all()


def test_medoid_spread_and_top_regions(region):
    base = mlp([4, 8, 8, 3], seed=1)
    far = mlp([4, 8, 8, 3], seed=9)
    p1, p2 = perturbed(base, 0.05, seed=2), perturbed(base, 0.05, seed=3)
    res = stability([far, p1, base, p2], region, names=["far", "p1", "base", "p2"], **FAST)
    med = res.certified_median
    assert torch.allclose(res.medoid_scores, med.sum(dim=1))
    assert res.medoid == int(torch.argmin(med.sum(dim=1))) == 2
    assert int(torch.argmax(res.medoid_scores)) == 0  # the far model is the outlier
    spread = res.spread()
    pair_meds = torch.tensor([float(med[i, j]) for i, j in res.pairs])
    assert spread["pairs"] == 6
    assert spread["certified_median_of_pair_medians"] == pytest.approx(float(pair_meds.median()))
    assert spread["certified_max_of_pair_medians"] == pytest.approx(float(pair_meds.max()))
    assert spread["certified_max"] == pytest.approx(float(res.certified.max()))
    assert spread["found_max"] == pytest.approx(float(res.found.max()))
    per_region = res.certified.amax(dim=(0, 1))
    assert torch.equal(res.region_spread_certified, per_region)
    assert torch.equal(res.region_spread_found, res.found.amax(dim=(0, 1)))
    top = res.top_regions(3)
    assert len(top) == 3
    assert [t["certified"] for t in top] == sorted(per_region.tolist(), reverse=True)[:3]
    assert top[0]["index"] == int(per_region.argmax())
    assert "far" in top[0]["certified_pair"]
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["medoid"] == 2 and d["medoid_name"] == "base" and len(d["top_regions"]) == 6
    assert d["certified_median"] == med.tolist()
    with pytest.raises(ModelDiffError, match=r"expected n >= 1, got 0"):
        res.top_regions(0)
    with pytest.raises(TypeError, match=r"expected n to be an int, got str"):
        res.top_regions("3")


# ------------------------------------------------------------------------------------------------------ errors


class _Sum(nn.Module):
    def forward(self, x):
        return x.sum(dim=1)


def _error_cases(chain, region):
    a, b = chain[0], chain[1]
    ok = {"models": [a, b], "region": region}
    return [
        ({**ok, "models": a}, TypeError, r"expected models to be a list or tuple of torch\.nn\.Module, got Sequential"),
        ({**ok, "models": [a, "b"]}, TypeError, r"expected models\[1\] to be a torch\.nn\.Module, got str"),
        ({**ok, "models": [a]}, ModelDiffError, r"expected at least 2 models, got 1"),
        ({**ok, "names": "ab"}, TypeError, r"expected names to be a list of str, got str"),
        ({**ok, "names": ["a", 2]}, TypeError, r"expected names\[1\] to be a str, got int"),
        ({**ok, "names": ["a"]}, ModelDiffError, r"expected one name per model \(2\), got 1"),
        ({**ok, "names": ["a", "a"]}, ModelDiffError, r"model names must be unique, got 'a' twice"),
        ({**ok, "names": ["a", ""]}, ModelDiffError, r"model names must not be empty"),
        ({**ok, "region": torch.zeros(2, 4)}, TypeError, r"expected region to be a modeldiff\.regions\.Region, "
                                                         r"got Tensor"),
        ({**ok, "divergence": 3}, TypeError, r"expected divergence to be a str, got int"),
        ({**ok, "divergence": "cosine"}, BoundError, r"unknown divergence 'cosine'"),
        ({**ok, "method": None}, TypeError, r"expected method to be a str, got NoneType"),
        ({**ok, "method": "exact"}, BoundError, r"unknown bound method 'exact'; expected one of auto"),
        ({**ok, "restarts": 0}, SearchError, r"expected restarts >= 1, got 0"),
        ({**ok, "restarts": True}, TypeError, r"expected restarts to be an int, got bool"),
        ({**ok, "steps": 2.0}, TypeError, r"expected steps to be an int, got float"),
        ({**ok, "seed": "0"}, TypeError, r"expected seed to be an int, got str"),
        ({**ok, "batch_size": 0}, BoundError, r"expected batch_size >= 1, got 0"),
        ({**ok, "progress": 1}, TypeError, r"expected progress to be a bool, got int"),
        ({**ok, "dtype": 64}, TypeError, r"expected dtype to be a torch\.dtype or its name, got int"),
        ({**ok, "dtype": "float16"}, BoundError, r"unknown dtype 'float16'"),
        ({**ok, "device": "nowhere"}, BoundError, r"unknown device 'nowhere'"),
        ({**ok, "models": [a, mlp([4, 8, 5], seed=1)]}, IncompatibleModelsError,
         r"models 'm0' and 'm1' give outputs of different shapes: \(6, 3\) vs \(6, 5\)"),
        ({**ok, "models": [a, mlp([5, 8, 3], seed=1)]}, IncompatibleModelsError,
         r"model 'm1' rejects inputs of shape \(4,\): "),
        ({**ok, "models": [a, _Sum()]}, IncompatibleModelsError,
         r"model 'm1': expected outputs of shape \[N, K\], got \(6,\)"),
    ]


@pytest.mark.parametrize("verb", [drift, stability])
def test_every_error_message(chain, region, verb):
    for kwargs, error, pattern in _error_cases(chain, region):
        kwargs = dict(kwargs)
        models, reg = kwargs.pop("models"), kwargs.pop("region")
        with pytest.raises(error, match=pattern) as info:
            verb(models, reg, **{"restarts": 1, "steps": 1, **kwargs})
        assert "\n" not in str(info.value), pattern


# ------------------------------------------------------------------------------------------- example generator


def test_example_generator_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_digits_versions", REPO / "examples" / "make_digits_versions.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    out = tmp_path / "digits"
    assert gen.main(["--out", str(out), "--rounds", "2", "--members", "2", "--epochs", "2", "--test-points", "10"]) == 0
    printed = capsys.readouterr().out
    for name in ("round0", "round1", "seed0", "seed1"):
        assert f"{name}: test accuracy" in printed
        assert (out / f"{name}.onnx").is_file()
    model = modeldiff.load_model(out / "round1.onnx")
    x = regions.load_points(out / "test.pt")
    y = regions.load_labels(out / "labels.pt")
    assert x.shape == (10, 64) and x.dtype == torch.float64 and y.shape == (10,)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert model(x).shape == (10, 10)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]) == {"round0", "round1", "seed0", "seed1"}
    assert 0.0 <= manifest["models"]["seed0"]["test_accuracy"] <= 1.0
    # the loaded chain is a Linear/ReLU chain, so the tight differential bound applies
    other = modeldiff.load_model(out / "round0.onnx")
    assert modeldiff.bound(other, model, regions.ball(x[:2], 0.01), "linf").method == "diff"
