"""The divergence logic shared by every bound method.

A method only has to bound linear specifications of three quantities over a batch of boxes (see
:meth:`SpecBounder.spec_bounds`); :meth:`SpecBounder.bound_batch` turns those into a bound of each divergence
as derived in :mod:`modeldiff.bounds.derive`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from modeldiff.bounds import derive

logger = logging.getLogger(__name__)


class SpecUnavailable(Exception):
    """The method cannot bound this quantity (e.g. softmax differences); the caller falls back."""


class SpecBounder(ABC):
    """Bounds ``C @ q(x)`` over boxes, for ``q`` one of

    * ``"delta"``: ``A(x) - B(x)`` (``[K]``),
    * ``"pair"``: ``[A(x), B(x)]`` concatenated (``[2K]``),
    * ``"softmax"``: ``softmax(A(x)) - softmax(B(x))`` (``[K]``).
    """

    n_outputs: int

    @abstractmethod
    def spec_bounds(self, kind: str, lower: Tensor, upper: Tensor, spec: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(lb, ub)``, each ``[B, S]``: bounds of ``spec @ q(x)`` over each box ``[lower, upper]`` (``[B, ...]``).

        ``spec`` is ``[B, S, dim q]``; None means the identity (elementwise bounds of ``q``).
        Raises :class:`SpecUnavailable` when the method cannot bound ``kind``.
        """

    def bound_batch(
        self, divergence: str, lower: Tensor, upper: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Upper bound ``[B]`` of ``divergence`` over each box, and the elementwise delta bounds where computed.

        ``labels`` (``[B]``) is needed for ``top1``: the label agreement is certified on.
        """
        k = self.n_outputs
        n = lower.shape[0]
        dtype, device = lower.dtype, lower.device
        zeros = torch.zeros(n, dtype=dtype, device=device)
        if divergence == "top1":
            if k < 2:
                return zeros, None, None
            spec = derive.agreement_matrix(labels, k, dtype=dtype).to(device)
            lb, _ = self.spec_bounds("pair", lower, upper, spec)
            proven = (lb > 0).all(dim=1)
            return (~proven).to(dtype), None, None

        lb, ub = self.spec_bounds("delta", lower, upper)
        if divergence in ("delta", "linf"):
            return derive.linf_upper(lb, ub), lb, ub
        if divergence == "l2":
            return derive.l2_upper(lb, ub), lb, ub
        if divergence == "l1":
            bound = derive.l1_upper(lb, ub)
            if k <= derive.MAX_ENUMERATED_OUTPUTS:
                signs = derive.batch_spec(derive.sign_matrix(k, dtype, device), n)
                _, us = self.spec_bounds("delta", lower, upper, signs)
                bound = torch.minimum(bound, derive.finite_upper(us.amax(dim=1)))
            return bound, lb, ub
        if divergence in ("kl", "tv"):
            if k < 2:
                return zeros, lb, ub
            pairs = derive.batch_spec(derive.pairwise_matrix(k, dtype, device), n)
            _, uo = self.spec_bounds("delta", lower, upper, pairs)
            r = uo.amax(dim=1)
            if divergence == "kl":
                return derive.kl_upper_from_oscillation(r), lb, ub
            bound = torch.minimum(derive.tv_upper_from_oscillation(r), torch.ones_like(r))
            return torch.minimum(bound, self._softmax_tv(lower, upper)), lb, ub
        raise AssertionError(f"unhandled divergence {divergence}")

    def _softmax_tv(self, lower: Tensor, upper: Tensor) -> Tensor:
        """TV bound from bounds of ``softmax(A) - softmax(B)``; ``inf`` where the method cannot bound that."""
        k, n = self.n_outputs, lower.shape[0]
        try:
            if k <= derive.MAX_ENUMERATED_OUTPUTS:
                subsets = derive.batch_spec(derive.subset_matrix(k, lower.dtype, lower.device), n)
                _, us = self.spec_bounds("softmax", lower, upper, subsets)
                return derive.finite_upper(us.amax(dim=1))
            lp, up = self.spec_bounds("softmax", lower, upper)
            return 0.5 * derive.l1_upper(lp, up)
        except SpecUnavailable as exc:
            logger.debug("softmax-difference bounds unavailable (%s); using the oscillation bound only", exc)
            return torch.full((n,), float("inf"), dtype=lower.dtype, device=lower.device)
