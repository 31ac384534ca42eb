"""Auto-PGD ascent in L-inf geometry over boxes (after Croce & Hein, ICML 2020; written from the paper).

Every row of a batch is one restart in one box ``lo <= x <= hi``. Each step moves the row by the sign of the
gradient times a per-row step size ``eta`` times the box's half-width per entry, projects exactly onto the box
(a clamp), and mixes in momentum (``alpha = 0.75``). The step size starts at ``2`` half-widths (the whole
width: the first step goes to the corner the gradient points to) and is halved at checkpoints
``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``,
when since the previous checkpoint

1. the objective increased in fewer than ``rho = 75%`` of the steps, or
2. neither the step size nor the best objective changed.

After a halving the row restarts from its best point so far (without momentum). The best point of each row is
kept throughout; a caller-supplied ``report`` hook records the points and their reported values at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Chunk", "apgd_checkpoints", "run_apgd", "run_pgd"]

#: what a chunk's evaluation function returns: loss, value, score (each ``[m]``) and the gradient of the loss
#: (``[m, *shape]``, or None when not asked for)
Evaluation = tuple[Tensor, Tensor, Tensor, Tensor | None]


@dataclass
class Chunk:
    """A batch of search rows, the unit every optimiser works on.

    Attributes:
        fn: ``fn(x, need_grad) -> (loss, value, score, grad)`` for rows ``x`` ``[m, *shape]``.
        lo, hi: the rows' boxes ``[m, *shape]``.
        x0: starting points ``[m, *shape]`` (inside the boxes).
        report: ``report(step, x, value, score)``: records the rows' points after ``step`` steps
            (step 0 is the start).
        stop: returns True when the run must stop now (time budget).
        tick: called once per step (progress bar).
    """

    fn: Callable[[Tensor, bool], Evaluation]
    lo: Tensor
    hi: Tensor
    x0: Tensor
    report: Callable[[int, Tensor, Tensor, Tensor], None]
    stop: Callable[[], bool]
    tick: Callable[[], None]


def apgd_checkpoints(steps: int) -> list[int]:
    """The step numbers (1-based, ``<= steps``) at which APGD checks whether to halve its step size.

    Example:
        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    out = sorted({math.ceil(q * steps - 1e-9) for q in p[1:] if q < 1.0})
    return [w for w in out if 1 <= w <= steps]


def _rows(t: Tensor, like: Tensor) -> Tensor:
    """A ``[m]`` tensor viewed to broadcast against ``like`` ``[m, ...]``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def _clean(g: Tensor) -> Tensor:
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def run_apgd(chunk: Chunk, steps: int, *, alpha: float = 0.75, rho: float = 0.75,
             check_gradient: bool = False, eta0: float | Tensor = 2.0) -> str:
    """Run APGD on one chunk for ``steps`` steps.

    Args:
        chunk: the rows, their boxes, starting points and hooks.
        steps: number of gradient steps (each one forward and one backward pass of the chunk).
        alpha: momentum weight of the new step (``1 - alpha`` goes to the previous displacement).
        rho: the fraction of successful steps below which the step size is halved at a checkpoint.
        check_gradient: if True, give up before the first step when the gradient is zero or non-finite at every
            starting point (the caller then switches to a gradient-free optimiser).

    Returns:
        ``"done"``, ``"stopped"`` (``chunk.stop()`` said so) or ``"no-gradient"``.
    """
    lo, hi = chunk.lo, chunk.hi
    half = (hi - lo) / 2
    x = chunk.x0.clone()
    loss, value, score, grad = chunk.fn(x, True)
    if check_gradient:
        usable = torch.isfinite(grad) & (grad != 0) & (half > 0)
        if not bool(usable.any()):
            return "no-gradient"
    chunk.report(0, x, value, score)
    grad = _clean(grad)
    loss = torch.nan_to_num(loss.detach(), nan=-math.inf)
    m = x.shape[0]
    eta = torch.as_tensor(eta0, dtype=x.dtype, device=x.device).expand(m).clone()
    best_loss = loss.clone()
    x_best, g_best = x.clone(), grad.clone()
    x_prev = x.clone()
    loss_prev = loss.clone()
    checkpoints = set(apgd_checkpoints(steps))
    last_ck = 0
    n_up = torch.zeros(m, dtype=torch.long, device=x.device)
    eta_ck, best_ck = eta.clone(), best_loss.clone()
    for k in range(steps):
        if chunk.stop():
            return "stopped"
        a = 1.0 if k == 0 else alpha
        z = torch.clamp(x + _rows(eta, x) * half * grad.sign(), lo, hi)
        x_new = torch.clamp(x + a * (z - x) + (1.0 - a) * (x - x_prev), lo, hi)
        x_prev, x = x, x_new
        loss, value, score, grad = chunk.fn(x, True)
        chunk.report(k + 1, x, value, score)
        grad = _clean(grad)
        loss = torch.nan_to_num(loss.detach(), nan=-math.inf)
        n_up += (loss > loss_prev).long()
        loss_prev = loss
        better = loss > best_loss
        if bool(better.any()):
            bx = _rows(better, x)
            x_best = torch.where(bx, x, x_best)
            g_best = torch.where(bx, grad, g_best)
            best_loss = torch.where(better, loss, best_loss)
        if k + 1 in checkpoints:
            span = k + 1 - last_ck
            stalled = n_up.double() < rho * span
            unchanged = (eta_ck == eta) & (best_ck == best_loss)
            halve = stalled | unchanged
            eta_ck, best_ck = eta.clone(), best_loss.clone()
            if bool(halve.any()):
                eta = torch.where(halve, eta / 2, eta)
                hx = _rows(halve, x)
                x = torch.where(hx, x_best, x)
                x_prev = torch.where(hx, x_best, x_prev)
                grad = torch.where(hx, g_best, grad)
                loss_prev = torch.where(halve, best_loss, loss_prev)
            n_up.zero_()
            last_ck = k + 1
        chunk.tick()
    return "done"


def run_pgd(chunk: Chunk, steps: int, *, eta: float = 1.0, check_gradient: bool = False) -> str:
    """Plain projected sign-gradient ascent with a fixed step of ``eta`` half-widths of the box per entry.

    Used for short exploratory runs from many starting points (few steps, large step: each run lands near a
    local maximum of a piecewise-linear objective cheaply); the best of them are then refined by
    :func:`run_apgd`.

    Returns:
        ``"done"``, ``"stopped"`` or ``"no-gradient"`` (as :func:`run_apgd`).
    """
    lo, hi = chunk.lo, chunk.hi
    step = (hi - lo) / 2 * eta
    x = chunk.x0.clone()
    _, value, score, grad = chunk.fn(x, True)
    if check_gradient:
        usable = torch.isfinite(grad) & (grad != 0) & (step > 0)
        if not bool(usable.any()):
            return "no-gradient"
    chunk.report(0, x, value, score)
    for k in range(steps):
        if chunk.stop():
            return "stopped"
        x = torch.clamp(x + step * _clean(grad).sign(), lo, hi)
        _, value, score, grad = chunk.fn(x, k + 1 < steps)
        chunk.report(k + 1, x, value, score)
        chunk.tick()
    return "done"
