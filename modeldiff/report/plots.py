"""The figures of the review page, drawn from the review's JSON dictionary (``Review.to_dict()``) only.

Each function draws one PNG into ``folder`` and returns its file name. matplotlib's object API only (no pyplot):
figures come from :func:`modeldiff.report._output.new_figure`. Inputs are drawn as images or bars by the rule of
:mod:`modeldiff.report._layout`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modeldiff.report._layout import as_image
from modeldiff.report._output import new_figure, save_figure

__all__ = ["histogram_figure", "gap_figure", "flip_figure", "per_class_figure", "gallery_figure",
           "attribution_figure", "clusters_figure", "diagnostics_figure"]

_A, _B = "#1f77b4", "#d62728"  # colours of model A / found, model B / certified


def arr(values: Any) -> np.ndarray:
    """JSON numbers (with ``"nan"``/``"inf"`` strings) as a float array."""
    return np.array(values, dtype=float)


def _layout(d: dict) -> tuple[int, int, int] | None:
    return None if d["image_layout"] is None else tuple(d["image_layout"])


def draw_input(ax, values: Any, layout, title: str, signed: bool = False, vrange=None, fig=None) -> None:
    """One input on ``ax``: an image (grey, or a diverging map for ``signed`` values) or bars."""
    x = arr(values).reshape(-1)
    ax.set_title(title, fontsize=9)
    if signed:
        m = float(np.nanmax(np.abs(x))) if x.size and np.isfinite(x).any() else 0.0
        vrange = (-(m or 1.0), m or 1.0)
    if layout is not None:
        img = as_image(x, layout)
        if img.ndim == 3:  # RGB: signed values are shown around mid-grey
            lo, hi = vrange if vrange is not None else (float(img.min()), float(img.max()))
            ax.imshow(np.clip((img - lo) / ((hi - lo) or 1.0), 0, 1))
        else:
            im = ax.imshow(img, cmap="RdBu_r" if signed else "gray", vmin=vrange[0] if vrange else None,
                           vmax=vrange[1] if vrange else None, interpolation="nearest")
            if fig is not None:
                fig.colorbar(im, ax=ax, shrink=0.75)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    idx = np.arange(x.size)
    colors = np.where(x >= 0, _B, _A) if signed else "0.4"
    if x.size <= 64:
        ax.bar(idx, x, color=colors, width=0.8)
    else:
        ax.plot(idx, x, color="0.3", linewidth=0.8)
    ax.set_xlabel("input entry", fontsize=8)
    ax.tick_params(labelsize=7)
    if vrange is not None:
        ax.set_ylim(vrange)


def histogram_figure(d: dict, folder) -> str:
    """Distribution of the found and certified divergence values over the regions."""
    h = d["histogram"]
    edges, found, cert = arr(h["edges"]), arr(h["found"]), arr(h["certified"])
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    def label(name: str, zeros: int) -> str:
        return name + (f", {zeros} at 0 not shown" if zeros else "")

    ax.stairs(found, edges, label=label("found (search)", h["n_zero_found"]), color=_A, linewidth=2)
    ax.stairs(cert, edges, label=label("certified (bound)", h["n_zero_certified"]), color=_B, linewidth=2,
              linestyle="--")
    if h["log_bins"]:
        ax.set_xscale("log")
    ax.set_xlabel(f"{d['divergence']} over the region")
    ax.set_ylabel("regions")
    ax.set_title(f"Found vs certified {d['divergence']} per region ({d['n']} regions)")
    ax.legend(fontsize=8)
    return save_figure(fig, folder, "histogram.png")


def gap_figure(d: dict, folder) -> str:
    """Per region, found and certified values, sorted by the certificate; regions certified at 0 marked."""
    found = arr([r["found"] for r in d["regions"]])
    cert = arr([r["certified"] for r in d["regions"]])
    order = np.lexsort((found, cert))
    found, cert = found[order], cert[order]
    x = np.arange(found.size)
    fig = new_figure(7.5, 3.8)
    ax = fig.add_subplot()
    log = bool(d["histogram"]["log_bins"])
    pos = np.concatenate([found[found > 0], cert[(cert > 0) & np.isfinite(cert)]])
    floor = (pos.min() / 3 if pos.size else 1.0) if log else 0.0
    ax.plot(x, np.where(cert > 0, cert, np.nan), color=_B, linewidth=1.5, label="certified upper bound")
    ax.scatter(x, np.where(found > 0, found, np.nan), s=8, color=_A, label="found (reachable)", zorder=3)
    zero = cert == 0
    if zero.any():
        ax.scatter(x[zero], np.full(int(zero.sum()), floor), marker="v", s=18, color="green", zorder=4,
                   label=f"certified = 0 ({int(zero.sum())} regions, proven)")
    if log:
        ax.set_yscale("log")
        zf = (found == 0) & ~zero
        if zf.any():
            ax.scatter(x[zf], np.full(int(zf.sum()), floor), marker="x", s=14, color=_A,
                       label=f"found = 0 ({int(zf.sum())} regions)")
    ax.set_xlabel("region (sorted by certified bound)")
    ax.set_ylabel(d["divergence"] + (" (log scale)" if log else ""))
    ax.set_title("Gap between what the search found and what is certified")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, folder, "gap.png")


def flip_figure(d: dict, folder) -> str:
    """Label under A against label under B, at the seed points and at the top1 witnesses (off-diagonal coloured)."""
    fig = new_figure(10, 4.4)
    k = d["n_classes"]
    for j, (key, title) in enumerate((("clean", "at seed points"), ("witness", "at top1 search witnesses"))):
        m = arr(d["flip_matrix"][key])
        off = m.copy()
        np.fill_diagonal(off, np.nan)
        ax = fig.add_subplot(1, 2, j + 1)
        im = ax.imshow(off, cmap="Reds", vmin=0, vmax=max(1.0, float(np.nanmax(off)) if k > 1 else 1.0))
        if k <= 12:
            for a in range(k):
                for b in range(k):
                    if m[a, b]:
                        ax.text(b, a, f"{int(m[a, b])}", ha="center", va="center", fontsize=7,
                                color="0.45" if a == b else "black")
        ax.set_xlabel("label under B")
        ax.set_ylabel("label under A")
        ax.set_title(f"Flip matrix {title}\n(diagonal = agreement, counted in grey)", fontsize=10)
        if k <= 20:
            ax.set_xticks(range(k))
            ax.set_yticks(range(k))
        fig.colorbar(im, ax=ax, shrink=0.8, label="regions (off-diagonal)")
    return save_figure(fig, folder, "flips.png")


def per_class_figure(d: dict, folder) -> str:
    """Per-class clean and search disagreement rates and certified agreement rate."""
    rows = d["per_class"]
    x = np.arange(len(rows))
    fig = new_figure(max(6.4, 0.5 * len(rows) + 2), 3.6)
    ax = fig.add_subplot()
    for j, (key, label, color) in enumerate((
        ("clean_disagreement_rate", "disagree at seed", "0.5"),
        ("search_disagreement_rate", "flip found by search", _B),
        ("certified_agreement_rate", "agreement certified", "green"),
    )):
        ax.bar(x + (j - 1) * 0.27, [r[key] for r in rows], width=0.27, label=label, color=color)
    ax.set_xticks(x, [str(r["label"]) for r in rows])
    ax.set_xlabel(d["per_class_by"])
    ax.set_ylabel("fraction of regions")
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.set_title("Per-class rates")
    ax.legend(fontsize=8, ncols=3, loc="upper center")
    return save_figure(fig, folder, "per_class.png")


def gallery_figure(d: dict, item: dict, folder, j: int) -> str:
    """One gallery entry: seed, witness, amplified perturbation, attribution, both softmax outputs."""
    layout = _layout(d)
    fig = new_figure(14, 2.9)
    axes = [fig.add_subplot(1, 5, i + 1) for i in range(5)]
    c, w = arr(item["center"]), arr(item["witness"])
    vr = (float(min(c.min(), w.min())), float(max(c.max(), w.max())))
    draw_input(axes[0], c, layout, f"seed (region {item['index']})\nA: {item['label_a_seed']}  "
               f"B: {item['label_b_seed']}", vrange=vr)
    draw_input(axes[1], w, layout, f"witness ({item['source']})\nA: {item['label_a_witness']}  "
               f"B: {item['label_b_witness']}", vrange=vr)
    scale = float(item["perturbation_scale"]) or 1.0
    draw_input(axes[2], (w - c) / scale, layout, f"perturbation x{1 / scale:.3g}\n(witness - seed, to [-1, 1])",
               signed=True, fig=fig)
    att = item["attribution"]
    if att is not None:
        draw_input(axes[3], att["values"], layout, f"integrated gradients\nof {att['head'].split(':')[0]}, "
                   f"delta {float(att['convergence_delta']):.2g}", signed=True, fig=fig)
    else:
        axes[3].set_axis_off()
    pa, pb = arr(item["prob_a"]), arr(item["prob_b"])
    k = np.arange(pa.size)
    axes[4].bar(k - 0.2, pa, width=0.4, color=_A, label="A")
    axes[4].bar(k + 0.2, pb, width=0.4, color=_B, label="B")
    axes[4].set_ylim(0, 1)
    axes[4].set_xlabel("class", fontsize=8)
    axes[4].set_ylabel("softmax", fontsize=8)
    axes[4].set_title("outputs at the witness", fontsize=9)
    axes[4].legend(fontsize=7)
    if pa.size <= 20:
        axes[4].set_xticks(k)
    axes[4].tick_params(labelsize=7)
    return save_figure(fig, folder, f"gallery_{j}.png", dpi=90)


def attribution_figure(d: dict, folder) -> str | None:
    """Mean share of |attribution| per input entry over the gallery."""
    if d["attribution_mean_abs"] is None:
        return None
    fig = new_figure(4.8 if d["image_layout"] else 7.0, 3.8)
    ax = fig.add_subplot()
    draw_input(ax, d["attribution_mean_abs"], _layout(d),
               "Mean share of |attribution| per input entry\nover the gallery's witnesses", fig=fig,
               vrange=(0.0, float(np.max(arr(d["attribution_mean_abs"]))) or 1.0))
    if d["image_layout"] is not None:
        ax.images[0].set_cmap("viridis")
    return save_figure(fig, folder, "attribution.png")


def clusters_figure(d: dict, folder) -> str | None:
    """Per cluster (a row): its representative's seed, witness and perturbation, and the mean perturbation."""
    cl = d["clusters"]
    if not cl:
        return None
    layout = _layout(d)
    fig = new_figure(11, 2.5 * len(cl))
    for r, c in enumerate(cl):
        axes = [fig.add_subplot(len(cl), 4, 4 * r + i + 1) for i in range(4)]
        s, w = arr(c["representative_center"]), arr(c["representative_witness"])
        vr = (float(min(s.min(), w.min())), float(max(s.max(), w.max())))
        draw_input(axes[0], s, layout, f"cluster {c['id']} ({c['size']} regions)\nrepresentative seed "
                   f"(region {c['representative']})", vrange=vr)
        draw_input(axes[1], w, layout, f"its witness\nflip {c['flip'][0]} -> {c['flip'][1]}", vrange=vr)
        draw_input(axes[2], w - s, layout, "its perturbation", signed=True, fig=fig)
        draw_input(axes[3], c["centroid"], layout, "cluster mean perturbation", signed=True, fig=fig)
    return save_figure(fig, folder, "clusters.png", dpi=90)


def diagnostics_figure(d: dict, folder) -> str:
    """Best value against steps per search: mean over regions, overall and per restart."""
    diags = d["diagnostics"]
    fig = new_figure(6.0 * len(diags), 3.8)
    for j, g in enumerate(diags):
        ax = fig.add_subplot(1, len(diags), j + 1)
        steps = arr(g["steps"])
        if g["restart_mean"] is not None:
            for r, curve in enumerate(arr(g["restart_mean"])):
                ax.plot(steps, curve, linewidth=1, linestyle="--", label=f"restart {r}")
        ax.plot(steps, arr(g["mean_best"]), color="black", linewidth=2.2, label="best over restarts")
        ax.set_xlabel("step")
        top1 = g["search"] == "top1"
        ax.set_ylabel("fraction of regions with a flip" if top1 else f"mean best {g['search']} so far")
        ax.set_title(f"{g['search']} search: best value against steps", fontsize=10)
        ax.legend(fontsize=7)
    return save_figure(fig, folder, "diagnostics.png")
