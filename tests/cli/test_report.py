"""``modeldiff report`` through click's CliRunner: the written folder, --json, the summary, one-line errors with
exit code 2 and nothing half-written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from modeldiff import zoo
from modeldiff.cli.main import cli
from modeldiff.loading import model_fingerprint

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "modeldiff" / "data"
A, B = DATA / "digits_mlp.pt", DATA / "digits_mlp_finetuned.pt"
N = 12
FAST = ("--restarts", 2, "--steps", 5, "--gallery", 2, "--clusters", 2, "--ig-steps", 4)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("report_cli")
    x, y = zoo.digits_test()
    out = {"points": d / "points.pt", "labels": d / "labels.pt", "short_labels": d / "short.pt"}
    torch.save(x[:N].clone(), out["points"])
    torch.save(y[:N].clone(), out["labels"])
    torch.save(y[: N - 1].clone(), out["short_labels"])
    return out


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _args(files, out, *extra):
    return ("report", A, B, "--arch", "modeldiff.zoo:digits_mlp", "--data", files["points"], "--eps", 0.03,
            "--domain", 0, 1, *FAST, "--out", out, *extra)


def _ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    return result.output


def test_report_writes_the_folder(files, tmp_path):
    out = tmp_path / "review"
    text = _ok(_run(*_args(files, out, "--labels", files["labels"])))
    assert f"wrote {out / 'index.html'}" in text
    assert re.search(rf"certified agreement +\d+\.\d% +\(\d+/{N}\)", text)
    for name in ("index.html", "report.json", "gap.png", "flips.png", "gallery_0.png", "gallery_1.png",
                 "diagnostics.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    models = data["provenance"]["models"]
    assert models["A"] == {"path": str(A), "sha256": model_fingerprint(A)}
    assert models["B"] == {"path": str(B), "sha256": model_fingerprint(B)}
    assert data["n"] == N and data["per_class_by"] == "true label"
    assert data["settings"]["restarts"] == 2 and data["settings"]["steps"] == 5
    assert data["region"]["eps"] == 0.03


def test_json_prints_report_json(files, tmp_path):
    out = tmp_path / "review"
    result = _run(*_args(files, out, "--json", "--divergence", "tv", "--limit", 6))
    _ok(result)
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["divergence"] == "tv" and printed["n"] == 6
    assert "wrote" in result.stderr and "wrote" not in result.stdout


def test_rerun_replaces_an_earlier_report(files, tmp_path):
    out = tmp_path / "review"
    _ok(_run(*_args(files, out, "--limit", 4, "--gallery", 0, "--clusters", 0)))
    (out / "old.png").write_bytes(b"x")
    _ok(_run(*_args(files, out, "--limit", 4, "--gallery", 0, "--clusters", 0)))
    assert not (out / "old.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["review"]


def _error(result, pattern: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and result.output.strip() == lines[0], result.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


ERRORS = {
    "missing-model": (lambda f: ("report", A.with_name("nope.pt"), B, "--arch", "modeldiff.zoo:digits_mlp",
                                 "--data", f["points"], "--eps", 0.03), r"model file not found: .*nope\.pt"),
    "missing-data": (lambda f: ("report", A, B, "--arch", "modeldiff.zoo:digits_mlp", "--data",
                                f["points"].with_name("none.pt"), "--eps", 0.03), r"none\.pt"),
    "negative-eps": (lambda f: ("report", A, B, "--arch", "modeldiff.zoo:digits_mlp", "--data", f["points"],
                                "--eps", -0.1), r"eps must be >= 0, got -0\.1"),
    "labels-length": (lambda f: ("report", A, B, "--arch", "modeldiff.zoo:digits_mlp", "--data", f["points"],
                                 "--eps", 0.03, "--labels", f["short_labels"]),
                      rf"expected {N} labels \(one per region\), got {N - 1}"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_leave_nothing(files, tmp_path, case):
    make, pattern = ERRORS[case]
    _error(_run(*make(files), *FAST, "--out", tmp_path / "review"), pattern)
    assert list(tmp_path.iterdir()) == []


def test_foreign_out_folder_is_refused(files, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    _error(_run(*_args(files, out)), r"output folder .*mine is not empty and holds no earlier report")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
    _error(_run(*_args(files, out / "notes.txt")), r"output path exists and is not a folder")
    assert (out / "notes.txt").read_text() == "keep"


def test_out_is_required(files):
    result = _run("report", A, B, "--arch", "modeldiff.zoo:digits_mlp", "--data", files["points"], "--eps", 0.03)
    assert result.exit_code == 2 and "--out" in result.output


def test_help_documents_every_option():
    text = _ok(_run("report", "--help"))
    for option in ("--data", "--labels", "--eps", "--box", "--domain", "--divergence", "--method", "--restarts",
                   "--steps", "--seed", "--gallery", "--clusters", "--ig-steps", "--out", "--json", "--arch"):
        assert option in text, option
    assert "report" in _ok(_run("--help"))
