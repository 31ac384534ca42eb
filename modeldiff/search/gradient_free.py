"""Gradient-free searches over boxes, for models whose gradients are zero or useless (quantised, step functions).

* :func:`run_random`: every step draws a fresh point per row, uniformly in the box or at a random corner.
* :func:`run_square`: a Square-attack-style local search (after Andriushchenko et al., ECCV 2020; own design
  for boxes). Each step re-draws a random part of the current point (a square window across channels for
  image-shaped inputs, else a random subset of the varying entries) and keeps the proposal when the objective
  does not decrease. A proposal's entries go to a corner of the box (entries on a bound flip to the other bound,
  the others go to a random bound), to uniform values, or to a small Gaussian move around the current values, so
  that interior maxima are found as well as corner ones. The part re-drawn and the size of the local moves
  shrink over the run.

Both report through the same :class:`~modeldiff.search.apgd.Chunk` hooks as APGD.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modeldiff.search.apgd import Chunk, _rows

__all__ = ["run_random", "run_square"]


def _rand(shape, like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def run_random(chunk: Chunk, steps: int, generator: torch.Generator) -> str:
    """Random sampling: at each of ``steps`` steps one new point per row (half uniform in the box, half a
    random corner). Returns ``"done"`` or ``"stopped"``."""
    lo, hi = chunk.lo, chunk.hi
    x = chunk.x0.clone()
    _, value, score, _ = chunk.fn(x, False)
    chunk.report(0, x, value, score)
    for k in range(steps):
        if chunk.stop():
            return "stopped"
        u = _rand(x.shape, x, generator)
        corner = _rand((x.shape[0],), x, generator) < 0.5
        u = torch.where(_rows(corner, x), (u < 0.5).to(x.dtype), u)
        x = torch.clamp(lo + (hi - lo) * u, lo, hi)
        _, value, score, _ = chunk.fn(x, False)
        chunk.report(k + 1, x, value, score)
        chunk.tick()
    return "done"


def _window_mask(shape: tuple[int, ...], frac: float, generator: torch.Generator, device) -> Tensor:
    """Square windows ``[m, C, H, W]``: per row one window covering about ``frac`` of the ``H x W`` plane."""
    m, _, h, w = shape
    side = max(1, min(h, w, int(round(math.sqrt(frac * h * w)))))
    top = torch.randint(0, h - side + 1, (m,), generator=generator, device=device)
    left = torch.randint(0, w - side + 1, (m,), generator=generator, device=device)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = ((rows >= top.view(m, 1, 1)) & (rows < (top + side).view(m, 1, 1))
              & (cols >= left.view(m, 1, 1)) & (cols < (left + side).view(m, 1, 1)))
    return inside.unsqueeze(1).expand(shape)


def run_square(chunk: Chunk, steps: int, generator: torch.Generator, *, p_init: float | None = None) -> str:
    """Square-attack-style random local search for ``steps`` steps (one forward pass of the chunk each).

    Args:
        chunk: rows, boxes, starts and hooks (see :class:`~modeldiff.search.apgd.Chunk`).
        steps: number of proposals per row.
        generator: the random generator (the run is deterministic given its state).
        p_init: fraction of the varying entries re-drawn at first (default: 0.3 for at most 16 varying entries,
            else 0.1); it halves five times over the run, and at least one entry is always re-drawn.

    Returns:
        ``"done"`` or ``"stopped"``.
    """
    lo, hi = chunk.lo, chunk.hi
    x = chunk.x0.clone()
    m = x.shape[0]
    loss, value, score, _ = chunk.fn(x, False)
    loss = torch.nan_to_num(loss, nan=-math.inf)
    chunk.report(0, x, value, score)
    varying = hi > lo
    flat_var = varying.reshape(m, -1)
    n_var = flat_var.sum(dim=1)
    if p_init is None:
        p_init = 0.3 if int(n_var.max()) <= 16 else 0.1
    image = x.dim() == 4 and x.shape[2] >= 4 and x.shape[3] >= 4 and bool(
        (flat_var.double().mean(dim=1) >= 0.5).all())
    for k in range(steps):
        if chunk.stop():
            return "stopped"
        frac = k / max(steps, 1)
        p = p_init * 0.5 ** math.floor(6 * frac)
        sigma = 0.25 * 0.5 ** (6 * frac)  # local moves, in box widths
        if image:
            mask = _window_mask(tuple(x.shape), p, generator, x.device) & varying
        else:
            mask = (_rand(x.shape, x, generator) < p) & varying
        # at least one varying entry per row
        keys = torch.where(flat_var, _rand(flat_var.shape, x, generator), torch.full_like(flat_var, 2.0, dtype=x.dtype))
        one = torch.zeros_like(flat_var).scatter_(1, keys.argmin(dim=1, keepdim=True), True) & flat_var
        mask = mask | one.view_as(mask)
        kind = torch.randint(0, 3, (m,), generator=generator, device=x.device)
        u = _rand(x.shape, x, generator)
        # corner moves flip entries that sit on a bound to the other bound, and send the others to a random one
        corner = torch.where(x <= lo, hi, torch.where(x >= hi, lo, torch.where(u < 0.5, lo, hi)))
        uniform = lo + (hi - lo) * _rand(x.shape, x, generator)
        local = x + sigma * (hi - lo) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        new = torch.where(_rows(kind == 0, x), corner, torch.where(_rows(kind == 1, x), uniform, local))
        cand = torch.clamp(torch.where(mask, new, x), lo, hi)
        c_loss, c_value, c_score, _ = chunk.fn(cand, False)
        c_loss = torch.nan_to_num(c_loss, nan=-math.inf)
        chunk.report(k + 1, cand, c_value, c_score)
        accept = c_loss >= loss
        x = torch.where(_rows(accept, x), cand, x)
        loss = torch.where(accept, c_loss, loss)
        chunk.tick()
    return "done"
