"""Track many models at once: drift along a chain of versions, stability across a retrained ensemble.

Both verbs run, for every pair of models they compare, the disagreement search (:func:`modeldiff.search`: a
*found* divergence, reachable, a lower bound of each region's worst case) and the bound
(:func:`modeldiff.bound`: a *certified* divergence, a sound upper bound over each whole region), plus the clean
top-1 disagreement rate at the regions' seed points.

* :func:`drift` follows versions ``m0, m1, ..., m_{K-1}`` (e.g. self-training rounds, nightly retrains): for each
  version ``k >= 1`` how far it is from the first version ``m0`` and from its predecessor ``m_{k-1}``.
* :func:`stability` compares every pair of ``K`` models meant to be interchangeable (seeds, bootstrap
  resamples): the ``K x K`` matrices, their spread, the medoid model, and the regions where they differ most.

Medians over regions are ``torch.median`` (the lower of the two middle values for an even count).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from modeldiff import regions
    >>> from modeldiff.track import drift, stability
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> versions = [nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(3)]
    >>> region = regions.ball(torch.rand(5, 4), eps=0.05)
    >>> res = drift(versions, region, restarts=1, steps=5)
    >>> res.certified_vs_first.shape   # [K - 1, N]
    torch.Size([2, 5])
    >>> bool((res.found_vs_first <= res.certified_vs_first).all())
    True
    >>> stability(versions, region, restarts=1, steps=5).certified.shape   # [K, K, N]
    torch.Size([3, 3, 5])
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from modeldiff.bounds import METHODS, bound, resolve_dtype
from modeldiff.divergences import get_divergence
from modeldiff.errors import BoundError, IncompatibleModelsError, ModelDiffError, SearchError
from modeldiff.graph import prepare_model, resolve_device
from modeldiff.regions import Region
from modeldiff.results import tensor_to_list
from modeldiff.search import search

__all__ = ["DriftResult", "StabilityResult", "drift", "stability"]

logger = logging.getLogger(__name__)

#: Divergences whose value changes when A and B swap: their stability matrices are computed for both orders.
ASYMMETRIC = frozenset({"kl"})
#: How much a found value may exceed the certified one before it is reported as a soundness problem.
_SOUND_TOL = 1e-9


def _num(v: float | Tensor) -> Any:
    """A JSON-able scalar (non-finite values as strings, like :func:`tensor_to_list`)."""
    return tensor_to_list(torch.as_tensor(float(v), dtype=torch.float64))


def _median(t: Tensor, dim: int = -1) -> Tensor:
    return t.median(dim=dim).values


# ---------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class DriftResult:
    """How each version of a chain ``m0, ..., m_{K-1}`` moved away from ``m0`` and from its predecessor.

    Row ``k - 1`` of every ``[K - 1, ...]`` tensor is about version ``k`` (``names[k]``); row 0 compares ``m1``
    with ``m0`` in both ``*_vs_first`` and ``*_vs_previous`` (the same pair, computed once).

    Attributes:
        names: ``K`` model names, in version order.
        divergence: the divergence's name.
        method: the bound method asked for; ``methods_vs_first``/``methods_vs_previous`` the ones used per pair.
        found_vs_first, certified_vs_first: ``[K - 1, N]`` found (search, reachable) and certified (bound, sound
            upper) divergence between ``m0`` (as A) and ``m_k`` (as B) per region.
        found_vs_previous, certified_vs_previous: ``[K - 1, N]`` the same between ``m_{k-1}`` and ``m_k``.
        disagreement_vs_first, disagreement_vs_previous: ``[K - 1]`` the fraction of the regions' seed points
            (``region.midpoints``) where the top-1 labels differ.
        region: the region's summary (:meth:`Region.to_dict`).
        settings: restarts, steps, seed, dtype, device, batch_size.
        time_s: wall time in seconds.
    """

    names: tuple[str, ...]
    divergence: str
    method: str
    found_vs_first: Tensor
    certified_vs_first: Tensor
    found_vs_previous: Tensor
    certified_vs_previous: Tensor
    disagreement_vs_first: Tensor
    disagreement_vs_previous: Tensor
    methods_vs_first: tuple[str, ...]
    methods_vs_previous: tuple[str, ...]
    region: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    time_s: float = 0.0

    def __len__(self) -> int:
        """The number of versions compared (``K - 1``)."""
        return len(self.names) - 1

    @property
    def n_regions(self) -> int:
        return int(self.found_vs_first.shape[1])

    @property
    def versions(self) -> tuple[str, ...]:
        """The names of versions 1..K-1, the rows of the ``[K - 1, ...]`` tensors."""
        return self.names[1:]

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-able row per version ``k >= 1``: medians and maxima over regions of the found and certified
        divergence from ``m0`` and from the predecessor, the disagreement rates and the methods used."""
        rows = []
        for r in range(len(self)):
            row: dict[str, Any] = {"version": r + 1, "name": self.names[r + 1], "previous": self.names[r]}
            for ref in ("first", "previous"):
                found = getattr(self, f"found_vs_{ref}")[r]
                cert = getattr(self, f"certified_vs_{ref}")[r]
                row[f"found_vs_{ref}_median"] = _num(_median(found))
                row[f"found_vs_{ref}_max"] = _num(found.max())
                row[f"certified_vs_{ref}_median"] = _num(_median(cert))
                row[f"certified_vs_{ref}_max"] = _num(cert.max())
                row[f"disagreement_vs_{ref}"] = _num(getattr(self, f"disagreement_vs_{ref}")[r])
                row[f"method_vs_{ref}"] = getattr(self, f"methods_vs_{ref}")[r]
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, the per-version summary and the per-region values."""
        return {
            "kind": "drift",
            "names": list(self.names),
            "divergence": self.divergence,
            "method": self.method,
            "settings": dict(self.settings),
            "region": dict(self.region),
            "n_regions": self.n_regions,
            "time_s": self.time_s,
            "summary": self.summary(),
            "per_region": {
                "found_vs_first": tensor_to_list(self.found_vs_first),
                "certified_vs_first": tensor_to_list(self.certified_vs_first),
                "found_vs_previous": tensor_to_list(self.found_vs_previous),
                "certified_vs_previous": tensor_to_list(self.certified_vs_previous),
            },
        }


@dataclass(frozen=True, eq=False)
class StabilityResult:
    """How far apart ``K`` interchangeable models are, pair by pair.

    Entry ``[i, j]`` compares ``names[i]`` (as A) with ``names[j]`` (as B); the diagonal is 0. For symmetric
    divergences (all but ``kl``) each pair is computed once and mirrored.

    Attributes:
        names: ``K`` model names.
        divergence, method: as asked; ``pair_methods`` the bound method used per computed pair ``(i, j, method)``.
        found, certified: ``[K, K, N]`` found (reachable) and certified (sound upper) divergence per region.
        disagreement: ``[K, K]`` fraction of the regions' seed points where the top-1 labels differ.
        region, settings, time_s: as in :class:`DriftResult`.

    Derived (properties): ``found_median``/``found_max``/``certified_median``/``certified_max`` ``[K, K]``
    (over regions), :attr:`medoid`, :attr:`medoid_scores`, :meth:`spread`, :attr:`region_spread_certified`,
    :attr:`region_spread_found`, :meth:`top_regions`.
    """

    names: tuple[str, ...]
    divergence: str
    method: str
    found: Tensor
    certified: Tensor
    disagreement: Tensor
    pair_methods: tuple[tuple[int, int, str], ...]
    region: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    time_s: float = 0.0

    def __len__(self) -> int:
        """The number of models ``K``."""
        return len(self.names)

    @property
    def n_regions(self) -> int:
        return int(self.found.shape[2])

    @property
    def found_median(self) -> Tensor:
        """``[K, K]`` median over regions of the found divergence."""
        return _median(self.found)

    @property
    def found_max(self) -> Tensor:
        """``[K, K]`` max over regions of the found divergence."""
        return self.found.amax(dim=2)

    @property
    def certified_median(self) -> Tensor:
        """``[K, K]`` median over regions of the certified divergence."""
        return _median(self.certified)

    @property
    def certified_max(self) -> Tensor:
        """``[K, K]`` max over regions of the certified divergence."""
        return self.certified.amax(dim=2)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The distinct pairs: ``i < j``, or every ``i != j`` for an asymmetric divergence."""
        k = len(self)
        if self.divergence in ASYMMETRIC:
            return [(i, j) for i in range(k) for j in range(k) if i != j]
        return [(i, j) for i in range(k) for j in range(i + 1, k)]

    @property
    def medoid_scores(self) -> Tensor:
        """``[K]`` per model: the sum over the others of the (symmetrised) certified median distance."""
        m = self.certified_median
        return ((m + m.T) / 2).sum(dim=1)

    @property
    def medoid(self) -> int:
        """The model with the smallest :attr:`medoid_scores` (the first one on ties): the most central member."""
        return int(torch.argmin(self.medoid_scores))

    def spread(self) -> dict[str, Any]:
        """JSON-able spread statistics over the distinct pairs: median and max of the per-pair medians, and
        the max over all pairs and regions, for found and certified."""
        idx = self.pairs
        out: dict[str, Any] = {"pairs": len(idx)}
        for what in ("found", "certified"):
            med = getattr(self, f"{what}_median")
            per_pair = torch.stack([med[i, j] for i, j in idx])
            out[f"{what}_median_of_pair_medians"] = _num(_median(per_pair, 0))
            out[f"{what}_max_of_pair_medians"] = _num(per_pair.max())
            out[f"{what}_max"] = _num(getattr(self, f"{what}_max").max())
        dis = torch.stack([self.disagreement[i, j] for i, j in idx])
        out["disagreement_median"] = _num(_median(dis, 0))
        out["disagreement_max"] = _num(dis.max())
        return out

    def _region_spread(self, what: str) -> tuple[Tensor, Tensor]:
        t = getattr(self, what)
        stacked = torch.stack([t[i, j] for i, j in self.pairs])  # [P, N]
        values, which = stacked.max(dim=0)
        return values, which

    @property
    def region_spread_certified(self) -> Tensor:
        """``[N]`` per region: the max over pairs of the certified divergence."""
        return self._region_spread("certified")[0]

    @property
    def region_spread_found(self) -> Tensor:
        """``[N]`` per region: the max over pairs of the found divergence."""
        return self._region_spread("found")[0]

    def top_regions(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` regions that contribute most to the spread: sorted by the max over pairs of the certified
        divergence, then of the found one (both descending). Each: index, certified, found, and the pairs
        attaining them (by name)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"expected n to be an int, got {type(n).__name__}")
        if n < 1:
            raise ModelDiffError(f"expected n >= 1, got {n}")
        cert, cpair = self._region_spread("certified")
        found, fpair = self._region_spread("found")
        pairs = self.pairs
        order = sorted(range(self.n_regions), key=lambda r: (-float(cert[r]), -float(found[r]), r))
        out = []
        for r in order[:n]:
            ci, cj = pairs[int(cpair[r])]
            fi, fj = pairs[int(fpair[r])]
            out.append({
                "index": r,
                "certified": _num(cert[r]),
                "found": _num(found[r]),
                "certified_pair": [self.names[ci], self.names[cj]],
                "found_pair": [self.names[fi], self.names[fj]],
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, the ``[K, K]`` matrices, spread, medoid, top regions, per-region spreads and the
        full ``[K, K, N]`` values."""
        return {
            "kind": "stability",
            "names": list(self.names),
            "divergence": self.divergence,
            "method": self.method,
            "pair_methods": [{"a": self.names[i], "b": self.names[j], "method": m} for i, j, m in self.pair_methods],
            "settings": dict(self.settings),
            "region": dict(self.region),
            "n_regions": self.n_regions,
            "time_s": self.time_s,
            "found_median": tensor_to_list(self.found_median),
            "found_max": tensor_to_list(self.found_max),
            "certified_median": tensor_to_list(self.certified_median),
            "certified_max": tensor_to_list(self.certified_max),
            "disagreement": tensor_to_list(self.disagreement),
            "spread": self.spread(),
            "medoid": self.medoid,
            "medoid_name": self.names[self.medoid],
            "medoid_scores": tensor_to_list(self.medoid_scores),
            "top_regions": self.top_regions(min(10, self.n_regions)),
            "region_spread_certified": tensor_to_list(self.region_spread_certified),
            "region_spread_found": tensor_to_list(self.region_spread_found),
            "per_region": {"found": tensor_to_list(self.found), "certified": tensor_to_list(self.certified)},
        }


# ----------------------------------------------------------------------------------------------------- checks


def _check_int(name: str, value: Any, minimum: int | None = None, error: type[ModelDiffError] = SearchError) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"expected {name} to be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise error(f"expected {name} >= {minimum}, got {value}")
    return int(value)


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
    _check_int("restarts", restarts, 1)
    _check_int("steps", steps, 1)
    _check_int("seed", seed)
    _check_int("batch_size", batch_size, 1, BoundError)
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
