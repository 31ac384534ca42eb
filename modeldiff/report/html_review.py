"""Render a :class:`~modeldiff.report.records.Review` as a static folder: ``index.html``, PNG figures and
``report.json``. The page is rendered from ``report.json``'s dictionary only, so the JSON carries every number
the page shows."""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any

from modeldiff.errors import ReportError
from modeldiff.report import plots
from modeldiff.report._output import Page, output_dir, write_json
from modeldiff.report.records import Review

__all__ = ["render_into", "write_review"]

logger = logging.getLogger(__name__)


def _pct(rate: float, count: int, n: int) -> str:
    return f"{100 * rate:.1f}% ({count}/{n})"


def _header(p: Page, d: dict) -> None:
    prov, s, reg = d["provenance"], d["settings"], d["region"]
    items: dict[str, Any] = {}
    for role, m in prov["models"].items():
        items[f"model {role}"] = f"{m['path'] or '(in memory)'}  sha256 {m['sha256']}"
    for name, v in prov["versions"].items():
        items[f"{name} version"] = v
    items["region"] = f"{reg['description']}; input shape {reg['input_shape']}; eps {reg['eps']}"
    items["divergence"] = d["divergence"]
    items["bound method"] = f"{s['method']} (used: {d['method']})"
    items["search"] = (f"{d['search']['optimizer']}, {s['restarts']} restarts x {s['steps']} steps, seed {s['seed']}"
                       f" (top1 search: {d['top1_search']['optimizer']})")
    items["budgets"] = (f"gallery {s['gallery']}, clusters {s['clusters']}, integrated-gradients steps "
                        f"{s['ig_steps']}, batch size {s['batch_size']}")
    items["dtype / device"] = f"{s['dtype']} / {s['device']}"
    items["labels"] = s["labels"]
    items["date (UTC)"] = prov["date"]
    items["time"] = ", ".join(f"{k} {v:.2f} s" for k, v in d["time_s"].items())
    p.section("Provenance", "provenance")
    p.key_values(items)


def _headline(p: Page, d: dict, folder: Path) -> None:
    h, n = d["headline"], d["n"]
    p.section("Headline", "headline")
    p.table(["measure", "meaning", "value"], [
        ["clean disagreement", "top-1 labels of A and B differ at the seed point",
         _pct(h["clean_disagreement_rate"], h["clean_disagreements"], n)],
        ["disagreement under search", "a top1 search found a point of the region where the labels differ",
         _pct(h["search_disagreement_rate"], h["search_disagreements"], n)],
        ["certified agreement", "label agreement is proven over the whole region (top1 bound is 0)",
         _pct(h["certified_agreement_rate"], h["certified_agreements"], n)],
        ["undecided", "neither a flip found nor agreement proven", f"{h['undecided']}/{n}"],
    ], left_columns=2)
    fs, cs = h["found"], h["certified"]
    div = d["divergence"]
    p.table([f"{div} over the region", "median", "mean", "min", "max", "non-finite"], [
        ["found (reachable, lower bound)", fs["median"], fs["mean"], fs["min"], fs["max"], fs["n_infinite"]],
        ["certified (sound upper bound)", cs["median"], cs["mean"], cs["min"], cs["max"], cs["n_infinite"]],
    ])
    gap = h["gap_ratio_median"]
    gap_text = "n/a (nothing found above 0)" if gap is None else f"{plots.arr(gap).item():.4g}"
    p.paragraph(f"Median certified/found ratio: {gap_text}. Regions "
                f"where found exceeds certified (would be a soundness failure): {h['found_exceeds_certified']}.",
                note=True)
    p.image(plots.histogram_figure(d, folder), f"histogram of found and certified {div}",
            f"Distribution of found and certified {div} over the {n} regions.")


def _gap(p: Page, d: dict, folder: Path) -> None:
    p.section("Gap: found vs certified per region", "gap")
    p.image(plots.gap_figure(d, folder), "found and certified per region, sorted",
            "Each x position is one region (sorted by its certificate): the line is the certified upper bound, the "
            "dots what the search reached. Where they meet, the certificate is tight; green triangles mark "
            "regions certified at 0. Per-region values: report.json, key regions.")


def _flips(p: Page, d: dict, folder: Path) -> None:
    p.section("Flip matrix and per-class rates", "flips")
    p.image(plots.flip_figure(d, folder), "flip matrices", "Rows: label under A; columns: label under B.")
    clean, wit = d["flip_matrix"]["clean"], d["flip_matrix"]["witness"]
    k = d["n_classes"]
    pairs = sorted(((wit[a][b], clean[a][b], a, b) for a in range(k) for b in range(k) if a != b
                    and (wit[a][b] or clean[a][b])), reverse=True)[:10]
    if pairs:
        p.table(["flip A -> B", "at seed points", "at witnesses"], [[f"{a} -> {b}", c, w] for w, c, a, b in pairs])
    else:
        p.paragraph("No label flips at the seed points or the witnesses.")
    p.paragraph(f"Per-class rates, by {d['per_class_by']}.", note=True)
    p.table([d["per_class_by"], "regions", "clean disagreement", "disagreement under search", "certified agreement"],
            [[r["label"], r["n"], r["clean_disagreement_rate"], r["search_disagreement_rate"],
              r["certified_agreement_rate"]] for r in d["per_class"]])
    p.image(plots.per_class_figure(d, folder), "per-class rates")


def _gallery(p: Page, d: dict, folder: Path) -> None:
    p.section("Gallery of the top disagreements", "gallery")
    g = d["gallery"]
    if not g:
        p.paragraph("No gallery (gallery size 0).")
        return
    how = "as images" if d["image_layout"] else "as bars (one per input entry)"
    p.paragraph(f"Label flips found by the top1 search, ranked by the divergence at the witness, then (if there "
                f"are fewer flips than slots) the regions of largest divergence. Inputs are drawn {how}; a flat "
                "input whose length is a perfect square (at least 16) is drawn as a square image. The perturbation "
                "is scaled to the full colour range by the factor shown.", note=True)
    p.table(["#", "region", "kind", "true label", "A/B at seed", "A/B at witness", "value at witness",
             "certified", "max |witness - seed|"],
            [[j, it["index"], it["source"], it["true_label"], f"{it['label_a_seed']}/{it['label_b_seed']}",
              f"{it['label_a_witness']}/{it['label_b_witness']}", it["value"], it["certified"],
              it["perturbation_scale"]] for j, it in enumerate(g)])
    for j, it in enumerate(g):
        p.image(plots.gallery_figure(d, it, folder, j), f"gallery entry {j}, region {it['index']}",
                f"#{j}: region {it['index']}, {it['source']}.")


def _attribution(p: Page, d: dict, folder: Path) -> None:
    p.section("Attribution of the difference (integrated gradients)", "attribution")
    atts = [(j, it["index"], it["attribution"]) for j, it in enumerate(d["gallery"]) if it["attribution"]]
    if not atts:
        p.paragraph("No attributions (empty gallery).")
        return
    p.paragraph(f"captum IntegratedGradients of the head {atts[0][2]['head']}, baseline = seed point, input = "
                f"witness, {atts[0][2]['n_steps']} steps. The attributions sum to head(witness) - head(seed) up to "
                "captum's convergence delta.", note=True)
    p.table(["#", "region", "head at seed", "head at witness", "sum of attributions", "convergence delta",
             "top input entries by |attribution|"],
            [[j, i, a["head_at_seed"], a["head_at_witness"], a["sum"], a["convergence_delta"],
              ", ".join(map(str, a["top_features"]))] for j, i, a in atts])
    name = plots.attribution_figure(d, folder)
    if name:
        p.image(name, "mean attribution share per input entry",
                "Which input entries drive the disagreements of the gallery (mean share of |attribution|).")


def _clusters(p: Page, d: dict, folder: Path) -> None:
    p.section("Clusters of disagreements", "clusters")
    p.paragraph(f"k-means on the {d['cluster_features']}; at most {d['settings']['clusters']} clusters.", note=True)
    cl = d["clusters"]
    if not cl:
        p.paragraph("No clusters: the search found no label flip (or clustering is off).")
        return
    p.table(["cluster", "size", "typical flip A -> B", "regions with it", "representative region",
             "mean |perturbation|"],
            [[c["id"], c["size"], f"{c['flip'][0]} -> {c['flip'][1]}", c["flip_count"], c["representative"],
              c["mean_abs_perturbation"]] for c in cl])
    p.image(plots.clusters_figure(d, folder), "cluster representatives and mean perturbations")


def _diagnostics(p: Page, d: dict, folder: Path) -> None:
    p.section("Search diagnostics", "diagnostics")
    p.image(plots.diagnostics_figure(d, folder), "best value against steps",
            "A flat curve at the end means the search saturated; the per-restart curves show whether more "
            "restarts help.")
    rows = []
    for g in d["diagnostics"]:
        mean = plots.arr(g["mean_best"])
        wins = g["restart_wins"]
        rows.append([g["search"], float(mean[-1]) if mean.size else None, g["late_improvement_rate"],
                     "n/a" if wins is None else ", ".join(map(str, wins))])
    p.table(["search", "final mean best", "regions still improving in the second half", "wins per restart"], rows)


def render_into(review: Review | dict, folder: str | os.PathLike) -> Path:
    """Write ``report.json``, the PNGs and ``index.html`` into an existing ``folder``; returns index.html's path.
    ``review`` is a :class:`Review` or its ``to_dict()``."""
    d = review.to_dict() if isinstance(review, Review) else review
    folder = Path(folder)
    write_json(d, folder / "report.json")
    p = Page("Disagreement review: model A vs model B")
    p.raw('<p class="note">' + " | ".join(
        f'<a href="#{a}">{html.escape(t)}</a>' for a, t in (
            ("provenance", "provenance"), ("headline", "headline"), ("gap", "gap"), ("flips", "flips"),
            ("gallery", "gallery"), ("attribution", "attribution"), ("clusters", "clusters"),
            ("diagnostics", "diagnostics"))) + ' | <a href="report.json">report.json</a></p>')
    for part in (_header, _headline, _gap, _flips, _gallery, _attribution, _clusters, _diagnostics):
        if part is _header:
            part(p, d)
        else:
            part(p, d, folder)
    index = folder / "index.html"
    index.write_text(p.render(), encoding="utf-8")
    return index


def write_review(review: Review, out: str | os.PathLike) -> Path:
    """Write ``review`` as a static report folder ``out``: ``index.html``, PNG figures and ``report.json``.

    The folder is written atomically (:func:`~modeldiff.report._output.output_dir`): on any error nothing is left
    half-written. An existing ``out`` is replaced only if it is empty or holds an earlier report.

    Args:
        review: from :func:`modeldiff.report.review`.
        out: the folder to write.

    Returns:
        The path of ``out/index.html``.

    Raises:
        ReportError: ``review`` is not a Review.
        ModelDiffError: ``out`` exists and is a file or a non-empty folder without an earlier report.

    Example:
        >>> write_review(r, "review/")  # doctest: +SKIP
        PosixPath('review/index.html')
    """
    if not isinstance(review, Review):
        raise ReportError(f"expected review to be a modeldiff.report.Review, got {type(review).__name__}")
    with output_dir(out) as tmp:
        render_into(review, tmp)
    logger.info("review written to %s", out)
    return Path(out) / "index.html"
