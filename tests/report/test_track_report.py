"""modeldiff.report.track_report: the drift and stability report folders (files, the JSON carries what is shown
and plotted, provenance, atomic writes)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch

from modeldiff import regions
from modeldiff.errors import ModelDiffError
from modeldiff.report import track_report
from modeldiff.report._output import _fmt, provenance
from modeldiff.report.track_report import check_output_dir, write_drift, write_stability
from modeldiff.track import DriftResult, drift, stability
from tests._models import mlp, perturbed

FAST = {"restarts": 1, "steps": 3, "seed": 0}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def models():
    base = mlp([4, 8, 3], seed=1)
    return [base, perturbed(base, 0.05, 2), perturbed(base, 0.1, 3)]


@pytest.fixture(scope="module")
def region():
    return regions.ball(torch.rand(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.1)


@pytest.fixture(scope="module")
def drift_result(models, region):
    return drift(models, region, names=["v0", "v1", "v2"], **FAST)


@pytest.fixture(scope="module")
def stability_result(models, region):
    return stability(models, region, names=["s0", "s1", "s2"], **FAST)


def _text(folder: Path) -> str:
    return html.unescape((folder / "index.html").read_text(encoding="utf-8"))


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_write_drift_files_and_numbers(drift_result, tmp_path):
    out = write_drift(drift_result, tmp_path / "drift")
    assert out == tmp_path / "drift"
    assert sorted(p.name for p in out.iterdir()) == ["disagreement.png", "drift.json", "drift.png", "index.html"]
    for png in ("drift.png", "disagreement.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    d = json.loads((out / "drift.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert d["result"] == json.loads(json.dumps(drift_result.to_dict()))
    series = d["figures"]["drift.png"]
    rows = drift_result.summary()
    assert series["version"] == [1, 2] and series["name"] == ["v1", "v2"]
    for ref in ("first", "previous"):
        for what in ("found", "certified"):
            for stat in ("median", "max"):
                key = f"{what}_vs_{ref}_{stat}"
                assert series[key] == [r[key] for r in rows]
        assert d["figures"]["disagreement.png"][f"disagreement_vs_{ref}"] == [r[f"disagreement_vs_{ref}"] for r in rows]
    assert series["certified_vs_first_median"][1] == pytest.approx(float(drift_result.certified_vs_first[1].median()))
    page = _text(out)
    assert "<script" not in page.lower()
    for r in rows:  # every number of the table is in the JSON
        for key in ("found_vs_first_median", "certified_vs_first_median", "certified_vs_previous_max",
                    "found_vs_previous_max"):
            assert _fmt(r[key]) in page
        assert f"{100 * r['disagreement_vs_first']:.1f}%" in page
    assert 'src="drift.png"' in page and 'src="disagreement.png"' in page


def test_provenance_header(drift_result, tmp_path):
    out = write_drift(drift_result, tmp_path / "in-memory")
    head = json.loads((out / "drift.json").read_text())["provenance"]
    assert set(head) >= {"models", "versions", "date", "settings"}
    assert head["models"] == {n: {"path": None, "sha256": "in-memory"} for n in ("v0", "v1", "v2")}
    s = head["settings"]
    assert s["divergence"] == "linf" and s["method"] == "auto" and s["seed"] == 0 and s["restarts"] == 1
    assert s["region"]["n"] == 5 and head["versions"]["torch"] == torch.__version__

    files = {}
    for i, name in enumerate(("v0", "v1", "v2")):
        files[name] = tmp_path / f"{name}.bin"
        files[name].write_bytes(bytes([i]) * 10)
    given = provenance(files, data="points.pt", eps=0.1, seed=7)
    out = write_drift(drift_result, tmp_path / "files", provenance=given)
    head = json.loads((out / "drift.json").read_text())["provenance"]
    assert head["models"]["v1"]["path"] == str(files["v1"]) and len(head["models"]["v1"]["sha256"]) == 64
    assert head["settings"]["data"] == "points.pt" and head["settings"]["seed"] == 7  # given values win
    assert head["settings"]["divergence"] == "linf"  # completed from the result
    page = _text(out)
    assert head["models"]["v2"]["sha256"] in page and "points.pt" in page
    with pytest.raises(TypeError, match=r"expected provenance to be a dict or None, got list"):
        write_drift(drift_result, tmp_path / "bad", provenance=[1])
    assert not (tmp_path / "bad").exists()


def test_write_stability_files_and_numbers(stability_result, tmp_path):
    out = write_stability(stability_result, tmp_path / "stab")
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "max.png", "median.png", "regions.png",
                                                    "stability.json"]
    for png in ("median.png", "max.png", "regions.png"):
        assert (out / png).read_bytes().startswith(PNG)
    d = json.loads((out / "stability.json").read_text())
    res = d["result"]
    assert res == json.loads(json.dumps(stability_result.to_dict()))
    assert res["certified_median"] == stability_result.certified_median.tolist()
    assert res["found_median"] == stability_result.found_median.tolist()
    assert res["region_spread_certified"] == stability_result.region_spread_certified.tolist()
    assert res["medoid_scores"] == stability_result.medoid_scores.tolist()
    page = _text(out)
    assert "<script" not in page.lower()
    assert f"Medoid (closest to the others): {res['medoid_name']}" in page
    for matrix in ("certified_median", "found_median", "certified_max", "found_max"):
        for i, row in enumerate(res[matrix]):
            for j, v in enumerate(row):
                if i != j:
                    assert _fmt(v) in page
    for key in ("certified_median_of_pair_medians", "found_max_of_pair_medians", "certified_max"):
        assert _fmt(res["spread"][key]) in page
    for t in res["top_regions"]:
        assert _fmt(t["certified"]) in page and " vs ".join(t["certified_pair"]) in page
    assert d["provenance"]["settings"]["divergence"] == "linf"


def test_replaces_earlier_report_only(drift_result, stability_result, tmp_path):
    out = tmp_path / "r"
    write_drift(drift_result, out)
    (out / "drift.json").write_text("{}")
    write_drift(drift_result, out)  # an earlier drift report is replaced
    assert json.loads((out / "drift.json").read_text())["result"]["kind"] == "drift"
    with pytest.raises(ModelDiffError, match=r"holds no earlier report \(stability\.json\)"):
        write_stability(stability_result, out)  # a drift folder is not a stability folder
    assert (out / "drift.png").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ModelDiffError, match=r"is not empty and holds no earlier report \(drift\.json\)"):
        write_drift(drift_result, other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ModelDiffError, match=r"output path exists and is not a folder"):
        write_stability(stability_result, afile)
    assert _leftovers(tmp_path, "r") == [] and _leftovers(tmp_path, "other") == []


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new", "drift.json")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "drift.json")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ModelDiffError, match=r"full is not empty and holds no earlier report"):
        check_output_dir(tmp_path / "full", "drift.json")
    (tmp_path / "full" / "drift.json").write_text("{}")
    check_output_dir(tmp_path / "full", "drift.json")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("writer", ["drift", "stability"])
def test_nothing_half_written_on_error(drift_result, stability_result, tmp_path, monkeypatch, writer):
    out = tmp_path / "out"
    write, result = (write_drift, drift_result) if writer == "drift" else (write_stability, stability_result)
    write(result, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []
    real_save = track_report.save_figure

    def failing(fig, folder, name, dpi=110):  # the second figure fails, after the first was written
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_save(fig, folder, name, dpi)

    monkeypatch.setattr(track_report, "save_figure", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write(result, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier report is intact
    with pytest.raises(RuntimeError, match="disk full"):
        calls.clear()
        write(result, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert _leftovers(tmp_path, "out") == [] and _leftovers(tmp_path, "fresh") == []


def test_wrong_result_type(drift_result, stability_result, tmp_path):
    with pytest.raises(TypeError, match=r"expected a modeldiff\.track\.DriftResult, got StabilityResult"):
        write_drift(stability_result, tmp_path / "a")
    with pytest.raises(TypeError, match=r"expected a modeldiff\.track\.StabilityResult, got DriftResult"):
        write_stability(drift_result, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_values_stay_strict_json(drift_result, tmp_path):
    cert = drift_result.certified_vs_first.clone()
    cert[1, 0] = float("inf")
    res = DriftResult(**{**drift_result.__dict__, "certified_vs_first": cert})
    out = write_drift(res, tmp_path / "inf")
    text = (out / "drift.json").read_text()
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert d["figures"]["drift.png"]["certified_vs_first_max"][1] == "inf"
    assert "inf" in _text(out)
