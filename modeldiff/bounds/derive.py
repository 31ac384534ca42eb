"""From bounds that auto_LiRPA computes to sound upper bounds of each divergence.

Notation: over a region X, ``d(x) = A(x) - B(x)`` (the logit difference, ``[K]``), ``p = softmax(A(x))``,
``q = softmax(B(x))``. Bound propagation gives, for a specification matrix ``C``, sound bounds
``lb <= C d(x) <= ub`` for all x in X; ``C = I`` gives elementwise bounds ``l_i <= d_i(x) <= u_i``.

* **delta**: ``[l_i, u_i]`` directly; ``|d_i| <= m_i := max(|l_i|, |u_i|)``.
* **linf**: ``max_i |d_i| <= max_i m_i``.
* **l1**: ``sum_i |d_i| = max_{s in {-1,1}^K} s.d``, so with ``C`` = all sign vectors (for ``K <= 8``) the bound is
  ``max_s ub(s.d)``, which back-substitution makes no looser than ``sum_i m_i``; both are sound and the smaller
  is reported.
* **l2**: ``||d||_2 <= sqrt(sum_i m_i^2)``.
* **kl**: with ``R = max_{i,j} (d_i - d_j)`` (bounded with ``C`` = all rows ``e_i - e_j``), the log-ratio
  ``log(p_i/q_i) = d_i - log E_q[exp d]`` lies in an interval of width at most ``R``. By Jensen,
  ``log E_q[exp d] >= E_q[d]``, so ``KL(p||q) = E_p[d] - log E_q[exp d] <= sum_i (p_i - q_i) d_i
  = sum_i (p_i - q_i)(d_i - c) <= ||p - q||_1 R / 2 = TV(p, q) R`` (choosing ``c`` at the middle of d's range),
  and with the TV bound below, ``KL <= R tanh(R/4)``.
* **tv**: for a log-ratio confined to an interval of width ``R``, the largest total variation is reached by two-
  valued ``d``: ``TV <= tanh(R/4)``. Independently, bounds of ``p - q`` (softmax written as ``exp/sum``) give
  ``TV = max_S sum_{i in S} (p_i - q_i)`` (``C`` = indicator rows of the subsets, for ``K <= 8``) or
  ``TV <= 0.5 sum_i max(|l_i|, |u_i|)`` of ``p - q``. The smallest of these and 1 is reported.
* **top1**: with ``c`` = A's label at the region's midpoint, if ``A_c(x) - A_j(x) > 0`` and ``B_c(x) - B_j(x) > 0``
  for every ``j != c`` over X (lower bounds from ``C`` on ``[A(x), B(x)]``), A and B provably agree on label ``c``
  everywhere in X: the bound is 0; otherwise it is 1.

Non-finite bounds (overflow in ``exp``, say) are replaced by ``+inf`` for upper bounds, which stays sound.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

#: Largest output count for which the exact sign/subset specifications are used (2^K rows).
MAX_ENUMERATED_OUTPUTS = 8


def finite_upper(t: Tensor) -> Tensor:
    return torch.where(torch.isnan(t), torch.full_like(t, math.inf), t)


def abs_max(lb: Tensor, ub: Tensor) -> Tensor:
    """``max(|lb|, |ub|)``: a bound of ``|d|`` for ``d`` in ``[lb, ub]`` (NaN becomes inf)."""
    return finite_upper(torch.maximum(lb.abs(), ub.abs()))


def linf_upper(lb: Tensor, ub: Tensor) -> Tensor:
    """``[N]`` bound of ``max_i |d_i|`` from elementwise bounds ``[N, K]``."""
    return abs_max(lb, ub).amax(dim=1)


def l1_upper(lb: Tensor, ub: Tensor) -> Tensor:
    """``[N]`` bound of ``sum_i |d_i|`` from elementwise bounds ``[N, K]``."""
    return abs_max(lb, ub).sum(dim=1)


def l2_upper(lb: Tensor, ub: Tensor) -> Tensor:
    """``[N]`` bound of ``||d||_2`` from elementwise bounds ``[N, K]``."""
    return abs_max(lb, ub).pow(2).sum(dim=1).sqrt()


def tv_upper_from_oscillation(r: Tensor) -> Tensor:
    """``tanh(R/4)``: bound of TV(softmax(a), softmax(b)) when ``max_i d_i - min_i d_i <= R``."""
    return torch.tanh(finite_upper(r).clamp_min(0.0) / 4)


def kl_upper_from_oscillation(r: Tensor) -> Tensor:
    """``R tanh(R/4)``: bound of KL(softmax(a) || softmax(b)) when ``max_i d_i - min_i d_i <= R``."""
    r = finite_upper(r).clamp_min(0.0)
    return torch.where(torch.isinf(r), r, r * torch.tanh(r / 4))


def sign_matrix(k: int, dtype=torch.float64, device=None) -> Tensor:
    """``[2^K, K]``: every sign vector in ``{-1, 1}^K`` (rows)."""
    rows = list(itertools.product((-1.0, 1.0), repeat=k))
    return torch.tensor(rows, dtype=dtype, device=device)


def subset_matrix(k: int, dtype=torch.float64, device=None) -> Tensor:
    """``[2^K - 2, K]``: indicator rows of the non-empty proper subsets of ``{0..K-1}``."""
    rows = [r for r in itertools.product((0.0, 1.0), repeat=k) if 0 < sum(r) < k]
    return torch.tensor(rows, dtype=dtype, device=device)


def pairwise_matrix(k: int, dtype=torch.float64, device=None) -> Tensor:
    """``[K(K-1), K]``: rows ``e_i - e_j`` for all ``i != j``."""
    rows = []
    for i in range(k):
        for j in range(k):
            if i != j:
                r = [0.0] * k
                r[i], r[j] = 1.0, -1.0
                rows.append(r)
    return torch.tensor(rows, dtype=dtype, device=device).reshape(-1, k)


def agreement_matrix(labels: Tensor, k: int, dtype=torch.float64) -> Tensor:
    """``[N, 2(K-1), 2K]``: for each label ``c``, rows ``A_c - A_j`` and ``B_c - B_j`` (``j != c``) acting on
    the concatenated outputs ``[A(x), B(x)]``."""
    n = labels.shape[0]
    c = torch.zeros(n, 2 * (k - 1), 2 * k, dtype=dtype, device=labels.device)
    for row in range(n):
        lab = int(labels[row])
        others = [j for j in range(k) if j != lab]
        for r, j in enumerate(others):
            c[row, r, lab], c[row, r, j] = 1.0, -1.0
            c[row, k - 1 + r, k + lab], c[row, k - 1 + r, k + j] = 1.0, -1.0
    return c


def batch_spec(rows: Tensor, n: int) -> Tensor:
    """Repeat a ``[S, K]`` specification for a batch: ``[N, S, K]``."""
    return rows.unsqueeze(0).expand(n, -1, -1).contiguous()
