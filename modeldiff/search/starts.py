"""Starting points of the search: uniform random points and scrambled Sobol points over boxes.

Both map unit-cube coordinates onto the *varying* entries of each box (``lower < upper``); fixed entries keep
their value, so a box with three free pixels gets a three-dimensional low-discrepancy design.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sobol_points", "uniform_points", "unit_design", "unit_to_box"]


def unit_to_box(u: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Map unit-cube coordinates into every box: ``u`` ``[n, d]`` (the same design for every box) or
    ``[n, N, d]`` (one per box) gives ``[n, N, *shape]``.

    Coordinate ``j`` goes to the ``j``-th varying entry (in flattened order) of each box; boxes with fewer than
    ``d`` varying entries ignore the extra coordinates.
    """
    n_box = lower.shape[0]
    lo = lower.reshape(n_box, -1)
    hi = upper.reshape(n_box, -1)
    varying = lo < hi
    d = u.shape[-1]
    rank = torch.cumsum(varying.long(), dim=1) - 1
    rank = torch.where(varying, rank, torch.zeros_like(rank)).clamp_max(max(d - 1, 0))
    u = u.to(device=lo.device, dtype=lo.dtype)
    if d == 0:
        full = torch.zeros((u.shape[0], *lo.shape), dtype=lo.dtype, device=lo.device)
    elif u.dim() == 2:
        full = u[:, rank]  # [n, N, D]
    else:
        full = u.gather(2, rank.unsqueeze(0).expand(u.shape[0], -1, -1))
    x = torch.clamp(lo + (hi - lo) * full, lo, hi)
    x = torch.where(varying, x, lo)
    return x.reshape(u.shape[0], *lower.shape)


def unit_design(n: int, d: int, *, sobol: bool, seed: int = 0, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points of the unit cube ``[0, 1]^d``, ``[n, d]`` float64: scrambled Sobol (seeded by ``seed``; uniform
    random beyond SobolEngine's dimension limit) or uniform random (from ``generator``)."""
    if sobol and 0 < d <= torch.quasirandom.SobolEngine.MAXDIM:
        return torch.quasirandom.SobolEngine(dimension=d, scramble=True, seed=int(seed)).draw(n, dtype=torch.float64)
    if sobol and generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    device = generator.device if generator is not None else "cpu"
    return torch.rand((n, d), generator=generator, dtype=torch.float64, device=device)


def sobol_points(lower: Tensor, upper: Tensor, n: int, seed: int) -> Tensor:
    """``n`` scrambled Sobol points in each box, ``[n, N, *shape]`` (seeded: the same call gives the same points).

    The design has as many dimensions as the box with the most varying entries (at most 21201, SobolEngine's
    limit). Example:

        >>> lo, hi = torch.zeros(2, 3), torch.ones(2, 3)
        >>> sobol_points(lo, hi, 8, seed=0).shape
        torch.Size([8, 2, 3])
    """
    d = int((lower < upper).reshape(lower.shape[0], -1).sum(dim=1).max()) if lower.numel() else 0
    return unit_to_box(unit_design(n, d, sobol=True, seed=seed), lower, upper)


def uniform_points(lower: Tensor, upper: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` uniform random points in each box, ``[n, N, *shape]``."""
    u = torch.rand((n, *lower.shape), generator=generator, dtype=lower.dtype, device=generator.device)
    u = u.to(lower.device)
    return torch.where(lower < upper, torch.clamp(lower + (upper - lower) * u, lower, upper), lower)
