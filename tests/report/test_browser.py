"""The review page in a real headless browser (Chromium through Playwright): every image loads, no console error.
Skipped, with the reason, where Playwright or /usr/bin/chromium is missing."""

from __future__ import annotations

import pytest
import torch

from modeldiff import regions, zoo
from modeldiff.report import review, write_review
from tests._browser import browser_missing, check_page


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    reason = browser_missing()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    a, b = zoo.load("digits_mlp"), zoo.load("digits_mlp_finetuned")
    x, y = zoo.digits_test()
    torch.set_num_threads(1)
    r = review(a, b, regions.ball(x[:16], 0.03, domain=(0.0, 1.0)), labels=y[:16], restarts=2, steps=8, gallery=3,
               clusters=2, ig_steps=8)
    return write_review(r, tmp_path_factory.mktemp("browser") / "review"), r


def test_review_page_loads_in_chromium(page):
    index, r = page
    info = check_page(index)
    assert info["title"] == "Disagreement review: model A vs model B"
    # histogram, gap, flips, per-class, diagnostics; gallery entries, attribution, clusters (when flips were found)
    expected = 5 + len(r.gallery) + (1 if r.gallery else 0) + (1 if r.clusters else 0)
    assert info["images"] == expected == len(list(index.parent.glob("*.png")))


def test_check_page_catches_a_broken_image(tmp_path):
    bad = tmp_path / "index.html"
    bad.write_text('<!DOCTYPE html><html><head><title>t</title></head><body><img src="missing.png" alt="x">'
                   "</body></html>")
    with pytest.raises(AssertionError, match="missing.png"):
        check_page(bad)


def test_drift_and_stability_pages_load_in_chromium(tmp_path):
    from modeldiff.report.track_report import write_drift, write_stability
    from modeldiff.track import drift, stability
    from tests._models import mlp, perturbed

    reason = browser_missing()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    base = mlp([4, 8, 3], seed=1)
    models = [base, perturbed(base, 0.05, 2), perturbed(base, 0.1, 3)]
    region = regions.ball(torch.rand(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.1)
    fast = {"restarts": 1, "steps": 3, "seed": 0}
    for folder in (write_drift(drift(models, region, **fast), tmp_path / "drift"),
                   write_stability(stability(models, region, **fast), tmp_path / "stability")):
        index = folder / "index.html" if folder.is_dir() else folder
        info = check_page(index)
        assert info["images"] == len(list(index.parent.glob("*.png"))) > 0
