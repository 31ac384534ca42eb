"""The verbs of :mod:`modeldiff.track`: :func:`drift` and :func:`stability` (argument checks, pairwise runs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from modeldiff.bounds import METHODS, bound, resolve_dtype
from modeldiff.divergences import get_divergence
from modeldiff.errors import BoundError, IncompatibleModelsError, ModelDiffError, SearchError, check_int
from modeldiff.graph import prepare_model, resolve_device
from modeldiff.regions import Region
from modeldiff.search import search
from modeldiff.track.results import ASYMMETRIC, DriftResult, StabilityResult, _median

__all__ = ["ASYMMETRIC", "drift", "stability"]

logger = logging.getLogger(__name__)

#: How much a found value may exceed the certified one before it is reported as a soundness problem.
_SOUND_TOL = 1e-9


# ----------------------------------------------------------------------------------------------------- checks


def _check_common(models, region, names, divergence, method, restarts, steps, seed, dtype, device, batch_size,
                  progress):
    """Check every argument before anything is computed; returns ``(models, names, divergence, dtype, device)``."""
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise TypeError(f"expected models to be a list or tuple of torch.nn.Module, got {type(models).__name__}")
    models = list(models)
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise TypeError(f"expected models[{i}] to be a torch.nn.Module, got {type(m).__name__}")
    if len(models) < 2:
        raise ModelDiffError(f"expected at least 2 models, got {len(models)}")
    if names is None:
        names = [f"m{i}" for i in range(len(models))]
    else:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"expected names to be a list of str, got {type(names).__name__}")
        names = list(names)
        for i, n in enumerate(names):
            if not isinstance(n, str):
                raise TypeError(f"expected names[{i}] to be a str, got {type(n).__name__}")
        if len(names) != len(models):
            raise ModelDiffError(f"expected one name per model ({len(models)}), got {len(names)}")
        seen = set()
        for n in names:
            if not n:
                raise ModelDiffError("model names must not be empty")
            if n in seen:
                raise ModelDiffError(f"model names must be unique, got {n!r} twice")
            seen.add(n)
    if not isinstance(region, Region):
        raise TypeError(f"expected region to be a modeldiff.regions.Region, got {type(region).__name__}")
    if not isinstance(divergence, str):
        raise TypeError(f"expected divergence to be a str, got {type(divergence).__name__}")
    div = get_divergence(divergence).name  # BoundError for an unknown name
    if not isinstance(method, str):
        raise TypeError(f"expected method to be a str, got {type(method).__name__}")
    if method not in METHODS:
        raise BoundError(f"unknown bound method {method!r}; expected one of {', '.join(METHODS)}")
    check_int("restarts", restarts, 1, error=SearchError)
    check_int("steps", steps, 1, error=SearchError)
    check_int("seed", seed)
    check_int("batch_size", batch_size, 1, error=BoundError)
    if not isinstance(progress, bool):
        raise TypeError(f"expected progress to be a bool, got {type(progress).__name__}")
    if not isinstance(dtype, (str, torch.dtype)):
        raise TypeError(f"expected dtype to be a torch.dtype or its name, got {type(dtype).__name__}")
    dt = resolve_dtype(dtype)
    dev = resolve_device(device)
    return models, tuple(names), div, dt, dev


def _labels(models: list[nn.Module], names: tuple[str, ...], region: Region, dtype, device,
            batch_size: int) -> Tensor:
    """``[K, N]`` top-1 labels of every model at the regions' seed points; checks that the outputs match."""
    points = region.midpoints.to(device=device, dtype=dtype)
    labels = []
    ref_shape = None
    for name, model in zip(names, models):
        m = prepare_model(model, dtype, device)
        try:
            with torch.no_grad():
                out = torch.cat([m(points[i : i + batch_size]) for i in range(0, len(points), batch_size)])
        except Exception as exc:  # noqa: BLE001 - any failure here means the model does not take these inputs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IncompatibleModelsError(
                f"model {name!r} rejects inputs of shape {tuple(region.input_shape)}: {first}") from None
        if not isinstance(out, Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise IncompatibleModelsError(f"model {name!r}: expected outputs of shape [N, K], got {shape}")
        if ref_shape is None:
            ref_shape = tuple(out.shape)
        elif tuple(out.shape) != ref_shape:
            raise IncompatibleModelsError(
                f"models {names[0]!r} and {name!r} give outputs of different shapes: {ref_shape} vs "
                f"{tuple(out.shape)}")
        labels.append(out.argmax(dim=1).cpu())
    return torch.stack(labels)


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pair", desc=desc, leave=False)


def _compare(a: nn.Module, b: nn.Module, label: str, region: Region, divergence: str, method: str, restarts: int,
             steps: int, seed: int, dtype, device, batch_size: int) -> tuple[Tensor, Tensor, str]:
    """``(found [N], certified [N], method used)`` for one pair."""
    t0 = time.perf_counter()
    cert = bound(a, b, region, divergence, method, dtype=dtype, device=device, batch_size=batch_size)
    found = search(a, b, region, divergence, restarts=restarts, steps=steps, seed=seed, dtype=dtype, device=device)
    f, c = found.found.to(torch.float64), cert.upper.to(torch.float64)
    over = f > c + _SOUND_TOL * (1 + c.abs())
    if over.any():
        logger.warning("%s: the search found more than the certified bound in %d region(s) (max excess %.3g): "
                       "the bound is not sound there", label, int(over.sum()), float((f - c)[over].max()))
    logger.info("%s: found median %.4g, certified median %.4g (%s), %.2fs", label, float(_median(f)),
                float(_median(c)), cert.method, time.perf_counter() - t0)
    return f, c, cert.method


# ---------------------------------------------------------------------------------------------------- verbs


def drift(
    models: Sequence[nn.Module],
    region: Region,
    *,
    names: Sequence[str] | None = None,
    divergence: str = "linf",
    method: str = "auto",
    restarts: int = 5,
    steps: int = 50,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    progress: bool = False,
) -> DriftResult:
    """How a chain of model versions drifts: each version against the first and against its predecessor.

    For every version ``k >= 1``: the divergence the search finds (reachable: a lower bound of each region's
    worst case) and the one the bound certifies (a sound upper bound over each whole region) between ``m0``
    (as A) and ``m_k`` (as B), and between ``m_{k-1}`` and ``m_k``; and the fraction of the regions' seed points
    where the top-1 labels differ. ``2K - 3`` pairs are compared (the pair ``m0, m1`` once).

    Args:
        models: ``K >= 2`` models in version order, each mapping ``[B, *input_shape]`` to ``[B, C]`` (the same
            ``C`` for all). They are copied; the caller's models are not changed.
        region: ``N`` input boxes (:mod:`modeldiff.regions`), e.g. eps-balls around test points.
        names: one unique name per model (default ``m0, m1, ...``).
        divergence: one of :data:`modeldiff.divergences.DIVERGENCES` (``delta``: max over outputs).
        method: bound method (``auto``, ``ibp``, ``crown``, ``alpha-crown``, ``diff``), as in
            :func:`modeldiff.bound`.
        restarts, steps, seed: the search's budget and seed (every pair uses the same seed).
        dtype: float64 (default) or float32, a dtype or its name.
        device: torch device to compute on.
        batch_size: regions per bound batch.
        progress: a tqdm progress bar over pairs.

    Returns:
        A :class:`DriftResult`; its tensors are ``[K - 1, N]`` (per region) and ``[K - 1]`` (rates).

    Raises:
        TypeError: an argument of the wrong type ("expected X, got Y").
        ModelDiffError: fewer than 2 models; names not one unique non-empty string per model.
        IncompatibleModelsError: a model rejects the region's inputs, or the models' outputs differ in shape.
        BoundError: unknown divergence, method, dtype or device; ``batch_size`` < 1.
        SearchError: ``restarts``/``steps`` < 1.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeldiff import regions
        >>> a = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> res = drift([a, a, a], regions.ball(torch.zeros(3, 2), 0.1), names=["v0", "v1", "v2"], steps=5)
        >>> res.versions, float(res.certified_vs_first.max())
        (('v1', 'v2'), 0.0)
    """
    t0 = time.perf_counter()
    models, names, div, dt, dev = _check_common(models, region, names, divergence, method, restarts, steps, seed,
                                                 dtype, device, batch_size, progress)
    labels = _labels(models, names, region, dt, dev, batch_size)
    k = len(models)
    bar = _bar(2 * k - 3, progress, "drift")
    cache: dict[tuple[int, int], tuple[Tensor, Tensor, str]] = {}

    def pair(i: int, j: int) -> tuple[Tensor, Tensor, str]:
        if (i, j) not in cache:
            cache[(i, j)] = _compare(models[i], models[j], f"{names[i]} vs {names[j]}", region, div, method,
                                     restarts, steps, seed, dt, dev, batch_size)
            if bar is not None:
                bar.update(1)
        return cache[(i, j)]

    try:
        first = [pair(0, v) for v in range(1, k)]
        prev = [pair(v - 1, v) for v in range(1, k)]
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    logger.info("drift over %d versions and %d regions in %.2fs", k, len(region), elapsed)
    return DriftResult(
        names=names,
        divergence=div,
        method=method,
        found_vs_first=torch.stack([f for f, _, _ in first]),
        certified_vs_first=torch.stack([c for _, c, _ in first]),
        found_vs_previous=torch.stack([f for f, _, _ in prev]),
        certified_vs_previous=torch.stack([c for _, c, _ in prev]),
        disagreement_vs_first=(labels[1:] != labels[0]).double().mean(dim=1),
        disagreement_vs_previous=(labels[1:] != labels[:-1]).double().mean(dim=1),
        methods_vs_first=tuple(m for _, _, m in first),
        methods_vs_previous=tuple(m for _, _, m in prev),
        region=region.to_dict(),
        settings={"restarts": restarts, "steps": steps, "seed": seed, "dtype": str(dt).replace("torch.", ""),
                  "device": str(dev), "batch_size": batch_size},
        time_s=elapsed,
    )


def stability(
    models: Sequence[nn.Module],
    region: Region,
    *,
    names: Sequence[str] | None = None,
    divergence: str = "linf",
    method: str = "auto",
    restarts: int = 5,
    steps: int = 50,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    progress: bool = False,
) -> StabilityResult:
    """How far apart models meant to be interchangeable are (retrained seeds, bootstrap resamples), pair by pair.

    Every pair ``i < j`` (every ordered pair for the asymmetric ``kl``) gets the search (found, reachable) and
    the bound (certified, sound upper) per region and its clean top-1 disagreement rate; the result holds the
    ``[K, K, N]`` values and derives the ``[K, K]`` medians and maxima over regions, the spread over pairs, the
    medoid (the model closest to the others in certified median distance) and the regions that differ most.

    Args:
        models: ``K >= 2`` models with the same input and output shapes (copied, not changed).
        region: ``N`` input boxes.
        names, divergence, method, restarts, steps, seed, dtype, device, batch_size, progress: as in
            :func:`drift`.

    Returns:
        A :class:`StabilityResult`: ``found``/``certified`` ``[K, K, N]`` (diagonal 0), ``disagreement``
        ``[K, K]``.

    Raises:
        As :func:`drift`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeldiff import regions
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> a = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> b = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> res = stability([a, b, a], regions.ball(torch.zeros(3, 2), 0.1), steps=5)
        >>> res.certified_median.shape, float(res.certified[0, 2].max()), res.medoid in (0, 2)
        (torch.Size([3, 3]), 0.0, True)
    """
    t0 = time.perf_counter()
    models, names, div, dt, dev = _check_common(models, region, names, divergence, method, restarts, steps, seed,
                                                dtype, device, batch_size, progress)
    labels = _labels(models, names, region, dt, dev, batch_size)
    k, n = len(models), len(region)
    symmetric = div not in ASYMMETRIC
    todo = [(i, j) for i in range(k) for j in range(k) if i != j and (i < j or not symmetric)]
    found = torch.zeros(k, k, n, dtype=torch.float64)
    cert = torch.zeros(k, k, n, dtype=torch.float64)
    used: list[tuple[int, int, str]] = []
    bar = _bar(len(todo), progress, "stability")
    try:
        for i, j in todo:
            f, c, m = _compare(models[i], models[j], f"{names[i]} vs {names[j]}", region, div, method, restarts,
                               steps, seed, dt, dev, batch_size)
            found[i, j], cert[i, j] = f, c
            if symmetric:
                found[j, i], cert[j, i] = f, c
            used.append((i, j, m))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    disagreement = (labels.unsqueeze(1) != labels.unsqueeze(0)).double().mean(dim=2)
    elapsed = time.perf_counter() - t0
    logger.info("stability over %d models and %d regions in %.2fs", k, n, elapsed)
    return StabilityResult(
        names=names,
        divergence=div,
        method=method,
        found=found,
        certified=cert,
        disagreement=disagreement,
        pair_methods=tuple(used),
        region=region.to_dict(),
        settings={"restarts": restarts, "steps": steps, "seed": seed, "dtype": str(dt).replace("torch.", ""),
                  "device": str(dev), "batch_size": batch_size},
        time_s=elapsed,
    )
