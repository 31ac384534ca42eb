"""``modeldiff search`` and the search / branch-and-bound parts of ``modeldiff bound``, through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from modeldiff.cli.main import cli
from modeldiff.search import evaluate
from modeldiff import zoo

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "modeldiff" / "data"
BASE, PRUNED = DATA / "digits_mlp.pt", DATA / "digits_mlp_pruned.pt"
ARCH = ("--arch", "modeldiff.zoo:digits_mlp")
ACAS_DIR = REPO / "benchmarks" / "data" / "acasxu"


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def points(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("search") / "points.pt"
    torch.save(zoo.digits_test()[0][:3], path)
    return path


def test_search_prints_found_and_saves_witnesses_in_the_region(points, tmp_path):
    out = tmp_path / "w.pt"
    result = _run("search", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.05, "--domain", 0, 1,
                  "--restarts", 3, "--steps", 20, "--out", out)
    assert result.exit_code == 0, result.output
    assert "found linf" in result.output
    saved = torch.load(out, weights_only=False)
    x = saved["witnesses"]
    centers = torch.load(points)
    assert ((x - centers).abs() <= 0.05 + 1e-12).all() and (x >= 0).all() and (x <= 1).all()
    a, b = zoo.load("digits_mlp"), zoo.load("digits_mlp_pruned")
    assert torch.equal(evaluate(a, b, x, "linf"), saved["found"])


def test_search_json_and_same_seed_same_result(points):
    args = ("search", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.05, "--restarts", 2, "--steps", 10,
            "--json", "--seed", 3)
    first, second = _run(*args), _run(*args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["found"] == json.loads(second.output)["found"]


def test_search_errors_are_one_line(points, tmp_path):
    result = CliRunner().invoke(cli, ["search", str(BASE), str(PRUNED), *ARCH, "--data", str(points),
                                      "--eps", "-1", "--out", str(tmp_path / "w.pt")])
    assert result.exit_code != 0
    assert "Error:" in result.output and "eps" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w.pt").exists()


def test_bound_shows_found_certified_and_gap(points, tmp_path):
    wit = tmp_path / "bw.pt"
    result = _run("bound", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.01, "--json", "--witnesses", wit)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["witnesses"] == str(wit) and wit.exists()
    for region in payload["regions"]:
        assert 0 <= region["found"] <= region["certified"] + 1e-12
        assert region["gap_ratio"] == pytest.approx(region["certified"] / region["found"])
    assert payload["search_time_s"] > 0 and payload["bab_time_s"] is None
    table = _run("bound", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.01)
    assert "certified/found" in table.output
    assert ": bound " in table.output and ", search " in table.output and "branch and bound" not in table.output
    quiet = _run("bound", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.01, "--no-search", "--json")
    assert "found" not in json.loads(quiet.output)["regions"][0]


@pytest.mark.skipif(not (ACAS_DIR / "vnnlib" / "prop_4.vnnlib").exists(), reason="ACAS Xu files not present")
def test_bound_bab_tightens_and_stays_above_what_is_found():
    a = ACAS_DIR / "nets" / "ACASXU_run2a_2_8_batch_2000.nnet"
    b = ACAS_DIR / "nets16" / "ACASXU_run2a_2_8_batch_2000_16bit.nnet"
    args = ("bound", a, b, "--box", ACAS_DIR / "vnnlib" / "prop_4.vnnlib", "--divergence", "delta",
            "--output-index", 0, "--json", "--restarts", 2, "--steps", 10)
    single = json.loads(_run(*args).output)["regions"][0]
    refined = json.loads(_run(*args, "--bab", "--bab-time", 5, "--bab-nodes", 300).output)["regions"][0]
    assert refined["certified"] < single["certified"]
    assert refined["found"] <= refined["certified"]
    assert refined["bab"]["status"] in {"converged", "proven", "node-limit", "time-limit"}


def test_bound_bab_jobs_runs_regions_in_workers(points):
    args = ("bound", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.01, "--json", "--restarts", 1, "--steps", 5,
            "--bab", "--bab-nodes", 9, "--bab-time", 20)
    one = json.loads(_run(*args).output)
    two = json.loads(_run(*args, "--jobs", 2).output)
    assert two["settings"]["bab"]["jobs"] == 2
    assert two["bab_time_s"] > 0 and two["search_time_s"] > 0
    table = _run(*[a for a in args if a != "--json"])
    assert ", branch and bound " in table.output and " s\n" in table.output
    for r1, r2 in zip(one["regions"], two["regions"]):
        assert r2["bab"]["nodes"] == r1["bab"]["nodes"]
        assert r2["certified"] == pytest.approx(r1["certified"], rel=1e-9)
        assert r2["found"] <= r2["certified"]


def test_bound_bab_split_relu_tightens_and_is_recorded(points):
    args = ("bound", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.01, "--json", "--restarts", 2, "--steps", 10,
            "--divergence", "delta", "--output-index", 2)
    single = json.loads(_run(*args).output)
    result = _run(*args, "--bab", "--split", "relu", "--bab-time", 5, "--bab-nodes", 400)
    assert result.exit_code == 0, result.output
    refined = json.loads(result.output)
    assert refined["settings"]["bab"]["split"] == "relu"
    for before, after in zip(single["regions"], refined["regions"]):
        assert after["found"] <= after["certified"] + 1e-12
        assert after["certified"] <= before["certified"] + 1e-12
        assert after["bab"]["status"] in {"converged", "node-limit", "time-limit", "exhausted"}
    assert any(a["certified"] < b["certified"] for a, b in zip(refined["regions"], single["regions"]))


def test_bound_split_needs_bab_and_relu_needs_the_differential_bound(points):
    base = ("bound", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.01, "--no-search")
    no_bab = CliRunner().invoke(cli, [str(a) for a in (*base, "--split", "relu")])
    assert no_bab.exit_code != 0 and "--split applies to --bab" in no_bab.output
    crown = CliRunner().invoke(cli, [str(a) for a in (*base, "--method", "crown", "--bab", "--split", "relu")])
    assert crown.exit_code != 0 and "Traceback" not in crown.output
    assert "ReLU-split branch and bound does not apply: it needs the differential bound" in crown.output


def test_search_help_documents_every_option():
    command = cli.commands["search"]
    text = CliRunner().invoke(cli, ["search", "--help"]).output
    for param in command.params:
        if param.param_type_name == "option":
            assert param.opts[0] in text and param.help


@pytest.mark.parametrize(("extra", "message"), [
    (("--threshold", "0.1"), "--threshold applies to --bab"),
    (("--jobs", "2"), "--jobs applies to --bab"),
    (("--no-search", "--witnesses", "w.pt"), "--witnesses needs the search"),
])
def test_bound_option_combinations_refused(points, extra, message):
    result = CliRunner().invoke(cli, ["bound", str(BASE), str(PRUNED), *ARCH, "--data", str(points),
                                      "--eps", "0.01", *extra])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["bound", "search"])
@pytest.mark.parametrize(("device", "message"), [
    ("bogus", "unknown device 'bogus'"),
    ("cuda:7", "device 'cuda:7' is not available on this machine"),
])
def test_unknown_or_absent_device_is_one_line(points, command, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    result = CliRunner().invoke(cli, [command, str(BASE), str(PRUNED), *ARCH, "--data", str(points), "--eps", "0.01",
                                      "--device", device])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_search_explore_option(points):
    args = ("search", BASE, PRUNED, *ARCH, "--data", points, "--eps", 0.05, "--restarts", 2, "--steps", 20,
            "--json")
    on = json.loads(_run(*args, "--explore", 3).output)
    off = json.loads(_run(*args, "--explore", 0).output)
    assert on["settings"]["explore"] == 3 and off["settings"]["explore"] == 0
    bad = CliRunner().invoke(cli, [str(a) for a in args] + ["--explore", "-1"])
    assert bad.exit_code == 2 and "--explore" in bad.output
