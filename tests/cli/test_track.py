"""``modeldiff drift`` and ``modeldiff stability`` through click's CliRunner: tables, report folders, --json,
--names, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from modeldiff.cli.main import cli
from modeldiff.loading import load_model
from modeldiff.track import drift
from tests import _archs

SMALL = "tests._archs:small_mlp"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three state_dicts of tests._archs.small_mlp (4 -> 3), points, a pickled model with 5 outputs."""
    d = tmp_path_factory.mktemp("track")
    torch.manual_seed(0)
    base = _archs.small_mlp()
    out = {}
    for k in range(3):
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out[f"v{k}"] = d / f"v{k}.pt"
        torch.save(base.state_dict(), out[f"v{k}"])
    out["points"] = d / "points.pt"
    torch.save(torch.rand(4, 4, dtype=torch.float64), out["points"])
    out["five"] = d / "five.pt"
    torch.save(nn.Sequential(nn.Linear(4, 5)), out["five"])
    return out


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _common(files, out):
    return ["--arch", SMALL, "--data", files["points"], "--eps", 0.05, "--restarts", 1, "--steps", 3, "--out", out]


def _error(result, pattern: str) -> str:
    """Exit code 2, exactly one 'Error: ...' line matching ``pattern``, no traceback."""
    import re

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_drift_table_report_and_numbers(files, tmp_path):
    out = tmp_path / "drift"
    res = _run("drift", files["v0"], files["v1"], files["v2"], *_common(files, out))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "found vs v0" in lines[0] and "labels differ" in lines[0]
    assert lines[2].split()[:2] == ["1", "v1"] and lines[3].split()[:2] == ["2", "v2"]
    assert f"report: {out / 'index.html'}" in res.output
    assert "medians and maxima over 4 region(s); linf, bound diff, search 1x3, float64" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["disagreement.png", "drift.json", "drift.png", "index.html"]
    d = json.loads((out / "drift.json").read_text())
    assert d["provenance"]["models"]["v2"]["path"] == str(files["v2"])
    assert len(d["provenance"]["models"]["v2"]["sha256"]) == 64
    assert d["provenance"]["settings"]["eps"] == 0.05 and d["provenance"]["settings"]["seed"] == 0

    # the same numbers as the library on the same models and region
    from modeldiff import regions

    models = [load_model(files[f"v{k}"], arch=SMALL) for k in range(3)]
    region = regions.ball(regions.load_points(files["points"]), 0.05)
    lib = drift(models, region, names=["v0", "v1", "v2"], restarts=1, steps=3, seed=0)
    assert d["result"]["summary"] == json.loads(json.dumps(lib.summary()))
    row = lib.summary()[1]
    assert f"{row['certified_vs_first_median']:.4g}" in lines[3]


def test_drift_json_names_and_rerun(files, tmp_path):
    out = tmp_path / "d"
    res = _run("drift", files["v0"], files["v2"], *_common(files, out), "--names", "old,new", "--json")
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    assert printed == json.loads((out / "drift.json").read_text())
    assert printed["result"]["names"] == ["old", "new"]
    res = _run("drift", files["v0"], files["v2"], *_common(files, out), "--divergence", "tv", "--method", "crown")
    assert res.exit_code == 0, res.output  # an earlier drift report is replaced
    assert json.loads((out / "drift.json").read_text())["result"]["divergence"] == "tv"


def test_stability_table_and_report(files, tmp_path):
    out = tmp_path / "stab"
    res = _run("stability", files["v0"], files["v1"], files["v2"], *_common(files, out))
    assert res.exit_code == 0, res.output
    assert "certified (found) linf, median over 4 region(s); * = medoid" in res.output
    assert "medoid: v" in res.output and "spread over 3 pair(s)" in res.output
    assert "regions that differ most: #" in res.output
    assert f"report: {out / 'index.html'}" in res.output
    d = json.loads((out / "stability.json").read_text())
    assert d["result"]["names"] == ["v0", "v1", "v2"]
    assert f"medoid: {d['result']['medoid_name']}" in res.output
    res = _run("stability", files["v0"], files["v1"], *_common(files, tmp_path / "j"), "--json")
    assert json.loads(res.output)["result"]["kind"] == "stability"


@pytest.mark.parametrize("verb", ["drift", "stability"])
def test_errors_are_one_line_exit_2(files, tmp_path, verb):
    out = tmp_path / "o"
    _error(_run(verb, files["v0"], *_common(files, out)), r"^Error: expected at least 2 models, got 1$")
    _error(_run(verb, files["v0"], files["v1"], *_common(files, out), "--names", "a,b,c"),
           r"--names gives 3 name\(s\) for 2 model\(s\)")
    _error(_run(verb, files["v0"], files["v1"], *_common(files, out), "--names", "a,a"),
           r"model names must be unique, got 'a' twice")
    _error(_run(verb, files["v0"], tmp_path / "nope.pt", *_common(files, out)), r"model file not found: .*nope\.pt")
    _error(_run(verb, files["v0"], files["five"], *_common(files, out), "--trust-pickle"),
           r"models 'v0' and 'five' give outputs of different shapes: \(4, 3\) vs \(4, 5\)")
    _error(_run(verb, files["v0"], files["five"], *_common(files, out)), r"five\.pt: .*--trust-pickle")
    _error(_run(verb, files["v0"], files["v1"], *_common(files, out), "--divergence", "cosine"),
           r"Invalid value for '--divergence'")
    _error(_run(verb, files["v0"], files["v1"], "--arch", SMALL, "--data", files["points"], "--out", out),
           r"--data needs --eps")
    _error(_run(verb, files["v0"], files["v1"], *_common(files, out), "--restarts", 0), r"--restarts")
    _error(_run(verb, *_common(files, out)), r"Missing argument 'MODELS")
    assert not out.exists()


def test_occupied_out_refused_before_loading(files, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    # the models do not even exist: --out is checked first
    res = _run("drift", tmp_path / "a.pt", tmp_path / "b.pt", *_common(files, out))
    _error(res, r"busy is not empty and holds no earlier report \(drift\.json\); choose another --out")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    res = _run("stability", files["v0"], files["v1"], *_common(files, out / "mine.txt"))
    _error(res, r"output path exists and is not a folder")


def test_help(files):
    for verb in ("drift", "stability"):
        res = _run(verb, "--help")
        assert res.exit_code == 0
        for option in ("--data", "--eps", "--divergence", "--method", "--restarts", "--steps", "--seed", "--out",
                       "--json", "--names"):
            assert option in res.output
    assert "drift" in _run("--help").output and "stability" in _run("--help").output
