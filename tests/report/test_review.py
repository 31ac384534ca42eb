"""The disagreement review (``modeldiff.report.review`` / ``write_review``): its numbers against direct library
calls, the consistency of the derived tables, the written folder, and every argument error."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import modeldiff
from modeldiff import regions, zoo
from modeldiff.errors import ModelDiffError, ReportError
from modeldiff.report import Review, review, write_review
from modeldiff.report import plots as report_plots
from modeldiff.report._layout import as_image, image_layout
from modeldiff.report.attribution import DifferenceHead
from modeldiff.report.clusters import cluster_witnesses

N = 20
SETTINGS = dict(restarts=2, steps=10, seed=0, gallery=4, clusters=3, ig_steps=8)


@pytest.fixture(scope="module")
def digits():
    a, b = zoo.load("digits_mlp"), zoo.load("digits_mlp_finetuned")
    x, y = zoo.digits_test()
    region = regions.ball(x[:N], 0.03, domain=(0.0, 1.0))
    return a, b, region, y[:N]


@pytest.fixture(scope="module")
def rev(digits) -> Review:
    a, b, region, y = digits
    torch.set_num_threads(1)
    return review(a, b, region, labels=y, **SETTINGS)


@pytest.fixture(scope="module")
def written(rev, tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("review") / "out"
    index = write_review(rev, out)
    return out, json.loads((out / "report.json").read_text()), index.read_text()


# --- numbers against direct library calls --------------------------------------------------------------------------


def test_certified_agreement_rate_matches_bound(digits, rev, written):
    a, b, region, _ = digits
    direct = float((modeldiff.bound(a, b, region, "top1").upper == 0).float().mean())
    assert rev.certified_agreement_rate == pytest.approx(direct)
    assert written[1]["headline"]["certified_agreement_rate"] == pytest.approx(direct)


def test_clean_disagreement_rate_matches_argmax(digits, rev, written):
    a, b, region, _ = digits
    with torch.no_grad():
        direct = float((a(region.centers).argmax(1) != b(region.centers).argmax(1)).float().mean())
    assert rev.clean_disagreement_rate == pytest.approx(direct)
    assert written[1]["headline"]["clean_disagreement_rate"] == pytest.approx(direct)


def test_search_disagreement_rate_matches_search(digits, rev, written):
    a, b, region, _ = digits
    found = modeldiff.search(a, b, region, "top1", restarts=2, steps=10, seed=0).found
    assert rev.search_disagreement_rate == pytest.approx(float((found == 1).double().mean()))
    assert written[1]["headline"]["search_disagreement_rate"] == pytest.approx(rev.search_disagreement_rate)


def test_divergence_bound_matches_bound(digits, written):
    a, b, region, _ = digits
    upper = modeldiff.bound(a, b, region, "linf").upper
    assert [r["certified"] for r in written[1]["regions"]] == pytest.approx(upper.tolist())


def test_found_never_exceeds_certified(rev, written):
    assert rev.n_found_exceeds_certified == 0
    assert bool((rev.search_result.found <= rev.bound_result.upper).all())
    h = written[1]["headline"]
    assert h["found"]["max"] <= h["certified"]["max"]
    flips, proven = int(rev.flips_found.sum()), int(rev.agreement_certified.sum())
    assert not bool((rev.flips_found & rev.agreement_certified).any())  # a flip inside a proven region: unsound
    assert h["undecided"] == N - flips - proven


# --- derived tables ------------------------------------------------------------------------------------------------


def test_flip_matrices_sum_to_regions(digits, rev):
    a, b, region, _ = digits
    assert int(rev.flip_clean.sum()) == N and int(rev.flip_witness.sum()) == N
    off = rev.flip_witness.sum() - rev.flip_witness.diagonal().sum()
    assert int(off) == int(rev.flips_found.sum())
    with torch.no_grad():
        la = a(region.centers).argmax(1)
    assert rev.flip_clean.sum(1).tolist() == torch.bincount(la, minlength=10).tolist()
    with torch.no_grad():
        wa, wb = a(rev.top1_search.witnesses).argmax(1), b(rev.top1_search.witnesses).argmax(1)
    assert torch.equal(wa, rev.witness_a) and torch.equal(wb, rev.witness_b)


def test_per_class_rates_add_up(digits, rev):
    _, _, _, y = digits
    assert rev.per_class_by == "true label"
    assert [r.label for r in rev.per_class] == sorted(set(y.tolist()))
    assert sum(r.n for r in rev.per_class) == N
    for key in ("clean_disagreement_rate", "search_disagreement_rate", "certified_agreement_rate"):
        weighted = sum(r.n * getattr(r, key) for r in rev.per_class) / N
        assert weighted == pytest.approx(getattr(rev, key))


def test_gallery_witnesses_are_valid(digits, rev):
    a, b, region, _ = digits
    assert 0 < len(rev.gallery) <= SETTINGS["gallery"]
    kinds = [g.source for g in rev.gallery]
    n_flips = min(int(rev.flips_found.sum()), SETTINGS["gallery"])
    assert kinds[:n_flips] == ["label flip"] * n_flips and "label flip" not in kinds[n_flips:]
    head = DifferenceHead(a, b, "linf")
    for g in rev.gallery:
        assert bool(region[g.index].contains(g.witness.unsqueeze(0)).all())
        assert torch.equal(g.center, region.centers[g.index])
        with torch.no_grad():
            ya, yb = a(g.witness.unsqueeze(0)), b(g.witness.unsqueeze(0))
        assert (int(ya.argmax()), int(yb.argmax())) == (g.label_a_witness, g.label_b_witness)
        if g.source == "label flip":
            assert g.label_a_witness != g.label_b_witness
        assert float(g.prob_a.sum()) == pytest.approx(1.0) and float(g.prob_b.sum()) == pytest.approx(1.0)
        att = g.attribution
        with torch.no_grad():
            change = float(head(g.witness.unsqueeze(0)) - head(g.center.unsqueeze(0)))
        assert att.head_at_witness - att.head_at_seed == pytest.approx(change)
        assert float(att.values.sum()) - change == pytest.approx(att.convergence_delta, abs=1e-9)
        assert abs(att.convergence_delta) < 0.25 * max(abs(change), 1e-3)  # 8 steps over a piecewise-linear head
    values = [g.value for g in rev.gallery[:n_flips]]
    assert values == sorted(values, reverse=True)


def test_clusters_partition_the_flips(rev):
    flips = set(rev.flips_found.nonzero().reshape(-1).tolist())
    members = [m for c in rev.clusters for m in c.members.tolist()]
    assert sorted(members) == sorted(flips)
    assert len(rev.clusters) == min(SETTINGS["clusters"], len(flips))
    for c in rev.clusters:
        assert c.representative == int(c.members[0])
        assert 1 <= c.flip_count <= c.size
        assert c.flip[0] != c.flip[1]


def test_clusters_with_fewer_witnesses_than_clusters():
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    zero = torch.zeros(2, 2)
    cs = cluster_witnesses(zero, w, torch.tensor([5, 9]), torch.tensor([1, 2]), torch.tensor([3, 4]), k=6)
    assert sorted(c.size for c in cs) == [1, 1]
    same = cluster_witnesses(torch.zeros(3, 2), torch.ones(3, 2), torch.arange(3), torch.zeros(3, dtype=torch.long),
                             torch.ones(3, dtype=torch.long), k=3)
    assert [c.size for c in same] == [3]
    assert cluster_witnesses(zero[:0], w[:0], torch.arange(0), torch.arange(0), torch.arange(0), k=3) == ()


def test_diagnostics_curves(rev):
    d = {g.search: g for g in rev.diagnostics}
    assert set(d) == {"linf", "top1"}
    top1 = d["top1"]
    assert float(top1.mean_best[-1]) == pytest.approx(rev.search_disagreement_rate)
    assert top1.restart_mean.shape == (SETTINGS["restarts"], top1.steps.numel())
    assert int(top1.restart_wins.sum()) == N
    means = d["linf"].mean_best
    assert bool((means[1:] >= means[:-1] - 1e-12).all())  # best so far never decreases
    assert float(means[-1]) == pytest.approx(float(rev.search_result.found.mean()))


# --- the written folder --------------------------------------------------------------------------------------------


def test_report_json_is_the_review(rev, written):
    out, data, page = written
    assert data == json.loads(json.dumps(rev.to_dict(), allow_nan=False))
    assert data["provenance"]["models"] == {"A": {"path": None, "sha256": "in-memory"},
                                            "B": {"path": None, "sha256": "in-memory"}}
    assert data["provenance"]["versions"]["torch"] == torch.__version__
    assert data["n"] == N and len(data["regions"]) == N and len(data["gallery"]) == len(rev.gallery)


def test_page_shows_the_json_numbers(written):
    out, data, page = written
    h = data["headline"]
    for key, count in (("clean_disagreement_rate", "clean_disagreements"),
                       ("search_disagreement_rate", "search_disagreements"),
                       ("certified_agreement_rate", "certified_agreements")):
        assert f"{100 * h[key]:.1f}% ({h[count]}/{N})" in page
    for img in re.findall(r'<img src="([^"]+)"', page):
        assert (out / img).is_file(), img
    assert "<script" not in page
    assert len(re.findall(r'<img src="gallery_\d+\.png"', page)) == len(data["gallery"])


def test_write_review_replaces_an_earlier_report(rev, written, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(written[0], out)  # an earlier report
    (out / "stale.png").write_bytes(b"x")
    write_review(rev, out)
    assert not (out / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_review_leaves_nothing_on_error(rev, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_plots, "gallery_figure", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_review(rev, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_write_review_refuses_a_foreign_folder(rev, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(ModelDiffError, match=r"not empty and holds no earlier report"):
        write_review(rev, out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    with pytest.raises(ModelDiffError, match=r"exists and is not a folder"):
        write_review(rev, out / "thesis.tex")


# --- other shapes and divergences ----------------------------------------------------------------------------------


def test_tabular_inputs_top1_without_labels(tmp_path):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    b = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    region = regions.ball(torch.rand(12, 5, dtype=torch.float64), 0.2)
    r = review(a, b, region, divergence="top1", restarts=2, steps=5, gallery=3, clusters=2, ig_steps=4)
    assert r.image_layout is None and r.per_class_by == "A's label at the seed"
    assert r.search_result is r.top1_search and [d.search for d in r.diagnostics] == ["top1"]
    assert len(r.gallery) == 3
    assert sum(c.size for c in r.clusters) == int(r.flips_found.sum())
    index = write_review(r, tmp_path / "out")
    assert "as bars" in index.read_text()


def test_rgb_image_inputs(tmp_path):
    torch.manual_seed(1)
    make = lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 4)).double()  # noqa: E731
    a, b = make(), make()
    region = regions.ball(torch.rand(4, 3, 6, 6, dtype=torch.float64), 0.1, domain=(0.0, 1.0))
    r = review(a, b, region, method="ibp", restarts=1, steps=3, gallery=2, clusters=0, ig_steps=4)
    assert r.image_layout == (6, 6, 3) and r.clusters == ()
    write_review(r, tmp_path / "out")
    assert (tmp_path / "out" / "gallery_1.png").is_file()


def test_image_layout_rule():
    assert image_layout((64,)) == (8, 8, 1)
    assert image_layout((1, 28, 28)) == (28, 28, 1)
    assert image_layout((3, 32, 16)) == (32, 16, 3)
    assert image_layout((12, 12)) == (12, 12, 1)
    for shape in [(4,), (9,), (10,), (2, 5, 5), (3, 1, 5), (2, 2)]:
        assert image_layout(shape) is None, shape
    rgb = as_image(torch.arange(12.0).numpy(), (2, 2, 3))
    assert rgb.shape == (2, 2, 3) and rgb[0, 1].tolist() == [1.0, 5.0, 9.0]


# --- argument errors -----------------------------------------------------------------------------------------------

ERRORS = {
    "model_a": (dict(model_a="a.pt"), r"expected model_a to be a torch.nn.Module, got str"),
    "model_b": (dict(model_b=None), r"expected model_b to be a torch.nn.Module, got NoneType"),
    "region": (dict(region=torch.zeros(2, 64)), r"expected region to be a modeldiff.regions.Region, got Tensor"),
    "divergence-type": (dict(divergence=1), r"expected divergence to be a str, got int"),
    "divergence-value": (dict(divergence="hamming"), r"expected divergence to be one of delta, .*, got 'hamming'"),
    "method-type": (dict(method=None), r"expected method to be a str, got NoneType"),
    "method-value": (dict(method="exact"), r"expected method to be one of auto, .*, got 'exact'"),
    "restarts-type": (dict(restarts=2.0), r"expected restarts to be an int, got float"),
    "restarts-value": (dict(restarts=0), r"expected restarts >= 1, got 0"),
    "steps-value": (dict(steps=-3), r"expected steps >= 1, got -3"),
    "seed-type": (dict(seed="0"), r"expected seed to be an int, got str"),
    "gallery-value": (dict(gallery=-1), r"expected gallery >= 0, got -1"),
    "clusters-type": (dict(clusters=True), r"expected clusters to be an int, got bool"),
    "ig_steps-value": (dict(ig_steps=1), r"expected ig_steps >= 2, got 1"),
    "batch_size-value": (dict(batch_size=0), r"expected batch_size >= 1, got 0"),
    "dtype": (dict(dtype=torch.float16), r"expected dtype to be torch.float64 or torch.float32, got torch.float16"),
    "device-type": (dict(device=0), r"expected device to be a str or torch.device, got int"),
    "device-value": (dict(device="tpu"), r"unknown device 'tpu'"),
    "progress": (dict(progress="yes"), r"expected progress to be a bool, got str"),
    "model_paths-shape": (dict(model_paths="a.pt"), r"expected model_paths to be a pair .* got str"),
    "model_paths-entry": (dict(model_paths=("a.pt", 3)), r"expected model_paths entries to be paths or None, got int"),
    "labels-type": (dict(labels="labels.pt"),
                    r"expected labels to be a tensor, an array or a sequence of ints, got str"),
    "labels-dtype": (dict(labels=torch.zeros(N)), r"expected integer labels, got dtype torch.float32"),
    "labels-length": (dict(labels=torch.zeros(N - 1, dtype=torch.long)), rf"expected {N} labels \(one per region\), "
                      rf"got {N - 1}"),
    "labels-range": (dict(labels=torch.full((N,), 10)),
                     r"expected labels in 0..9 \(the models have 10 outputs\), got 10"),
    "labels-negative": (dict(labels=torch.full((N,), -1)), r"expected labels >= 0, got -1"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_argument_errors(digits, case):
    a, b, region, _ = digits
    kwargs, pattern = ERRORS[case]
    args = {"model_a": a, "model_b": b, "region": region, **kwargs}
    with pytest.raises(ModelDiffError, match=pattern) as info:
        review(args.pop("model_a"), args.pop("model_b"), args.pop("region"), **args)
    assert "\n" not in str(info.value)
    if not case.startswith("device-value"):
        assert isinstance(info.value, ReportError)


def test_write_review_needs_a_review(tmp_path):
    with pytest.raises(ReportError, match=r"expected review to be a modeldiff.report.Review, got dict"):
        write_review({}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_review_is_frozen(rev):
    with pytest.raises(Exception):
        rev.divergence = "kl"  # type: ignore[misc]
    assert math.isfinite(rev.found_summary.median)
