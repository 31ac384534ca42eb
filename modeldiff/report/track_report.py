"""Report folders for :func:`modeldiff.track.drift` and :func:`modeldiff.track.stability`.

Each writer makes, atomically (nothing half-written on error), a folder with ``index.html`` (static, no
scripts), PNG figures and a JSON file (``drift.json`` / ``stability.json``) that carries every number the page
shows, under a reproducibility header (model hashes, package versions, region, divergence, method, seeds, date).

Example:
    >>> import torch, tempfile, pathlib
    >>> from torch import nn
    >>> from modeldiff import regions
    >>> from modeldiff.track import drift
    >>> from modeldiff.report.track_report import write_drift
    >>> a = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> res = drift([a, a], regions.ball(torch.zeros(3, 2), 0.1), steps=5)
    >>> out = write_drift(res, pathlib.Path(tempfile.mkdtemp()) / "drift")
    >>> sorted(p.name for p in out.iterdir())
    ['disagreement.png', 'drift.json', 'drift.png', 'index.html']
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from modeldiff.report._output import Page, check_output_dir, new_figure, output_dir, save_figure, write_json
from modeldiff.report._output import provenance as make_provenance

__all__ = ["DRIFT_MARKER", "STABILITY_MARKER", "check_output_dir", "write_drift", "write_stability"]

#: The JSON file of a drift report folder (also its marker: an earlier report may be replaced).
DRIFT_MARKER = "drift.json"
#: The JSON file of a stability report folder.
STABILITY_MARKER = "stability.json"

_FOUND_TEXT = ("found: the largest divergence the search reached in a region (reachable: a lower bound of the "
               "region's worst case); certified: a sound upper bound over the whole region. The true worst case "
               "lies between them (the shaded band).")


def _header(result, provenance: dict | None) -> dict[str, Any]:
    """The reproducibility header: the given one, completed with the result's settings."""
    settings = {
        "region": result.region,
        "divergence": result.divergence,
        "method": result.method,
        **result.settings,
    }
    if provenance is None:
        return make_provenance({name: None for name in result.names}, **settings)
    if not isinstance(provenance, dict):
        raise TypeError(f"expected provenance to be a dict or None, got {type(provenance).__name__}")
    header = dict(provenance)
    merged = dict(header.get("settings") or {})
    for key, value in settings.items():
        merged.setdefault(key, value)
    header["settings"] = merged
    return header


def _float(v: Any) -> float:
    """A JSON number or its string form ("inf", "nan") as a float, for plotting."""
    return float(v)


def _provenance_section(page: Page, header: dict[str, Any]) -> None:
    page.section("Reproducibility", anchor="provenance")
    models = header.get("models") or {}
    if models:
        page.table(["model", "file", "sha256"],
                   [[role, m.get("path") or "in-memory", m.get("sha256")] for role, m in models.items()],
                   css_class="mono")
    items: dict[str, Any] = {"date": header.get("date")}
    for key, value in (header.get("versions") or {}).items():
        items[key] = value
    for key, value in (header.get("settings") or {}).items():
        if key == "region" and isinstance(value, dict):
            value = value.get("description") or value
        items[key] = value if isinstance(value, (str, int, float, type(None))) else str(value)
    page.key_values(items)


# --------------------------------------------------------------------------------------------------------- drift


def _drift_series(result) -> dict[str, Any]:
    """The numbers plotted in ``drift.png`` and ``disagreement.png`` (also written to the JSON)."""
    rows = result.summary()
    series: dict[str, Any] = {"version": [r["version"] for r in rows], "name": [r["name"] for r in rows]}
    for ref in ("first", "previous"):
        for what in ("found", "certified"):
            for stat in ("median", "max"):
                key = f"{what}_vs_{ref}_{stat}"
                series[key] = [r[key] for r in rows]
        series[f"disagreement_vs_{ref}"] = [r[f"disagreement_vs_{ref}"] for r in rows]
    return series


def _drift_figure(result, series: dict[str, Any], folder: Path) -> str:
    fig = new_figure(10.0, 4.2)
    axes = fig.subplots(1, 2, sharey=False)
    x = series["version"]
    refs = (("first", f"from {result.names[0]} (first)", "tab:blue", -0.04),
            ("previous", "from predecessor", "tab:orange", 0.04))
    for ax, stat, title in zip(axes, ("median", "max"), ("median over regions", "max over regions")):
        for ref, label, color, shift in refs:
            xs = [v + shift for v in x]
            found = [_float(v) for v in series[f"found_vs_{ref}_{stat}"]]
            cert = [_float(v) for v in series[f"certified_vs_{ref}_{stat}"]]
            finite = [c if math.isfinite(c) else float("nan") for c in cert]
            ax.fill_between(xs, found, finite, color=color, alpha=0.18, linewidth=0)
            ax.plot(xs, found, marker="o", color=color, linestyle="-", label=f"found, {label}")
            ax.plot(xs, finite, marker="s", color=color, linestyle="--", label=f"certified, {label}")
        ax.set_xticks(x, [f"{n}\n(v{v})" for v, n in zip(x, series["name"])])
        ax.set_xlabel("version")
        ax.set_ylabel(f"{result.divergence} divergence")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small", loc="upper left")
    fig.suptitle(f"Drift of {result.divergence} across versions ({result.n_regions} regions): "
                 "band = between found and certified")
    return save_figure(fig, folder, "drift.png")


def _disagreement_figure(result, series: dict[str, Any], folder: Path) -> str:
    fig = new_figure(6.4, 3.6)
    ax = fig.subplots()
    x = series["version"]
    width = 0.38
    first = [100 * _float(v) for v in series["disagreement_vs_first"]]
    prev = [100 * _float(v) for v in series["disagreement_vs_previous"]]
    b1 = ax.bar([v - width / 2 for v in x], first, width, color="tab:blue", label=f"vs {result.names[0]} (first)")
    b2 = ax.bar([v + width / 2 for v in x], prev, width, color="tab:orange", label="vs predecessor")
    ax.bar_label(b1, fmt="%.1f%%", fontsize="small")
    ax.bar_label(b2, fmt="%.1f%%", fontsize="small")
    ax.set_xticks(x, series["name"])
    ax.set_xlabel("version")
    ax.set_ylabel("top-1 labels differ (% of points)")
    ax.set_title(f"Clean disagreement at the {result.n_regions} region centres")
    top = max(first + prev + [1.0])
    ax.set_ylim(0, top * 1.25)
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, folder, "disagreement.png")


def write_drift(result, out: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Write the drift report folder ``out``: ``index.html``, ``drift.png``, ``disagreement.png``, ``drift.json``.

    Args:
        result: a :class:`modeldiff.track.DriftResult`.
        out: the folder; replaced atomically if it holds an earlier drift report or is empty.
        provenance: the reproducibility header (``modeldiff.report._output.provenance(...)``, with the model
            files); None records the models as in-memory. The result's settings are added where missing.

    Returns:
        The folder's path.

    Raises:
        ModelDiffError: ``out`` is a file, or a non-empty folder holding no earlier drift report.
    """
    from modeldiff.track import DriftResult

    if not isinstance(result, DriftResult):
        raise TypeError(f"expected a modeldiff.track.DriftResult, got {type(result).__name__}")
    header = _header(result, provenance)
    series = _drift_series(result)
    rows = result.summary()
    with output_dir(out, marker=DRIFT_MARKER) as folder:
        drift_png = _drift_figure(result, series, folder)
        dis_png = _disagreement_figure(result, series, folder)
        page = Page(f"Drift across {len(result.names)} model versions")
        last = rows[-1]
        page.paragraph(
            f"{result.divergence} divergence over {result.n_regions} regions ({result.region.get('description', '')})."
            f" Last version {last['name']} vs first {result.names[0]}: certified <= "
            f"{_short(last['certified_vs_first_median'])} (median over regions; max "
            f"{_short(last['certified_vs_first_max'])}), found {_short(last['found_vs_first_median'])}; top-1 labels "
            f"differ at {100 * _float(last['disagreement_vs_first']):.1f}% of the region centres.")
        page.paragraph(_FOUND_TEXT, note=True)
        page.section("Divergence by version", anchor="curves")
        page.image(drift_png, "found and certified divergence from the first version and from the predecessor",
                   "Solid lines with circles: found; dashed lines with squares: certified; blue: from the first "
                   "version; orange: from the predecessor.")
        page.image(dis_png, "clean top-1 disagreement rate by version")
        page.section("Per version", anchor="table")
        page.table(
            ["version", "name", "found median (first)", "certified median (first)", "found max (first)",
             "certified max (first)", "labels differ (first)", "found median (prev.)", "certified median (prev.)",
             "found max (prev.)", "certified max (prev.)", "labels differ (prev.)", "method"],
            [[r["version"], r["name"], r["found_vs_first_median"], r["certified_vs_first_median"],
              r["found_vs_first_max"], r["certified_vs_first_max"], _pct(r["disagreement_vs_first"]),
              r["found_vs_previous_median"], r["certified_vs_previous_median"], r["found_vs_previous_max"],
              r["certified_vs_previous_max"], _pct(r["disagreement_vs_previous"]), _methods(r)]
             for r in rows],
            left_columns=2,
        )
        page.paragraph("(first): against the first version; (prev.): against the version before. Medians and "
                       "maxima are over regions; labels differ: share of region centres where the top-1 labels "
                       "differ.", note=True)
        _provenance_section(page, header)
        (folder / "index.html").write_text(page.render(), encoding="utf-8")
        write_json({"provenance": header, "figures": {"drift.png": series, "disagreement.png": {
            k: series[k] for k in ("version", "name", "disagreement_vs_first", "disagreement_vs_previous")}},
            "result": result.to_dict()}, folder / DRIFT_MARKER)
    return Path(out)


def _short(v: Any) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.4g}"


def _pct(v: Any) -> str:
    return f"{100 * _float(v):.1f}%"


def _methods(row: dict[str, Any]) -> str:
    a, b = row["method_vs_first"], row["method_vs_previous"]
    return a if a == b else f"{a} / {b}"


# ----------------------------------------------------------------------------------------------------- stability


def _matrix_for_plot(matrix: list[list[Any]]) -> list[list[float]]:
    """Floats, with the diagonal as NaN (drawn grey) and non-finite entries as NaN."""
    out = []
    for i, row in enumerate(matrix):
        vals = []
        for j, v in enumerate(row):
            f = _float(v)
            vals.append(float("nan") if i == j or not math.isfinite(f) else f)
        out.append(vals)
    return out


def _heatmaps(result, d: dict[str, Any], stat: str, folder: Path, name: str) -> str:
    import matplotlib

    k = len(result.names)
    size = max(3.4, 0.75 * k + 1.6)
    fig = new_figure(2 * size + 0.8, size + 0.4)
    axes = fig.subplots(1, 2)
    mats = {what: _matrix_for_plot(d[f"{what}_{stat}"]) for what in ("found", "certified")}
    finite = [v for m in mats.values() for row in m for v in row if math.isfinite(v)]
    vmax = max(finite) if finite else 1.0
    vmax = vmax if vmax > 0 else 1.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    labels = [f"{n}*" if i == d["medoid"] else n for i, n in enumerate(result.names)]
    image = None
    for ax, what in zip(axes, ("found", "certified")):
        m = mats[what]
        image = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=vmax)
        for i in range(k):
            for j in range(k):
                v = m[i][j]
                text = "-" if i == j else (f"{v:.3g}" if math.isfinite(v) else str(d[f"{what}_{stat}"][i][j]))
                dark_text = i == j or (math.isfinite(v) and v > 0.6 * vmax)  # on grey or on light yellow
                ax.text(j, i, text, ha="center", va="center", fontsize="small",
                        color="black" if dark_text else "white")
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("model B")
        ax.set_ylabel("model A")
        ax.set_title(f"{what} ({stat} over regions)")
    fig.colorbar(image, ax=list(axes), shrink=0.85, label=f"{result.divergence} divergence")
    fig.suptitle(f"Pairwise {result.divergence}, {stat} over {result.n_regions} regions (* = medoid; same colour "
                 "scale in both panels)")
    return save_figure(fig, folder, name)


def _spread_figure(result, d: dict[str, Any], folder: Path) -> str:
    fig = new_figure(10.0, 3.8)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
    cert = [_float(v) for v in d["region_spread_certified"]]
    found = [_float(v) for v in d["region_spread_found"]]
    order = sorted(range(len(cert)), key=lambda r: (-cert[r], -found[r], r))
    ranks = list(range(1, len(order) + 1))
    ax1.fill_between(ranks, [found[r] for r in order], [cert[r] if math.isfinite(cert[r]) else float("nan")
                                                         for r in order], color="tab:purple", alpha=0.18, linewidth=0)
    ax1.plot(ranks, [cert[r] for r in order], color="tab:purple", linestyle="--", label="certified (max over pairs)")
    ax1.plot(ranks, [found[r] for r in order], color="tab:purple", linestyle="-", marker=".",
             label="found (max over pairs)")
    top = d["top_regions"]
    ax1.scatter(range(1, len(top) + 1), [_float(t["certified"]) for t in top], color="tab:red", zorder=3,
                label=f"top {len(top)} regions")
    ax1.set_xlabel("regions, ranked by certified spread")
    ax1.set_ylabel(f"{result.divergence} divergence")
    ax1.set_title("Where the models differ most")
    ax1.set_ylim(bottom=0)
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize="small")
    scores = [_float(v) for v in d["medoid_scores"]]
    colors = ["tab:green" if i == d["medoid"] else "tab:gray" for i in range(len(scores))]
    bars = ax2.barh(range(len(scores)), scores, color=colors)
    ax2.bar_label(bars, fmt="%.3g", fontsize="small")
    ax2.set_yticks(range(len(scores)), result.names)
    ax2.invert_yaxis()
    ax2.set_xlabel("sum of certified median distances to the others")
    ax2.set_title(f"Medoid: {d['medoid_name']} (green)")
    ax2.set_xlim(0, max(scores + [1e-12]) * 1.25)
    return save_figure(fig, folder, "regions.png")


def _matrix_table(page: Page, names, matrix, pct: bool = False) -> None:
    rows = []
    for name, row in zip(names, matrix):
        rows.append([name, *[_pct(v) if pct else v for v in row]])
    page.table(["A \\ B", *names], rows)


def write_stability(result, out: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Write the stability report folder ``out``: ``index.html``, ``median.png`` and ``max.png`` (heatmaps of
    the pairwise found and certified matrices), ``regions.png`` (per-region spread, medoid scores) and
    ``stability.json``.

    Args:
        result: a :class:`modeldiff.track.StabilityResult`.
        out, provenance: as in :func:`write_drift`.

    Returns:
        The folder's path.

    Raises:
        ModelDiffError: ``out`` is a file, or a non-empty folder holding no earlier stability report.
    """
    from modeldiff.track import StabilityResult

    if not isinstance(result, StabilityResult):
        raise TypeError(f"expected a modeldiff.track.StabilityResult, got {type(result).__name__}")
    header = _header(result, provenance)
    d = result.to_dict()
    names = list(result.names)
    spread = d["spread"]
    with output_dir(out, marker=STABILITY_MARKER) as folder:
        med_png = _heatmaps(result, d, "median", folder, "median.png")
        max_png = _heatmaps(result, d, "max", folder, "max.png")
        reg_png = _spread_figure(result, d, folder)
        page = Page(f"Stability of {len(names)} models")
        page.paragraph(
            f"{result.divergence} divergence over {result.n_regions} regions ({result.region.get('description', '')}),"
            f" {spread['pairs']} pairs. Median over pairs of the certified median: "
            f"{_short(spread['certified_median_of_pair_medians'])} (worst pair "
            f"{_short(spread['certified_max_of_pair_medians'])}); found: "
            f"{_short(spread['found_median_of_pair_medians'])} (worst pair "
            f"{_short(spread['found_max_of_pair_medians'])})."
            f" Medoid (closest to the others): {d['medoid_name']}.")
        page.paragraph(_FOUND_TEXT, note=True)
        page.section("Pairwise divergence", anchor="matrices")
        page.image(med_png, "heatmaps of the pairwise found and certified divergence, median over regions")
        page.image(max_png, "heatmaps of the pairwise found and certified divergence, max over regions")
        for title, key, pct in (("Certified, median over regions", "certified_median", False),
                                ("Found, median over regions", "found_median", False),
                                ("Certified, max over regions", "certified_max", False),
                                ("Found, max over regions", "found_max", False),
                                ("Top-1 labels differ at region centres", "disagreement", True)):
            page.raw(f"<h3>{title}</h3>")
            _matrix_table(page, names, d[key], pct)
        page.section("Spread", anchor="spread")
        page.key_values({
            "pairs": spread["pairs"],
            "certified: median over pairs of the median over regions": spread["certified_median_of_pair_medians"],
            "certified: max over pairs of the median over regions": spread["certified_max_of_pair_medians"],
            "certified: max over pairs and regions": spread["certified_max"],
            "found: median over pairs of the median over regions": spread["found_median_of_pair_medians"],
            "found: max over pairs of the median over regions": spread["found_max_of_pair_medians"],
            "found: max over pairs and regions": spread["found_max"],
            "labels differ: median over pairs": _pct(spread["disagreement_median"]),
            "labels differ: max over pairs": _pct(spread["disagreement_max"]),
            "medoid": d["medoid_name"],
        })
        page.table(["model", "sum of certified median distances to the others"],
                   [[n, s] for n, s in zip(names, d["medoid_scores"])])
        page.section("Regions that differ most", anchor="regions")
        page.image(reg_png, "per-region spread ranked, and the medoid scores")
        page.table(["rank", "region", "certified (max over pairs)", "pair", "found (max over pairs)", "pair"],
                   [[i + 1, t["index"], t["certified"], " vs ".join(t["certified_pair"]), t["found"],
                     " vs ".join(t["found_pair"])] for i, t in enumerate(d["top_regions"])], left_columns=1)
        methods = sorted({p["method"] for p in d["pair_methods"]})
        page.paragraph(f"bound method used: {', '.join(methods)}", note=True)
        _provenance_section(page, header)
        (folder / "index.html").write_text(page.render(), encoding="utf-8")
        write_json({"provenance": header, "result": d}, folder / STABILITY_MARKER)
    return Path(out)
