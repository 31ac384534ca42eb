"""``modeldiff bound`` and ``modeldiff demo`` through click's CliRunner: every model format, the table and JSON
outputs, every divergence and method, one-line errors, the help texts, and the ACAS Xu acceptance check."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.export import Dim

from modeldiff.cli.main import cli
from modeldiff.loading import load_model
from modeldiff.regions import from_vnnlib
from tests import _archs

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "modeldiff" / "data"
ACAS_DIR = REPO / "benchmarks" / "data" / "acasxu"
ACAS_A = ACAS_DIR / "nets" / "ACASXU_run2a_1_1_batch_2000.nnet"
ACAS_B = ACAS_DIR / "nets16" / "ACASXU_run2a_1_1_batch_2000_16bit.nnet"
PROP_1 = ACAS_DIR / "vnnlib" / "prop_1.vnnlib"
SMALL = "tests._archs:small_mlp"

DIVERGENCES = ["delta", "linf", "l1", "l2", "kl", "tv", "top1"]
METHODS = ["ibp", "crown", "alpha-crown"]

needs_acas = pytest.mark.skipif(not (ACAS_A.exists() and ACAS_B.exists() and PROP_1.exists()),
                                reason="ACAS Xu benchmark files not present")  # fmt: skip


def _seeded(factory, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


class _RowMax(nn.Module):
    """A linear layer minus its row maximum: ``max(dim=1)`` becomes ReduceMax, which auto_LiRPA 0.3 cannot bound."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        y = self.lin(x)
        return y - y.max(dim=1, keepdim=True).values


def _export_pt2(model: nn.Module, path: Path) -> Path:
    torch.export.save(torch.export.export(model, (torch.rand(2, 4),), dynamic_shapes=({0: Dim("batch")},)), str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Model and data files for the 4-input, 3-output small MLP of tests/_archs.py, in every format."""
    d = tmp_path_factory.mktemp("cli")
    a, b = _seeded(_archs.small_mlp, 0), _seeded(_archs.small_mlp, 1)
    out = {
        "a": d / "a.pt",
        "b": d / "b.pt",
        "pickled": d / "pickled.pt",
        "two_outputs": d / "two_outputs.pt",
        "onnx": d / "b.onnx",
        "pt2": d / "b.pt2",
        "rowmax": d / "rowmax.pt2",
        "points": d / "points.pt",
        "points_npy": d / "points.npy",
        "nan_points": d / "nan.pt",
        "corrupt": d / "corrupt.pt",
        "labels": d / "labels.pt",
    }
    torch.save(a.state_dict(), out["a"])
    torch.save(b.state_dict(), out["b"])
    torch.save(b, out["pickled"])  # a whole nn.Sequential: only loaded with --trust-pickle
    torch.save(nn.Linear(4, 2), out["two_outputs"])
    torch.onnx.export(b, (torch.rand(2, 4),), str(out["onnx"]), dynamo=False)
    _export_pt2(b, out["pt2"])
    _export_pt2(_seeded(_RowMax, 2), out["rowmax"])
    points = torch.rand(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.save(points, out["points"])
    np.save(out["points_npy"], points.numpy())
    bad = points.clone()
    bad[1, 2] = float("nan")
    torch.save(bad, out["nan_points"])
    out["corrupt"].write_bytes(b"this is not a torch file\x00\x01")
    torch.save(torch.tensor([0, 2, 1]), out["labels"])
    return out


def _run(*args) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    return result.output


def _json(result) -> dict:
    _ok(result)
    return json.loads(result.stdout)


def _small(files, *extra, model_b: str = "b"):
    return ("bound", files["a"], files[model_b], "--arch", SMALL, "--data", files["points"], "--eps", 0.05, *extra)


# --- formats ---------------------------------------------------------------------------------------------------


def test_state_dict_with_arch_bundled_digits():
    out = _ok(_run("bound", DATA / "digits_mlp.pt", DATA / "digits_mlp_finetuned.pt", "--arch",
                   "modeldiff.zoo:digits_mlp", "--data", DATA / "digits_test.pt", "--eps", 0.01, "--limit", 2))
    assert "certified" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "certified" in line)
    rows = [line.split() for line in lines[header + 2 : header + 4]]
    assert [r[0] for r in rows] == ["0", "1"]
    assert all(0 <= float(r[1]) < math.inf for r in rows)
    assert "2 region(s), linf, diff, float64" in out


def test_residual_state_dicts_get_the_differential_bound(tmp_path):
    # a residual CNN and a slightly perturbed copy, saved as state_dicts and read back with --arch: auto picks diff
    a = _archs.residual_cnn()
    b = _archs.residual_cnn()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 1e-3)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    torch.save(torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(2)), tmp_path / "x.pt")
    payload = _json(_run("bound", tmp_path / "a.pt", tmp_path / "b.pt", "--arch", "tests._archs:residual_cnn",
                         "--data", tmp_path / "x.pt", "--eps", 0.02, "--json"))
    assert payload["settings"]["method"] == "auto" and payload["settings"]["method_used"] == "diff"
    for region in payload["regions"]:
        assert 0 < region["found"] <= region["certified"] < 0.1


def test_state_dict_with_arch_table(files):
    out = _ok(_run(*_small(files)))
    assert "certified" in out and "3 region(s)" in out


def test_trusted_pickle(files):
    out = _ok(_run("bound", files["pickled"], files["b"], "--arch", SMALL, "--trust-pickle", "--data",
                   files["points_npy"], "--eps", 0.05, "--divergence", "l2"))  # fmt: skip
    assert "certified" in out


def test_pickle_refused_without_trust(files, tmp_path):
    target = tmp_path / "out.json"
    result = _run("bound", files["pickled"], files["b"], "--arch", SMALL, "--data", files["points"], "--eps", 0.05,
                  "--out", target)  # fmt: skip
    line = _error(result, r"pickled\.pt: holds a pickled module.*--trust-pickle")
    assert "runs code" in line
    assert not target.exists()


def test_onnx(files):
    payload = _json(_run("bound", files["a"], files["onnx"], "--arch", SMALL, "--data", files["points"], "--eps",
                         0.05, "--json"))  # fmt: skip
    assert len(payload["regions"]) == 3


def test_pt2(files):
    payload = _json(_run("bound", files["pt2"], files["onnx"], "--data", files["points"], "--eps", 0.05, "--json",
                         "--divergence", "linf"))  # fmt: skip
    assert all(0 <= r["certified"] < math.inf for r in payload["regions"])
    # the same network (ONNX exported in float32): on degenerate boxes (eps 0) CROWN is exact, so the bound is the
    # float32 rounding of the weights
    payload = _json(_run("bound", files["pt2"], files["onnx"], "--data", files["points"], "--eps", 0.0, "--json"))
    assert all(r["certified"] < 1e-5 for r in payload["regions"])


@needs_acas
def test_nnet_with_vnnlib_box_table():
    out = _ok(_run("bound", ACAS_A, ACAS_B, "--box", PROP_1, "--method", "ibp"))
    assert "certified" in out and "1 region(s), linf, ibp" in out


def test_tiny_nnet_files(tmp_path, files):
    """Hand-written .nnet files: 2 inputs, one hidden layer of 2, 1 output."""

    def nnet(path: Path, w2: str) -> Path:
        path.write_text(
            "// tiny\n2,2,1,2,\n2,2,1,\n0,\n-1,-1,\n1,1,\n0,0,0,\n1,1,1,\n"
            "1.0,-1.0,\n0.5,0.5,\n0.0,\n0.1,\n" + w2 + "\n0.0,\n"
        )
        return path

    a = nnet(tmp_path / "a.nnet", "1.0,1.0,")
    b = nnet(tmp_path / "b.nnet", "1.0,1.01,")
    box = tmp_path / "box.vnnlib"
    box.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                   "(assert (>= X_0 -0.5))\n(assert (<= X_0 0.5))\n(assert (>= X_1 0.0))\n(assert (<= X_1 2.0))\n")
    payload = _json(_run("bound", a, b, "--box", box, "--divergence", "delta", "--output-index", 0, "--json"))
    # the box is clipped to the declared input range [-1, 1]; A - B = -0.01 relu(0.5 x0 + 0.5 x1 + 0.1), which
    # takes every value of [-0.0085, 0] there (the composed graph's interval is sound, not tight)
    assert payload["region"]["lower"] == [[-0.5, 0.0]] and payload["region"]["upper"] == [[0.5, 1.0]]
    lo, hi = payload["regions"][0]["delta_interval"]
    assert math.isfinite(lo) and math.isfinite(hi)
    assert lo <= -0.0085 + 1e-12 and hi >= -1e-12


# --- outputs -----------------------------------------------------------------------------------------------------


def test_json_keys(files):
    payload = _json(_run(*_small(files, "--json")))
    assert {"settings", "regions", "region", "time_s", "model_a", "model_b"} <= set(payload)
    assert payload["settings"]["divergence"] == "linf" and payload["settings"]["eps"] == 0.05
    assert len(payload["regions"]) == 3
    for i, region in enumerate(payload["regions"]):
        assert region["index"] == i and isinstance(region["certified"], float) and region["certified"] >= 0


def test_json_delta_output_index(files):
    payload = _json(_run(*_small(files, "--json", "--divergence", "delta", "--output-index", 1)))
    for region in payload["regions"]:
        assert region["output_index"] == 1
        lo, hi = region["delta_interval"]
        assert lo <= hi and region["certified"] == pytest.approx(max(abs(lo), abs(hi)))


def test_json_delta_labels(files):
    payload = _json(_run(*_small(files, "--json", "--divergence", "delta", "--labels", files["labels"])))
    assert [r["output_index"] for r in payload["regions"]] == [0, 2, 1]
    assert all("delta_interval" in r for r in payload["regions"])


def test_delta_table_lists_outputs(files):
    out = _ok(_run(*_small(files, "--divergence", "delta", "--limit", 1)))
    assert "delta lo" in out and "delta hi" in out
    assert "1 region(s), delta" in out


def test_out_file_matches_stdout(files, tmp_path):
    target = tmp_path / "sub" / "result.json"
    result = _run(*_small(files, "--json", "--out", target))
    assert json.loads(target.read_text()) == _json(result)
    table_target = tmp_path / "table.json"
    out = _ok(_run(*_small(files, "--out", table_target)))
    assert "certified" in out
    assert len(json.loads(table_target.read_text())["regions"]) == 3


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_every_divergence_and_method(files, divergence):
    results = {}
    for method in METHODS:
        payload = _json(_run(*_small(files, "--json", "--divergence", divergence, "--method", method,
                                     "--alpha-iterations", 2)))  # fmt: skip
        assert payload["settings"]["divergence"] == divergence and payload["settings"]["method"] == method
        results[method] = [r["certified"] for r in payload["regions"]]
        assert all(isinstance(v, float) and v >= 0 for v in results[method])
        if divergence == "top1":
            assert all(v in (0.0, 1.0) for v in results[method])
            assert all("agree_label" in r for r in payload["regions"])
        if divergence == "tv":
            assert all(v <= 1.0 for v in results[method])


# --- errors --------------------------------------------------------------------------------------------------------


def _error(result, pattern: str) -> str:
    """Non-zero exit through click's error handling, one 'Error: ...' line matching ``pattern``, no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def _error_cases(files) -> dict[str, tuple[list, str]]:
    p = files["points"]
    return {
        "missing-model": (["bound", files["a"].with_name("nope.pt"), files["b"], "--arch", SMALL, "--data", p,
                           "--eps", 0.1], r"model file not found: .*nope\.pt"),
        "corrupt-model": (["bound", files["corrupt"], files["b"], "--arch", SMALL, "--data", p, "--eps", 0.1],
                          r"corrupt\.pt: cannot read torch file \(corrupt"),
        "negative-eps": (_small(files)[:-1] + (-0.1,), r"eps must be >= 0, got -0\.1"),
        "nan-points": (["bound", files["a"], files["b"], "--arch", SMALL, "--data", files["nan_points"], "--eps",
                        0.1], r"nan\.pt contain NaN"),
        "incompatible": (["bound", files["a"], files["two_outputs"], "--arch", SMALL, "--trust-pickle", "--data", p,
                          "--eps", 0.1], r"A gives \(2, 3\), B gives \(2, 2\)"),
        "unsupported-op": (["bound", files["rowmax"], files["rowmax"], "--data", p, "--eps", 0.1], r"ReduceMax"),
        "data-without-eps": (["bound", files["a"], files["b"], "--arch", SMALL, "--data", p], r"--data needs --eps"),
        "data-and-box": (["bound", files["a"], files["b"], "--arch", SMALL, "--data", p, "--eps", 0.1, "--box",
                          PROP_1], r"exactly one of --data .* or --box"),
        "no-region": (["bound", files["a"], files["b"], "--arch", SMALL], r"exactly one of --data .* or --box"),
        "unknown-arch": (["bound", files["a"], files["b"], "--arch", "tests._archs:nope", "--data", p, "--eps", 0.1],
                         r"--arch tests\._archs:nope: module 'tests\._archs' has no attribute 'nope'"),
        "unimportable-arch": (["bound", files["a"], files["b"], "--arch", "no_such_pkg_xyz:net", "--data", p,
                               "--eps", 0.1], r"cannot import 'no_such_pkg_xyz'"),
        "state-dict-without-arch": (["bound", files["a"], files["b"], "--data", p, "--eps", 0.1],
                                    r"holds a state_dict; pass --arch"),
        "output-index-of-other-divergence": (list(_small(files, "--output-index", 0)),
                                             r"--output-index and --labels apply to --divergence delta only"),
        "output-index-out-of-range": (list(_small(files, "--divergence", "delta", "--output-index", 7)),
                                      r"output index out of range: the models have 3 outputs"),
        "torchscript": (["bound", files["ts"], files["b"], "--arch", SMALL, "--data", p, "--eps", 0.1],
                        r"TorchScript .* re-export the model with torch\.export \(save as \.pt2\) or to ONNX"),
    }  # fmt: skip


ERROR_CASES = ["missing-model", "corrupt-model", "negative-eps", "nan-points", "incompatible", "unsupported-op",
               "data-without-eps", "data-and-box", "no-region", "unknown-arch", "unimportable-arch",
               "state-dict-without-arch", "output-index-of-other-divergence", "output-index-out-of-range",
               "torchscript"]  # fmt: skip


@pytest.fixture(scope="module")
def error_files(files, tmp_path_factory):
    ts = tmp_path_factory.mktemp("ts") / "a.ts"
    torch.jit.trace(_seeded(_archs.small_mlp, 0), torch.rand(2, 4)).save(str(ts))
    return {**files, "ts": ts}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors(error_files, tmp_path, case):
    args, pattern = _error_cases(error_files)[case]
    target = tmp_path / "result.json"
    _error(_run(*args, "--out", target), pattern)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either


def test_error_cases_cover_list(error_files):
    assert sorted(_error_cases(error_files)) == sorted(ERROR_CASES)


def test_error_message_is_one_line_for_library_errors(files):
    result = _run("bound", files["corrupt"], files["b"], "--arch", SMALL, "--data", files["points"], "--eps", 0.1)
    _error(result, r"^Error: ")
    assert result.output.strip().count("\n") == 0, result.output


# --- help ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["bound", "demo"])
def test_help_documents_every_option(command):
    result = _run(command, "--help")
    text = _ok(result)
    params = [p for p in cli.commands[command].params if not isinstance(p, click.Argument)]
    assert params
    for param in params:
        for opt in [*param.opts, *param.secondary_opts]:
            assert re.search(rf"(^|[\s,/\[]){re.escape(opt)}([\s,/=\]]|$)", text, re.M), f"{opt} not in --help"
        assert param.help and param.help.strip(), f"{param.name} has no help"
    assert _run(command, "-h").output == text


def test_bound_help_mentions_arguments_and_formats():
    text = _ok(_run("bound", "--help"))
    assert "MODEL_A" in text and "MODEL_B" in text
    for word in (".pt2", ".onnx", ".nnet", "--trust-pickle"):
        assert word in text


# --- demo ------------------------------------------------------------------------------------------------------------


def test_demo_prints_table():
    out = _ok(_run("demo", "--points", 2))
    assert "2 test digits" in out
    for column in ("pair", "method", "found linf", "certified linf", "certified/found", "label agreement proven"):
        assert column in out
    for pair in ("base vs float16", "base vs finetuned", "base vs pruned"):
        assert sum(pair in line for line in out.splitlines()) == 3  # ibp, crown and diff
    rows = [line for line in out.splitlines() if line.strip().startswith("base vs")]
    assert len(rows) == 9
    assert all(re.search(r"\b[0-2]/2\b", row) for row in rows)
    for row in rows:  # found <= certified: the ratio is at least 1
        assert float(row.split()[6]) >= 1.0 - 1e-9


# --- acceptance: ACAS Xu, float vs 16-bit network, property 1 --------------------------------------------------------


@needs_acas
def test_acceptance_acasxu_prop1_crown_delta_sound():
    """The issue's acceptance check: ``modeldiff bound A.nnet A_16bit.nnet --box prop_1.vnnlib --method crown
    --divergence delta --json`` gives a finite bound within seconds, and the certified delta interval holds at
    2,000 random points of the box (clamped to the networks' input domain as the CLI does), in float64."""
    start = time.perf_counter()
    payload = _json(_run("bound", ACAS_A, ACAS_B, "--box", PROP_1, "--method", "crown", "--divergence", "delta",
                         "--output-index", 0, "--json"))  # fmt: skip
    wall = time.perf_counter() - start
    assert wall < 60 and payload["time_s"] < 30, (wall, payload["time_s"])
    assert payload["settings"]["method"] == "crown" and payload["settings"]["dtype"] == "float64"
    [region] = payload["regions"]
    assert region["output_index"] == 0
    lo, hi = region["delta_interval"]
    assert isinstance(lo, float) and isinstance(hi, float) and math.isfinite(lo) and math.isfinite(hi)
    assert lo <= hi and region["certified"] == pytest.approx(max(abs(lo), abs(hi)))

    a = load_model(ACAS_A, dtype=torch.float64)
    b = load_model(ACAS_B, dtype=torch.float64)
    box = from_vnnlib(PROP_1, dtype=torch.float64)
    dom_lo = torch.maximum(a.input_lower, b.input_lower)
    dom_hi = torch.minimum(a.input_upper, b.input_upper)
    lower = torch.maximum(box.lower[0], dom_lo)
    upper = torch.minimum(box.upper[0], dom_hi)
    assert payload["region"]["lower"] == [lower.tolist()] and payload["region"]["upper"] == [upper.tolist()]
    g = torch.Generator().manual_seed(2024)
    x = lower + (upper - lower) * torch.rand(2000, 5, generator=g, dtype=torch.float64)
    corners = torch.tensor([[(i >> j) & 1 for j in range(5)] for i in range(32)], dtype=torch.float64)
    x = torch.cat([x, lower + (upper - lower) * corners, ((lower + upper) / 2).unsqueeze(0)])
    x = torch.minimum(torch.maximum(x, dom_lo), dom_hi)
    with torch.no_grad():
        d = (a(x) - b(x))[:, 0]
    assert torch.isfinite(d).all()
    assert float(d.min()) >= lo and float(d.max()) <= hi, (float(d.min()), float(d.max()), lo, hi)
    assert float(d.abs().max()) > 0  # the two networks really differ


@needs_acas
def test_acceptance_acasxu_prop1_all_outputs_sound():
    """Same pair and box without --output-index: every output's interval holds at sampled points."""
    payload = _json(_run("bound", ACAS_A, ACAS_B, "--box", PROP_1, "--method", "crown", "--divergence", "delta",
                         "--json"))  # fmt: skip
    [region] = payload["regions"]
    lows, highs = torch.tensor(region["delta_lower"]), torch.tensor(region["delta_upper"])
    assert lows.shape == (5,) and torch.isfinite(lows).all() and torch.isfinite(highs).all()
    assert region["certified"] == pytest.approx(float(torch.maximum(lows.abs(), highs.abs()).max()))
    a, b = load_model(ACAS_A), load_model(ACAS_B)
    lower = torch.tensor(payload["region"]["lower"][0], dtype=torch.float64)
    upper = torch.tensor(payload["region"]["upper"][0], dtype=torch.float64)
    x = lower + (upper - lower) * torch.rand(2000, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        d = a(x) - b(x)
    assert (d >= lows).all() and (d <= highs).all()
