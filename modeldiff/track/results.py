"""Result types of :mod:`modeldiff.track`: frozen dataclasses with ``to_dict()``."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modeldiff.errors import ModelDiffError
from modeldiff.results import tensor_to_list

__all__ = ["ASYMMETRIC", "DriftResult", "StabilityResult"]

#: Divergences whose value changes when A and B swap: their stability matrices are computed for both orders.
ASYMMETRIC = frozenset({"kl"})


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
