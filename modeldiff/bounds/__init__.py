"""Certified upper bounds of a divergence between two models over input regions.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import modeldiff
    >>> a = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> b = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> region = modeldiff.regions.ball(torch.zeros(4, 3), eps=0.1)
    >>> result = modeldiff.bound(a, b, region, divergence="linf", method="crown")
    >>> result.upper.shape
    torch.Size([4])
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor, nn

from modeldiff.bounds.base import SpecBounder
from modeldiff.bounds.diff import DiffBounder, NotApplicable
from modeldiff.bounds.lirpa import METHODS as COMPOSED_METHODS
from modeldiff.bounds.lirpa import ComposedBounder
from modeldiff.divergences import get_divergence
from modeldiff.errors import BoundError, RegionError
from modeldiff.graph import prepare_model, resolve_device
from modeldiff.regions import Region
from modeldiff.results import BoundResult

__all__ = ["METHODS", "bound", "refine"]

logger = logging.getLogger(__name__)

#: Every bound method ``bound`` accepts: ``auto`` picks ``diff`` where it applies and ``crown`` elsewhere.
METHODS: tuple[str, ...] = ("auto", *COMPOSED_METHODS, "diff")

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float64``/``torch.float32`` from a dtype or its name."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise BoundError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise BoundError(f"expected dtype float64 or float32, got {dtype}")
    return dtype


def resolve_output_index(output_index: Any, n: int, k: int, device) -> Tensor | None:
    """``[N]`` long tensor of output indices from an int, a sequence or a tensor (None passes through)."""
    if output_index is None:
        return None
    idx = torch.as_tensor(output_index, device=device)
    if idx.is_floating_point() or idx.is_complex():
        raise BoundError(f"expected integer output indices, got dtype {idx.dtype}")
    idx = idx.long().reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise BoundError(f"expected one output index or {n} (one per region), got {idx.numel()}")
    if (idx < 0).any() or (idx >= k).any():
        raise BoundError(f"output index out of range: the models have {k} outputs")
    return idx.clone()


def make_bounder(a: nn.Module, b: nn.Module, input_shape: tuple[int, ...], method: str,
                 alpha_iterations: int = 20) -> tuple[SpecBounder, str]:
    """The bounder for ``method`` and the method's resolved name (``auto`` becomes ``diff`` or ``crown``).

    Raises:
        UnsupportedModelError: ``diff`` was asked for and does not apply (the reason is given).
    """
    from modeldiff.errors import UnsupportedModelError
    from modeldiff.graph import DeltaNet

    if method in ("diff", "auto"):
        DeltaNet(a, b, input_shape)  # checks that the outputs match, with the usual error
        try:
            return DiffBounder(a, b, input_shape), "diff"
        except NotApplicable as exc:
            if method == "diff":
                raise UnsupportedModelError(f"the differential bound does not apply: {exc}") from exc
            logger.info("differential bound not applicable (%s); using crown", exc)
            method = "crown"
    return ComposedBounder(a, b, input_shape, method=method, alpha_iterations=alpha_iterations), method


def _setup(model_a, model_b, region, divergence, method, output_index, dtype, device, alpha_iterations=20):
    """Check the arguments shared by :func:`bound` and :func:`refine`; copy the models and region into ``dtype``
    on ``device``; build the bounder. Returns ``(divergence, a, b, region, dtype, bounder, method_used, index)``."""
    div = get_divergence(divergence)
    if not isinstance(method, str) or method not in METHODS:
        raise BoundError(f"unknown bound method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(region, Region):
        raise TypeError(f"expected a modeldiff.regions.Region, got {type(region).__name__}")
    if output_index is not None and div.name != "delta":
        raise BoundError(f"output_index applies to the delta divergence only, not {div.name!r}")
    dt = resolve_dtype(dtype)
    device = resolve_device(device)
    a = prepare_model(model_a, dt, device)
    b = prepare_model(model_b, dt, device)
    reg = region.to(device=device, dtype=dt)
    bounder, used = make_bounder(a, b, tuple(reg.input_shape), method, alpha_iterations)
    idx = resolve_output_index(output_index, len(reg), bounder.n_outputs, reg.lower.device) \
        if div.name == "delta" else None
    return div, a, b, reg, dt, bounder, used, idx


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="region", desc="bounding", leave=False)


def bound(
    model_a: nn.Module,
    model_b: nn.Module,
    region: Region,
    divergence: str = "linf",
    method: str = "auto",
    *,
    output_index: int | Tensor | None = None,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    alpha_iterations: int = 20,
    progress: bool = False,
) -> BoundResult:
    """Sound upper bound of ``divergence(A(x), B(x))`` over every box of ``region``.

    Args:
        model_a, model_b: the two models (copied; the originals are not changed). Outputs ``[N, K]``.
        region: the input boxes, ``N`` of them (:mod:`modeldiff.regions`).
        divergence: one of :data:`modeldiff.divergences.DIVERGENCES`.
        method: ``ibp``, ``crown`` or ``alpha-crown`` (auto_LiRPA on the composed graph), ``diff`` (differential
            bound propagation for same-architecture ReLU pairs, :mod:`modeldiff.bounds.diff`), or ``auto``
            (``diff`` where it applies, else ``crown``). ``result.method`` names the method used.
        output_index: for ``delta``: the output each region's bound is about (an int, or ``[N]`` e.g. the true
            labels); None bounds every output (the scalar ``upper`` is then the max over outputs).
        dtype: float64 (default; needed for soundness when outputs are large and differences small) or float32.
        device: torch device to compute on.
        batch_size: regions bounded together.
        alpha_iterations: optimisation steps of alpha-CROWN.
        progress: show a progress bar (tqdm) over regions.

    Returns:
        A :class:`~modeldiff.results.BoundResult`; ``upper`` is ``[N]``, ``delta_lower``/``delta_upper`` ``[N, K]``.

    Raises:
        BoundError: unknown method, divergence or dtype; bad output index.
        IncompatibleModelsError: the models' outputs differ in shape or they reject the region's input shape.
        UnsupportedModelError: auto_LiRPA cannot handle an op of a model (the op is named).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BoundError(f"expected batch_size to be a positive int, got {batch_size!r}")
    start = time.perf_counter()
    div, a, b, reg, dt, bounder, used, idx = _setup(
        model_a, model_b, region, divergence, method, output_index, dtype, device, alpha_iterations
    )

    labels = None
    if div.name == "top1":
        with torch.no_grad():
            labels = torch.cat([a(reg.midpoints[i : i + batch_size]).argmax(dim=1) for i in range(0, len(reg), batch_size)])

    uppers, lows, highs = [], [], []
    bar = _progress(len(reg), progress)
    try:
        for i in range(0, len(reg), batch_size):
            lo, hi = reg.lower[i : i + batch_size], reg.upper[i : i + batch_size]
            if not torch.isfinite(lo).all() or not torch.isfinite(hi).all():
                raise RegionError("region bounds must be finite for bound propagation")
            lab = labels[i : i + batch_size] if labels is not None else None
            up, lb, ub = bounder.bound_batch(div.name, lo, hi, lab)
            uppers.append(up)
            if lb is not None:
                lows.append(lb)
                highs.append(ub)
            if bar is not None:
                bar.update(lo.shape[0])
    finally:
        if bar is not None:
            bar.close()
    upper = torch.cat(uppers)
    delta_lower = torch.cat(lows) if lows else None
    delta_upper = torch.cat(highs) if highs else None
    if idx is not None and delta_lower is not None:
        from modeldiff.bounds.derive import abs_max

        upper = abs_max(delta_lower, delta_upper).gather(1, idx.unsqueeze(1)).squeeze(1)
    elapsed = time.perf_counter() - start
    logger.debug("bounded %d regions (%s, %s) in %.2fs", len(reg), div.name, used, elapsed)
    return BoundResult(
        divergence=div.name,
        method=used,
        upper=upper.cpu(),
        delta_lower=None if delta_lower is None else delta_lower.cpu(),
        delta_upper=None if delta_upper is None else delta_upper.cpu(),
        output_index=None if idx is None else idx.cpu(),
        agree_label=None if labels is None else labels.cpu(),
        time_s=elapsed,
        dtype=str(dt).replace("torch.", ""),
        settings={"batch_size": batch_size, "alpha_iterations": alpha_iterations, "device": str(device)},
    )


#: with ``split="auto"``, boxes with more free input entries than this are split by ReLU signs where that applies
RELU_SPLIT_MIN_DIMS = 16


def _choose_splits(split: str, bounder, divergence: str, region: Region) -> list[str]:
    """Per box of ``region``, what branch and bound splits (see :func:`refine`)."""
    from modeldiff.bounds.bab import SPLITS
    from modeldiff.bounds.relu_split import relu_split_unavailable

    if split not in (*SPLITS, "auto"):
        raise BoundError(f"expected split to be one of auto, {', '.join(SPLITS)}, got {split!r}")
    reason = relu_split_unavailable(bounder, divergence)
    if split == "relu" and reason is not None:
        raise BoundError(f"ReLU-split branch and bound does not apply: {reason}")
    if split != "auto":
        return [split] * len(region)
    free = (region.upper > region.lower).flatten(1).sum(dim=1)
    return ["relu" if reason is None and int(f) > RELU_SPLIT_MIN_DIMS else "input" for f in free]


def refine(
    model_a: nn.Module,
    model_b: nn.Module,
    region: Region,
    divergence: str = "linf",
    method: str = "auto",
    *,
    output_index: int | Tensor | None = None,
    threshold: float | None = None,
    tolerance: float = 1e-3,
    time_budget_s: float | None = 30.0,
    max_nodes: int = 100_000,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
    search_restarts: int = 5,
    search_steps: int = 50,
    witnesses: Tensor | None = None,
    workers: int = 1,
    split: str = "auto",
):
    """Branch and bound on every box of ``region``: a list of :class:`~modeldiff.bounds.bab.BaBResult`, one per
    box, each an anytime-valid ``[lower, upper]``.

    Args:
        threshold: per box, stop once ``upper < threshold`` (proven) or a witness reaches it (disproven).
        tolerance: stop once ``upper - lower <= tolerance * |upper|``.
        time_budget_s, max_nodes: budgets per box.
        search_restarts, search_steps: a disagreement search over all boxes first (0 restarts: none); its
            witnesses seed each box's lower bound, so that sub-boxes bounded below it are dropped early.
        witnesses: ``[N, *input_shape]`` points of the boxes (e.g. an earlier search's) to seed with instead of
            running that search.
        workers: boxes bounded side by side in this many worker processes of one torch thread each (1: one
            after another in this process); see :mod:`modeldiff.bounds.parallel`. Ctrl-C stops every box:
            each keeps its anytime result (status ``interrupted``).
        split: ``input`` (split the box: :mod:`modeldiff.bounds.bab`), ``relu`` (split by the signs of unstable
            hidden neurons: :mod:`modeldiff.bounds.relu_split`; method ``diff`` and divergences ``delta``,
            ``linf``), or ``auto``: ``relu`` where it applies and a box has more than
            :data:`RELU_SPLIT_MIN_DIMS` free input entries (cutting such a box along one entry at a time gains
            little), else ``input``.
        Other arguments as for :func:`bound`.

    Example:
        >>> a = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> region = modeldiff.regions.box(torch.zeros(1, 2), torch.ones(1, 2))
        >>> [r.upper for r in refine(a, a, region, "linf")]
        [0.0]
    """
    from modeldiff.bounds.parallel import run_boxes

    div, a, b, reg, dt, bounder, used, idx = _setup(model_a, model_b, region, divergence, method, output_index,
                                                    dtype, device)
    labels = None
    if div.name == "top1":
        with torch.no_grad():
            labels = a(reg.midpoints).argmax(dim=1)
    if not isinstance(search_restarts, int) or search_restarts < 0:
        raise BoundError(f"expected search_restarts to be an int >= 0, got {search_restarts!r}")
    if not isinstance(search_steps, int) or search_steps < 1:
        raise BoundError(f"expected search_steps to be an int >= 1, got {search_steps!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise BoundError(f"expected workers to be an int >= 1, got {workers!r}")
    splits = _choose_splits(split, bounder, div.name, reg)
    if witnesses is not None:
        witnesses = torch.as_tensor(witnesses).to(dtype=dt, device=reg.lower.device)
        if witnesses.shape != reg.lower.shape:
            raise BoundError(f"expected witnesses of shape {tuple(reg.lower.shape)}, got {tuple(witnesses.shape)}")
    elif search_restarts > 0:
        from modeldiff.search import search

        witnesses = search(a, b, reg, div.name, output_index=idx, restarts=search_restarts, steps=search_steps,
                           seed=seed, dtype=dt, device=device).witnesses
    boxes = [  # copies, not views: a view would carry every box's data to the workers
        dict(lower=reg.lower[i : i + 1].clone(), upper=reg.upper[i : i + 1].clone(), divergence=div.name,
             output_index=None if idx is None else int(idx[i]), label=None if labels is None else int(labels[i]),
             threshold=threshold, tolerance=tolerance, time_budget_s=time_budget_s, max_nodes=max_nodes, seed=seed,
             witness=None if witnesses is None else witnesses[i].clone(), split=splits[i])
        for i in range(len(reg))
    ]
    bar = _progress(len(reg), progress)
    try:
        results = run_boxes(a, b, bounder, used, tuple(reg.input_shape), boxes, workers,
                            done=None if bar is None else (lambda: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    return results
