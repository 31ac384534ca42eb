"""What the search maximises, per divergence, and the plain forward re-check :func:`evaluate`.

Two quantities are computed from the outputs ``ya = A(x)`` and ``yb = B(x)`` of every search row:

* the **value**: the divergence as reported (``|A_t - B_t|`` for ``delta`` with an output index,
  ``max_i |A_i - B_i|`` for ``delta`` without one, the divergence itself otherwise, and for ``top1``
  ``1.0`` where the argmax labels differ, else ``0.0``);
* the **loss**: the smooth surrogate the optimiser ascends. For the continuous divergences it is the value
  itself or a signed output difference ``s * (A_i - B_i)`` (one restart per sign / output, so that each
  restart climbs one smooth face instead of a maximum of many); for ``top1`` it is a scale-invariant margin
  (DLR-style, Croce & Hein 2020) that is positive exactly where one model keeps a label and the other leaves it.

A **score** orders candidate witnesses: the value for continuous divergences, and for ``top1`` a number that is
above 2 for every true label flip and otherwise grows with the margin (so the best-margin point is kept when no
flip was found).

Each search row (one restart of one region) follows a *plan*: a mode and its parameters, chosen once from the
outputs at the region's midpoint (see :func:`plan_restarts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modeldiff.divergences import Divergence, get_divergence
from modeldiff.errors import IncompatibleModelsError, SearchError

__all__ = ["RestartPlan", "evaluate", "objective", "plan_restarts", "value_of"]

# plan modes
DIRECT = 0  # loss = the value itself
SIGNED = 1  # loss = sign * (ya - yb)[out], or |ya - yb|[out] where sign == 0
TOP1_KEEP_A = 2  # A keeps its current label, B leaves it
TOP1_KEEP_B = 3  # B keeps its current label, A leaves it
TOP1_TARGET = 4  # A says class_a, B says class_b


def _check_index(output_index: Tensor | int | None, n: int, k: int, divergence: str) -> Tensor | None:
    """``output_index`` as a long ``[n]`` tensor (or None), checked against ``k`` outputs."""
    if output_index is None:
        return None
    if divergence != "delta":
        raise SearchError(f"output_index applies only to the delta divergence, got divergence {divergence!r}")
    if isinstance(output_index, bool):
        raise TypeError(f"expected output_index to be an int or a long tensor, got {type(output_index).__name__}")
    if isinstance(output_index, int):
        idx = torch.full((n,), output_index, dtype=torch.long)
    elif isinstance(output_index, Tensor):
        if output_index.is_floating_point() or output_index.is_complex() or output_index.dtype == torch.bool:
            raise TypeError(f"expected output_index to be an integer tensor, got dtype {output_index.dtype}")
        idx = output_index.reshape(-1).long()
        if idx.numel() == 1:
            idx = idx.expand(n).clone()
        elif idx.numel() != n:
            raise SearchError(f"expected output_index of shape [{n}] (one per region), got {tuple(output_index.shape)}")
    else:
        raise TypeError(f"expected output_index to be an int or a long tensor, got {type(output_index).__name__}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise SearchError(f"expected output_index in [0, {k}), got values in [{int(idx.min())}, {int(idx.max())}]")
    return idx


def value_of(divergence: Divergence, ya: Tensor, yb: Tensor, out: Tensor | None = None) -> Tensor:
    """The reported value ``[M]`` of ``divergence`` on outputs ``ya``, ``yb`` ``[M, K]``.

    ``out`` (long ``[M]``) selects one output for ``delta``: the value is then ``|ya_t - yb_t|``; without it
    ``delta`` reports ``max_i |ya_i - yb_i|``.
    """
    if divergence.name == "delta":
        d = divergence(ya, yb)
        if out is None:
            return d.abs().amax(dim=1)
        return d.gather(1, out.view(-1, 1).to(d.device)).squeeze(1).abs()
    return divergence(ya, yb)


def evaluate(
    model_a: nn.Module,
    model_b: nn.Module,
    x: Tensor,
    divergence: str | Divergence,
    output_index: Tensor | int | None = None,
) -> Tensor:
    """The divergence of A and B at the points ``x``, by a plain forward pass (no gradients).

    This is the honest re-check of a witness: every value the search reports in
    :attr:`~modeldiff.results.SearchResult.found` is recomputed with it. Both models are evaluated in eval mode
    (their training flags are restored afterwards); ``x`` is used as given (same dtype and device as the models).

    Args:
        model_a: model A.
        model_b: model B.
        x: inputs ``[N, *input_shape]``.
        divergence: a name from :data:`modeldiff.divergences.DIVERGENCES` or a :class:`Divergence`.
        output_index: for ``delta`` only: an int or a long ``[N]`` tensor selecting one output per input; the
            value is then ``|A(x)_t - B(x)_t|``. None means ``max_i |A(x)_i - B(x)_i|``.

    Returns:
        ``[N]`` divergence values (for ``top1``: 1.0 where the argmax labels differ, else 0.0).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeldiff.search import evaluate
        >>> a, b = nn.Linear(2, 3).double(), nn.Linear(2, 3).double()
        >>> evaluate(a, b, torch.zeros(4, 2, dtype=torch.float64), "linf").shape
        torch.Size([4])
        >>> evaluate(a, b, torch.zeros(4, 2, dtype=torch.float64), "delta", output_index=1).shape
        torch.Size([4])
    """
    for name, model in (("A", model_a), ("B", model_b)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected model {name} to be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a tensor, got {type(x).__name__}")
    div = get_divergence(divergence)
    flags = [(m, m.training) for m in (*model_a.modules(), *model_b.modules())]
    try:
        model_a.eval()
        model_b.eval()
        with torch.no_grad():
            ya, yb = model_a(x), model_b(x)
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(ya, Tensor) or not isinstance(yb, Tensor) or ya.dim() != 2:
        raise IncompatibleModelsError("expected both models to return one tensor of shape [N, K]")
    idx = _check_index(output_index, ya.shape[0], ya.shape[1], div.name)
    return value_of(div, ya, yb, idx).detach()


@dataclass
class RestartPlan:
    """Per-row objective parameters, all long/float tensors of one shape (``[R, N]``, or ``[M]`` for a chunk).

    mode: one of the module's mode constants; out: the output index (delta / signed modes);
    sign: +1 / -1 for the signed mode (0: the absolute value); class_a, class_b: the target labels for the
    targeted top-1 mode; value_out: the output index the reported value is about (delta with an index), or None.
    """

    mode: Tensor
    out: Tensor
    sign: Tensor
    class_a: Tensor
    class_b: Tensor
    value_out: Tensor | None

    def rows(self) -> "RestartPlan":
        """The plan flattened to rows ``r * N + i``."""
        return RestartPlan(
            *(t.reshape(-1) for t in (self.mode, self.out, self.sign, self.class_a, self.class_b)),
            None if self.value_out is None else self.value_out.reshape(-1),
        )

    def select(self, sl: slice | Tensor) -> "RestartPlan":
        return RestartPlan(
            self.mode[sl], self.out[sl], self.sign[sl], self.class_a[sl], self.class_b[sl],
            None if self.value_out is None else self.value_out[sl],
        )


def plan_restarts(divergence: Divergence, restarts: int, ya: Tensor, yb: Tensor,
                  output_index: Tensor | None) -> RestartPlan:
    """The objective of each restart ``[R, N]``, from the outputs ``ya``, ``yb`` ``[N, K]`` at the midpoints.

    * ``delta`` with ``output_index``: restarts ascend ``|A_t - B_t|``, except restart 1, which ascends
      ``s * (A_t - B_t)`` with ``s`` the opposite of the sign seen at the midpoint (so that both signs are tried).
    * ``delta`` without an index and ``linf``: restart 0 ascends ``max_i |A_i - B_i|`` itself; restart ``r >= 1``
      ascends ``s * (A_i - B_i)`` for the ``r``-th most promising pair ``(i, s)`` at the midpoint (largest
      ``s * (A_i - B_i)`` first).
    * ``l1``, ``l2``: even restarts ascend the norm itself, odd ones the pairs ``(i, s)`` as above (a norm is at
      least each ``|A_i - B_i|``, and maximising a norm has poor local maxima that the pairs avoid).
    * ``kl``, ``tv``: every restart ascends the divergence.
    * ``top1``: restart 0 keeps A's label and pushes B off it, restart 1 the reverse, then targeted pairs over
      A's top classes at the midpoint ``(c, t1), (t1, c), (c, t2), ...``.
    """
    n, k = ya.shape
    dev = ya.device
    R = restarts
    mode = torch.full((R, n), DIRECT, dtype=torch.long, device=dev)
    out = torch.zeros((R, n), dtype=torch.long, device=dev)
    sign = torch.ones((R, n), dtype=ya.dtype, device=dev)
    ca = torch.zeros((R, n), dtype=torch.long, device=dev)
    cb = torch.zeros((R, n), dtype=torch.long, device=dev)
    d = (ya - yb).detach()
    name = divergence.name
    if name == "delta" and output_index is not None:
        mode[:] = SIGNED
        out[:] = output_index.to(dev).view(1, n)
        dt = d.gather(1, out[0].view(n, 1)).squeeze(1)
        s0 = torch.where(dt < 0, -1.0, 1.0).to(ya.dtype)
        sign[:] = 0.0  # |A_t - B_t| itself: the sign follows the run
        if R > 1:
            sign[1] = -s0  # one restart insists on the sign not seen at the midpoint
    elif name in ("delta", "linf", "l1", "l2"):
        pairs = torch.cat([d, -d], dim=1)  # [n, 2k]: (i, +1) then (i, -1)
        order = torch.argsort(pairs, dim=1, descending=True, stable=True)
        every = 1 if name in ("delta", "linf") else 2  # l1, l2: every other restart ascends the norm itself
        for j, r in enumerate(range(1, R, every)):
            p = order[:, j % (2 * k)]
            mode[r] = SIGNED
            out[r] = p % k
            sign[r] = torch.where(p < k, 1.0, -1.0).to(ya.dtype)
    elif name == "top1":
        if k < 2:
            raise IncompatibleModelsError(f"top1 needs models with at least 2 outputs, got {k}")
        ranked = torch.argsort(ya.detach(), dim=1, descending=True, stable=True)  # [n, k]
        for r in range(R):
            if r == 0:
                mode[r] = TOP1_KEEP_A
            elif r == 1:
                mode[r] = TOP1_KEEP_B
            else:
                j = r - 2
                t = ranked[:, 1 + (j // 2) % (k - 1)]
                c = ranked[:, 0]
                mode[r] = TOP1_TARGET
                ca[r], cb[r] = (c, t) if j % 2 == 0 else (t, c)
    value_out = None
    if name == "delta" and output_index is not None:
        value_out = output_index.to(dev).view(1, n).expand(R, n).clone()
    return RestartPlan(mode, out, sign, ca, cb, value_out)


def _keep_margin(z: Tensor, c: Tensor) -> Tensor:
    """``z_c - max_{j != c} z_j`` per row: positive where ``c`` is the strict argmax."""
    zc = z.gather(1, c.view(-1, 1)).squeeze(1)
    other = z.scatter(1, c.view(-1, 1), float("-inf")).amax(dim=1)
    return zc - other


def _dlr_scale(z: Tensor) -> Tensor:
    """Scale of a logit vector for the scale-invariant margin: ``z_(1) - z_(3)`` (``K >= 3``), else 1."""
    if z.shape[1] < 3:
        return torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
    top = torch.topk(z, 3, dim=1).values
    return top[:, 0] - top[:, 2]


def objective(divergence: Divergence, plan: RestartPlan, ya: Tensor, yb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, value, score)``, each ``[M]``, for search rows with outputs ``ya``, ``yb`` ``[M, K]``.

    ``loss`` keeps the autograd graph; ``value`` and ``score`` are detached. ``plan`` holds the rows' plans.
    """
    value = value_of(divergence, ya.detach(), yb.detach(), plan.value_out)
    name = divergence.name
    if name == "top1":
        loss = torch.zeros(ya.shape[0], dtype=ya.dtype, device=ya.device)
        size = ya.detach().abs().amax(dim=1) + yb.detach().abs().amax(dim=1)
        scale = torch.maximum(0.5 * (_dlr_scale(ya) + _dlr_scale(yb)).detach(), 1e-9 * (1.0 + size))
        mode = plan.mode
        if (mode == TOP1_KEEP_A).any():
            c = ya.detach().argmax(dim=1)
            l_a = torch.minimum(_keep_margin(ya, c), -_keep_margin(yb, c))
            loss = torch.where(mode == TOP1_KEEP_A, l_a, loss)
        if (mode == TOP1_KEEP_B).any():
            c = yb.detach().argmax(dim=1)
            l_b = torch.minimum(_keep_margin(yb, c), -_keep_margin(ya, c))
            loss = torch.where(mode == TOP1_KEEP_B, l_b, loss)
        if (mode == TOP1_TARGET).any():
            l_t = torch.minimum(_keep_margin(ya, plan.class_a), _keep_margin(yb, plan.class_b))
            loss = torch.where(mode == TOP1_TARGET, l_t, loss)
        # scale-invariant margin; the scale is a normaliser only (no gradient through it)
        loss = loss / scale
        m = loss.detach()
        score = 2.0 * value + torch.atan(torch.nan_to_num(m, nan=-math.inf)) / math.pi + 0.5
        score = torch.where(torch.isnan(m), torch.full_like(score, -math.inf), score)
        return loss, value, score
    mode = plan.mode
    if (mode == SIGNED).any():
        dsel = (ya - yb).gather(1, plan.out.view(-1, 1)).squeeze(1)
        signed = torch.where(plan.sign == 0, dsel.abs(), plan.sign * dsel)
        if (mode == SIGNED).all():
            loss = signed
        else:
            direct = value_of(divergence, ya, yb, plan.value_out)
            loss = torch.where(mode == SIGNED, signed, direct)
    else:
        loss = value_of(divergence, ya, yb, plan.value_out)
    score = torch.where(torch.isnan(value), torch.full_like(value, -math.inf), value)
    return loss, value, score
