"""Cheaper forward passes when a region lets only a few input entries vary (e.g. three free pixels).

For two models that read as chains of dense layers and ReLUs (:func:`modeldiff.linearize.linearize`), the first
layer on box ``i`` is ``W x + b = (W base_i + b) + W[:, F_i] (x - base_i)[F_i]``, where ``F_i`` are the box's
free entries and ``base_i`` its lower corner (equal to ``x`` on every fixed entry). :class:`ReducedPair`
precomputes the constant part per box, so a forward pass costs ``|F_i|`` instead of all input entries in the
first layer. The search uses it for its own steps only; every value it reports is recomputed by a plain forward
pass of the original models.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(100, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    >>> lo = torch.zeros(1, 100, dtype=torch.float64); hi = lo.clone(); hi[0, :3] = 1.0
    >>> pair = ReducedPair.build(net, net, lo, hi)
    >>> x = lo.clone(); x[0, :3] = 0.5
    >>> ya, _ = pair.outputs(x, torch.zeros(1, dtype=torch.long))
    >>> bool(torch.allclose(ya, net(x)))
    True
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from modeldiff.linearize import DenseLayer, NotLinearizable, activate, linearize, mismatch

__all__ = ["ReducedPair"]

logger = logging.getLogger(__name__)

#: used only when every box leaves at most this fraction of the input entries free
MAX_FREE_FRACTION = 0.25


class _Net:
    """One network's dense layers with its first layer split into a per-box constant and free columns."""

    def __init__(self, layers: list[DenseLayer], idx: Tensor, valid: Tensor, base: Tensor):
        first = layers[0]
        self.const = base @ first.weight.T + first.bias  # [N, h]
        w_t = first.weight.T  # [D, h]
        self.free_w = w_t[idx] * valid.unsqueeze(-1).to(w_t.dtype)  # [N, f, h]
        self.layers = layers

    def __call__(self, x_free: Tensor, region_of: Tensor | None) -> Tensor:
        """Outputs for rows ``x_free`` ``[m, f]`` (box ``region_of[j]`` for row ``j``), or, with ``region_of``
        None, for ``x_free`` ``[c, N, f]`` (row ``(k, i)`` in box ``i``): then ``[c * N, K]``."""
        if region_of is None:
            h = (self.const.unsqueeze(0) + torch.einsum("cnf,nfh->cnh", x_free, self.free_w)).flatten(0, 1)
        else:
            h = self.const[region_of] + torch.bmm(x_free.unsqueeze(1), self.free_w[region_of]).squeeze(1)
        for prev, layer in zip(self.layers, self.layers[1:]):
            h = activate(h, prev) @ layer.weight.T + layer.bias
        return h


class ReducedPair:
    """A and B evaluated through their dense layers with the fixed input entries of each box folded in.

    Use :meth:`build`, which returns None where it does not apply (models that are not dense ReLU chains, or
    boxes with more than :data:`MAX_FREE_FRACTION` of the entries free).
    """

    def __init__(self, a: _Net, b: _Net, idx: Tensor, base_free: Tensor, width_free: Tensor):
        self.a, self.b, self.idx, self.base_free, self.width_free = a, b, idx, base_free, width_free
        self.n = int(idx.shape[0])

    @classmethod
    def build(cls, model_a: nn.Module, model_b: nn.Module, lower: Tensor, upper: Tensor) -> "ReducedPair | None":
        flat_lo, flat_hi = lower.flatten(1), upper.flatten(1)
        free = flat_lo < flat_hi  # [N, D]
        d = flat_lo.shape[1]
        f = int(free.sum(dim=1).max())
        if f == 0 or f > MAX_FREE_FRACTION * d:
            return None
        try:
            layers_a = linearize(model_a, tuple(lower.shape[1:]))
            layers_b = linearize(model_b, tuple(lower.shape[1:]))
        except NotLinearizable as exc:
            logger.debug("search: no reduced forward (%s)", exc)
            return None
        idx = torch.argsort((~free).to(torch.int8), dim=1, stable=True)[:, :f]  # free entries first, per box
        valid = free.gather(1, idx)
        base = flat_lo.to(layers_a[0].weight.dtype)
        width = (flat_hi.to(base.dtype) - base).gather(1, idx) * valid.to(base.dtype)
        return cls(_Net(layers_a, idx, valid, base), _Net(layers_b, idx, valid, base), idx,
                   base.gather(1, idx), width)

    def outputs(self, x: Tensor, region_of: Tensor) -> tuple[Tensor, Tensor]:
        """``(A(x), B(x))`` for rows ``x`` ``[m, *input_shape]`` lying in the boxes ``region_of`` ``[m]``."""
        m, n = x.shape[0], self.n
        if m % n == 0 and torch.equal(region_of, torch.arange(m, device=x.device) % n):  # whole blocks of boxes
            x_free = x.reshape(m // n, n, -1).gather(2, self.idx.expand(m // n, -1, -1)) - self.base_free
            return self.a(x_free, None), self.b(x_free, None)
        x_free = x.flatten(1).gather(1, self.idx[region_of]) - self.base_free[region_of]
        return self.a(x_free, region_of), self.b(x_free, region_of)

    def outputs_unit(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(A, B)`` ``[c * N, K]`` at the points :func:`~modeldiff.search.starts.unit_to_box` makes of the
        unit-cube design ``u`` ``[c, d]`` in every box (row ``k * N + i``: point ``k`` in box ``i``)."""
        f = self.width_free.shape[1]
        uu = u[:, :f].to(self.width_free.dtype)
        if uu.shape[1] < f:
            uu = torch.cat([uu, uu.new_zeros(uu.shape[0], f - uu.shape[1])], dim=1)
        w = self.width_free.unsqueeze(0)
        x_free = torch.minimum(uu.unsqueeze(1) * w, w)  # [c, N, f], as unit_to_box clamps into the box
        return self.a(x_free, None), self.b(x_free, None)


#: :class:`StackedPair` is used for networks with at most this many weights (where per-op overhead dominates)
MAX_STACKED_WEIGHTS = 50_000
#: :meth:`StackedPair.outputs` runs at most this many rows per product (larger products leave the CPU caches:
#: 16384 ACAS Xu points take 19 ms in chunks of 512 rows, 59 ms in one)
STACKED_CHUNK_ROWS = 512


class StackedPair:
    """A and B evaluated together: each layer as one batched product with both networks' weights stacked.

    For small dense ReLU networks (ACAS Xu: 5 inputs, six layers of 50) a step of the search is dominated by the
    per-op cost of calling every layer of both models; one ``baddbmm`` per layer halves the op count. Use
    :meth:`build`, which returns None where it does not apply (models that do not read as dense ReLU networks of
    equal shapes, or more than :data:`MAX_STACKED_WEIGHTS` weights). Like :class:`ReducedPair`, the search uses it
    for its own steps only.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).double()
        >>> pair = StackedPair.build(net, net, (5,))
        >>> x = torch.rand(3, 5, dtype=torch.float64)
        >>> bool(torch.allclose(pair.outputs(x)[0], net(x)))
        True
    """

    def __init__(self, layers_a: list[DenseLayer], layers_b: list[DenseLayer]):
        self.weights = [torch.stack([a.weight.T, b.weight.T]) for a, b in zip(layers_a, layers_b)]  # [2, in, out]
        self.biases = [torch.stack([a.bias, b.bias]).unsqueeze(1) for a, b in zip(layers_a, layers_b)]  # [2, 1, out]
        self.layers = layers_a  # the activations (carried outputs are the same in both)

    @classmethod
    def build(cls, model_a: nn.Module, model_b: nn.Module, input_shape: tuple[int, ...]) -> "StackedPair | None":
        try:
            layers_a, layers_b = linearize(model_a, input_shape), linearize(model_b, input_shape)
        except NotLinearizable as exc:
            logger.debug("search: no stacked forward (%s)", exc)
            return None
        if mismatch(layers_a, layers_b) is not None or sum(w.weight.numel() for w in layers_a) > MAX_STACKED_WEIGHTS:
            return None
        return cls(layers_a, layers_b)

    def outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(A(x), B(x))`` for rows ``x`` ``[m, *input_shape]`` (in chunks of :data:`STACKED_CHUNK_ROWS` rows)."""
        if x.shape[0] > STACKED_CHUNK_ROWS:
            parts = [self.outputs(x[i:i + STACKED_CHUNK_ROWS]) for i in range(0, x.shape[0], STACKED_CHUNK_ROWS)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        h = x.flatten(1).unsqueeze(0).expand(2, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = activate(h, self.layers[i])
        return h[0], h[1]
