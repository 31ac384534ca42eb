"""The disagreement review: where do models A and B disagree over a batch of input regions, and what is proven?

:func:`review` runs, over every region, a label-flip search and a label-agreement certificate (``top1``), a search
and a certified bound of the chosen divergence, then derives the numbers of the review page: disagreement rates,
flip matrices, per-class rates, a gallery of the top disagreements with integrated-gradients attributions,
clusters of the label-flip witnesses and search diagnostics. :func:`modeldiff.report.write_review` renders it.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from modeldiff.bounds import METHODS, bound
from modeldiff.divergences import DIVERGENCES
from modeldiff.errors import ReportError, check_int
from modeldiff.graph import ComparisonGraph, prepare_model, resolve_device
from modeldiff.regions import Region
from modeldiff.report import _stats
from modeldiff.report._layout import image_layout
from modeldiff.report._output import provenance
from modeldiff.report.attribution import DifferenceHead, integrated_gradients
from modeldiff.report.clusters import FEATURES, cluster_witnesses
from modeldiff.report.records import GalleryItem, Review
from modeldiff.search import search

__all__ = ["review"]

logger = logging.getLogger(__name__)

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ------------------------------------------------------------------------------------------------ checks


def _type_name(v: Any) -> str:
    return type(v).__name__


def _int(name: str, value: Any, minimum: int | None) -> int:
    return check_int(name, value, minimum, error=ReportError, type_error=ReportError)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise ReportError(f"expected {name} to be a str, got {_type_name(value)}")
    if value not in choices:
        raise ReportError(f"expected {name} to be one of {', '.join(choices)}, got {value!r}")
    return value


def _dtype(value: Any) -> torch.dtype:
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    if value in _DTYPES.values():
        return value
    raise ReportError(f"expected dtype to be torch.float64 or torch.float32, got {value!r}")


def _paths(value: Any) -> tuple[Any, Any]:
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ReportError(f"expected model_paths to be a pair (path of A, path of B) or None, got {_type_name(value)}"
                          + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""))
    for p in value:
        if p is not None and not isinstance(p, (str, os.PathLike)):
            raise ReportError(f"expected model_paths entries to be paths or None, got {_type_name(p)}")
    return value[0], value[1]


def _labels(value: Any, n: int) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (Tensor, np.ndarray, Sequence)):
        raise ReportError(f"expected labels to be a tensor, an array or a sequence of ints, got {_type_name(value)}")
    try:
        t = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value.detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ReportError(f"expected labels to be integers, got {_type_name(value)} ({exc})") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ReportError(f"expected integer labels, got dtype {t.dtype}")
    t = t.reshape(-1).long()
    if t.numel() != n:
        raise ReportError(f"expected {n} labels (one per region), got {t.numel()}")
    return t


def _check_models(model_a: Any, model_b: Any) -> None:
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise ReportError(f"expected {name} to be a torch.nn.Module, got {_type_name(m)}")


# ------------------------------------------------------------------------------------------------ helpers


def _forward(a: nn.Module, b: nn.Module, x: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    starts = range(0, max(x.shape[0], 1), batch)  # one (empty) batch for no rows
    with torch.no_grad():
        ya = torch.cat([a(x[i : i + batch]) for i in starts])
        yb = torch.cat([b(x[i : i + batch]) for i in starts])
    return ya, yb


def _batched_head(head: DifferenceHead, x: Tensor, batch: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([head(x[i : i + batch]) for i in range(0, max(x.shape[0], 1), batch)])


class _Stages:
    """Stage timer, logger and (optional) tqdm bar over the review's stages."""

    def __init__(self, names: list[str], progress: bool) -> None:
        self.time_s: dict[str, float] = {}
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(names), unit="stage", desc="review")

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        self.time_s[name] = time.perf_counter() - start
        logger.info("review: %s in %.2f s", name, self.time_s[name])
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _gallery_rows(flips: Tensor, rank_flip: Tensor, rank_fill: Tensor, size: int) -> list[tuple[int, bool]]:
    """``(region, is_flip)`` of the gallery: label flips by decreasing head value, then the other regions by
    decreasing head value at their divergence witness."""
    order = torch.argsort(torch.where(flips, rank_flip, torch.full_like(rank_flip, -torch.inf)), descending=True,
                          stable=True)
    rows = [(int(i), True) for i in order[: min(size, int(flips.sum()))]]
    if len(rows) < size:
        rest = torch.argsort(torch.where(flips, torch.full_like(rank_fill, -torch.inf), rank_fill), descending=True,
                             stable=True)
        rows += [(int(i), False) for i in rest[: min(size - len(rows), int((~flips).sum()))]]
    return rows


# ------------------------------------------------------------------------------------------------ review


def review(
    model_a: nn.Module,
    model_b: nn.Module,
    region: Region,
    *,
    labels: Tensor | Sequence[int] | None = None,
    divergence: str = "linf",
    method: str = "auto",
    restarts: int = 5,
    steps: int = 50,
    seed: int = 0,
    gallery: int = 8,
    clusters: int = 4,
    ig_steps: int = 32,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    progress: bool = False,
    model_paths: tuple[str | os.PathLike | None, str | os.PathLike | None] | None = None,
) -> Review:
    """Review where models A and B disagree over the N boxes of ``region``.

    Per region: A's and B's labels at the seed point (``region.midpoints``: the ball centers); a ``top1`` search
    for a point where the labels differ; a ``top1`` certificate that they agree over the whole box; a search and a
    certified upper bound of ``divergence``. Then: rates, flip matrices ``[K, K]``, per-class rates, the
    ``gallery`` top disagreements (label flips first, ranked by the divergence at the witness; see
    :func:`~modeldiff.report.attribution.head_divergence`) with integrated gradients from seed to witness,
    k-means clusters of the label-flip witnesses and search diagnostics.

    Args:
        model_a, model_b: the models (copied; outputs ``[N, K]``, logits of K classes).
        region: the input boxes (:mod:`modeldiff.regions`), e.g. ``regions.ball(x, 0.03, domain=(0, 1))``.
        labels: ``[N]`` true labels (int), or None; per-class rates are by true label when given, else by A's
            label at the seed point.
        divergence: the divergence searched and bounded (:data:`modeldiff.divergences.DIVERGENCES`).
        method: the bound method (:data:`modeldiff.bounds.METHODS`), for the divergence and the top1 certificate.
        restarts, steps, seed: the budget and seed of both searches.
        gallery: how many top disagreements to show (0: none).
        clusters: the most k-means clusters of label-flip witnesses (0: no clustering).
        ig_steps: integration steps of integrated gradients.
        dtype: float64 (default) or float32; device: torch device.
        batch_size: regions per batch of the bounds and forward passes. The searches batch their own rows
            (restarts x regions, up to about 4 million input entries per forward pass): for small models one
            large batch is several times faster than many small ones.
        progress: show progress bars (tqdm) over the stages and the long steps.
        model_paths: ``(path of A, path of B)`` for the provenance hashes, or None (recorded as in-memory).

    Returns:
        A :class:`~modeldiff.report.records.Review`.

    Raises:
        ReportError: an argument of the wrong type or value ("expected X, got Y"), labels that do not fit.
        BoundError, SearchError, IncompatibleModelsError, UnsupportedModelError: from the bound and the search.

    Example:
        >>> import torch
        >>> from modeldiff import regions, zoo
        >>> from modeldiff.report import review
        >>> a, b = zoo.load("digits_mlp"), zoo.load("digits_mlp_finetuned")
        >>> x, y = zoo.digits_test()
        >>> r = review(a, b, regions.ball(x[:20], 0.03, domain=(0, 1)), labels=y[:20], restarts=2, steps=10)
        >>> 0 <= r.certified_agreement_rate <= 1 - r.search_disagreement_rate
        True
    """
    _check_models(model_a, model_b)
    if not isinstance(region, Region):
        raise ReportError(f"expected region to be a modeldiff.regions.Region, got {_type_name(region)}")
    divergence = _choice("divergence", divergence, DIVERGENCES)
    method = _choice("method", method, METHODS)
    restarts, steps = _int("restarts", restarts, 1), _int("steps", steps, 1)
    seed = _int("seed", seed, None)
    gallery, clusters = _int("gallery", gallery, 0), _int("clusters", clusters, 0)
    ig_steps, batch_size = _int("ig_steps", ig_steps, 2), _int("batch_size", batch_size, 1)
    dt = _dtype(dtype)
    if not isinstance(device, (str, torch.device)):
        raise ReportError(f"expected device to be a str or torch.device, got {_type_name(device)}")
    dev = resolve_device(device)
    if not isinstance(progress, bool):
        raise ReportError(f"expected progress to be a bool, got {_type_name(progress)}")
    path_a, path_b = _paths(model_paths)
    n = len(region)
    true_labels = _labels(labels, n)

    a, b = prepare_model(model_a, dt, dev), prepare_model(model_b, dt, dev)
    reg = region.to(device=dev, dtype=dt)
    ComparisonGraph(a, b, "linf", input_shape=reg.input_shape)  # checks that A and B are comparable
    two = divergence != "top1"
    names = ["seed points", "top1 search", "top1 bound"] + ([f"{divergence} search", f"{divergence} bound"]
                                                            if two else []) + ["gallery", "clusters"]
    stage = _Stages(names, progress)
    common = dict(dtype=dt, device=dev, progress=progress)
    try:
        with stage("seed points"):
            centers = reg.midpoints
            ya, yb = _forward(a, b, centers, batch_size)
            k = int(ya.shape[1])
            clean_a, clean_b = ya.argmax(1).cpu(), yb.argmax(1).cpu()
            if true_labels is not None and int(true_labels.max()) >= k:
                raise ReportError(f"expected labels in 0..{k - 1} (the models have {k} outputs), "
                                  f"got {int(true_labels.max())}")
            if true_labels is not None and int(true_labels.min()) < 0:
                raise ReportError(f"expected labels >= 0, got {int(true_labels.min())}")
        with stage("top1 search"):
            top1_search = search(model_a, model_b, region, "top1", restarts=restarts, steps=steps, seed=seed, **common)
        with stage("top1 bound"):
            top1_bound = bound(model_a, model_b, region, "top1", method, batch_size=batch_size, **common)
        search_result, bound_result = top1_search, top1_bound
        if two:
            with stage(f"{divergence} search"):
                search_result = search(model_a, model_b, region, divergence, restarts=restarts, steps=steps,
                                       seed=seed, **common)
            with stage(f"{divergence} bound"):
                bound_result = bound(model_a, model_b, region, divergence, method, batch_size=batch_size, **common)
        with stage("gallery"):
            head = DifferenceHead(a, b, divergence)
            w_top1 = top1_search.witnesses.to(device=dev, dtype=dt)
            wa, wb = _forward(a, b, w_top1, batch_size)
            witness_a, witness_b = wa.argmax(1).cpu(), wb.argmax(1).cpu()
            flips = top1_search.found.cpu() > 0.5
            rank_flip = _batched_head(head, w_top1, batch_size).cpu()
            w_fill = w_top1 if not two else search_result.witnesses.to(device=dev, dtype=dt)
            rank_fill = rank_flip if not two else _batched_head(head, w_fill, batch_size).cpu()
            rows = _gallery_rows(flips, rank_flip, rank_fill, gallery)
            idx = torch.tensor([i for i, _ in rows], dtype=torch.long)
            is_flip = torch.tensor([f for _, f in rows], dtype=torch.bool)
            g_w = torch.where(is_flip.to(dev).view(-1, *[1] * len(reg.input_shape)), w_top1[idx.to(dev)],
                              w_fill[idx.to(dev)]) if rows else w_top1[:0]
            g_c = centers[idx.to(dev)]
            with torch.enable_grad():
                atts = integrated_gradients(head, g_c, g_w, ig_steps)
            ga, gb = _forward(a, b, g_w, batch_size)
            items = tuple(
                GalleryItem(
                    index=i, source="label flip" if f else f"largest {head.divergence.name}",
                    center=g_c[j].cpu(), witness=g_w[j].cpu(),
                    true_label=None if true_labels is None else int(true_labels[i]),
                    label_a_seed=int(clean_a[i]), label_b_seed=int(clean_b[i]),
                    label_a_witness=int(ga[j].argmax()), label_b_witness=int(gb[j].argmax()),
                    prob_a=torch.softmax(ga[j], 0).cpu(), prob_b=torch.softmax(gb[j], 0).cpu(),
                    value=float(rank_flip[i] if f else rank_fill[i]), certified=float(bound_result.upper[i]),
                    perturbation_scale=float((g_w[j] - g_c[j]).abs().max()), attribution=atts[j],
                ) for j, (i, f) in enumerate(rows)
            )
        with stage("clusters"):
            fi = flips.nonzero().reshape(-1)
            groups = cluster_witnesses(centers[fi.to(dev)].cpu(), w_top1[fi.to(dev)].cpu(), fi, witness_a[fi],
                                       witness_b[fi], clusters, seed=seed)
    finally:
        stage.close()

    clean_dis = clean_a != clean_b
    cert = top1_bound.upper.cpu() == 0
    found, upper = search_result.found.cpu(), bound_result.upper.cpu()
    group = true_labels if true_labels is not None else clean_a
    diagnostics = [_stats.diagnostics(search_result, divergence)]
    if two:
        diagnostics.append(_stats.diagnostics(top1_search, "top1"))
    settings = {
        "divergence": divergence, "method": method, "method_used": bound_result.method, "restarts": restarts,
        "steps": steps, "seed": seed, "gallery": gallery, "clusters": clusters, "ig_steps": ig_steps,
        "dtype": str(dt).replace("torch.", ""), "device": str(dev), "batch_size": batch_size,
        "labels": "given" if true_labels is not None else "none",
    }
    result = Review(
        provenance=provenance({"A": path_a, "B": path_b}, region=region.to_dict(), **settings),
        region=region.to_dict(), divergence=divergence, method=bound_result.method, n_classes=k,
        image_layout=image_layout(reg.input_shape), labels=true_labels,
        clean_a=clean_a, clean_b=clean_b, witness_a=witness_a, witness_b=witness_b,
        clean_disagreement_rate=float(clean_dis.double().mean()),
        search_disagreement_rate=float(flips.double().mean()),
        certified_agreement_rate=float(cert.double().mean()),
        top1_search=top1_search, top1_bound=top1_bound, search_result=search_result, bound_result=bound_result,
        found_summary=_stats.summarize(found), certified_summary=_stats.summarize(upper),
        histogram=_stats.histogram(found, upper), gap_ratio_median=_stats.gap_ratio_median(found, upper),
        n_found_exceeds_certified=int((found > upper).sum()),
        flip_clean=_stats.flip_matrix(clean_a, clean_b, k), flip_witness=_stats.flip_matrix(witness_a, witness_b, k),
        per_class_by="true label" if true_labels is not None else "A's label at the seed",
        per_class=_stats.per_class(group, clean_dis, flips, cert),
        gallery=items, clusters=groups, cluster_features=FEATURES, diagnostics=tuple(diagnostics),
        settings=settings, time_s=dict(stage.time_s),
    )
    logger.info("review of %d regions: clean disagreement %.3f, search disagreement %.3f, certified agreement %.3f",
                n, result.clean_disagreement_rate, result.search_disagreement_rate, result.certified_agreement_rate)
    return result
