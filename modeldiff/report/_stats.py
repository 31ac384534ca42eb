"""The derived numbers of a review: flip matrices, per-class rates, distributions, search diagnostics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modeldiff.report.records import ClassRow, Histogram, SearchDiagnostics, Summary
from modeldiff.results import SearchResult

__all__ = ["flip_matrix", "per_class", "summarize", "histogram", "gap_ratio_median", "diagnostics"]


def flip_matrix(label_a: Tensor, label_b: Tensor, k: int) -> Tensor:
    """``[K, K]`` int64 counts: entry ``[i, j]`` is how many points A labels ``i`` and B labels ``j``.

    Example:
        >>> flip_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    return torch.bincount(label_a.long() * k + label_b.long(), minlength=k * k).reshape(k, k)


def per_class(group: Tensor, clean_dis: Tensor, search_dis: Tensor, cert_agree: Tensor) -> tuple[ClassRow, ...]:
    """One :class:`ClassRow` per value of ``group`` ``[N]`` that occurs; the masks are ``[N]`` bool."""
    rows = []
    for c in torch.unique(group).tolist():
        m = group == c
        n = int(m.sum())
        rows.append(ClassRow(label=int(c), n=n,
                             clean_disagreement_rate=float(clean_dis[m].double().mean()),
                             search_disagreement_rate=float(search_dis[m].double().mean()),
                             certified_agreement_rate=float(cert_agree[m].double().mean())))
    return tuple(rows)


def summarize(values: Tensor) -> Summary:
    """Median, mean, min and max of the finite entries of ``values`` ``[N]`` (NaN if there are none)."""
    v = values.double().reshape(-1)
    ok = torch.isfinite(v)
    n_bad = int((~ok).sum())
    v = v[ok]
    if v.numel() == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, n_bad)
    return Summary(float(v.median()), float(v.mean()), float(v.min()), float(v.max()), n_bad)


def histogram(found: Tensor, certified: Tensor, bins: int = 20) -> Histogram:
    """Found and certified values counted in shared bins over their positive finite range ``[min, max]``;
    logarithmic bins when that range spans more than a factor 100."""
    f, c = found.double().reshape(-1), certified.double().reshape(-1)
    pos = torch.cat([f[torch.isfinite(f) & (f > 0)], c[torch.isfinite(c) & (c > 0)]])
    if pos.numel() == 0:
        edges, log_bins = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64), False
    else:
        lo, hi = float(pos.min()), float(pos.max())
        log_bins = hi > 100 * lo
        if log_bins:
            edges = torch.logspace(math.log10(lo), math.log10(hi), bins + 1, dtype=torch.float64)
        elif hi > lo:
            edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        else:  # one value: a bin around it
            edges = torch.linspace(0.5 * lo, 1.5 * lo, bins + 1, dtype=torch.float64)
        if hi > lo:
            edges[0], edges[-1] = lo, hi  # exactly the extremes, so that they are counted

    def count(v: Tensor) -> Tensor:
        v = v[torch.isfinite(v) & (v > 0)]
        idx = (torch.bucketize(v, edges, right=True) - 1).clamp(0, bins - 1)
        return torch.bincount(idx, minlength=bins)

    return Histogram(edges=edges, found=count(f), certified=count(c), log_bins=bool(log_bins),
                     n_zero_found=int((f == 0).sum()), n_zero_certified=int((c == 0).sum()),
                     n_infinite_certified=int((~torch.isfinite(c)).sum()))


def gap_ratio_median(found: Tensor, certified: Tensor) -> float | None:
    """Median of certified / found over the regions with found > 0 and a finite certificate (None if none)."""
    ok = (found > 0) & torch.isfinite(certified) & torch.isfinite(found)
    if not bool(ok.any()):
        return None
    return float((certified[ok].double() / found[ok].double()).median())


def _finite_mean(t: Tensor, dim: int) -> Tensor:
    ok = torch.isfinite(t)
    total = torch.where(ok, t, torch.zeros_like(t)).sum(dim)
    n = ok.sum(dim)
    return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, math.nan))


def diagnostics(result: SearchResult, name: str) -> SearchDiagnostics:
    """Mean best value against steps, overall and per restart; which restart won; late improvements."""
    hist = result.history.double().cpu()  # [T, N]
    steps = result.history_steps.cpu()
    mean_best = _finite_mean(hist, 1)
    late = math.nan
    if hist.shape[0] >= 2:
        total = int(steps[-1])
        half = int(torch.searchsorted(steps, torch.tensor(total // 2, dtype=steps.dtype)))
        half = min(half, hist.shape[0] - 1)
        before, after = hist[half], hist[-1]
        rose = torch.isfinite(after) & (after > before + 1e-9 * (1 + before.abs().nan_to_num(posinf=0, neginf=0)))
        late = float(rose.double().mean())
    restart_mean = restart_wins = None
    if result.restart_history is not None:
        rh = result.restart_history.double().cpu()  # [T, R, N]
        restart_mean = _finite_mean(rh, 2).T.contiguous()  # [R, T]
        final = torch.where(torch.isfinite(rh[-1]), rh[-1], torch.full_like(rh[-1], -math.inf))  # [R, N]
        ran = torch.isfinite(rh[-1]).any(0)
        winner = final.argmax(0)[ran]
        restart_wins = torch.bincount(winner, minlength=rh.shape[1])
    return SearchDiagnostics(search=name, steps=steps, mean_best=mean_best, restart_mean=restart_mean,
                             restart_wins=restart_wins, late_improvement_rate=late)
