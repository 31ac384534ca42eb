"""Input-split branch and bound: tighten the certified upper bound of a divergence over one box until it meets
the lower bound found by search (or proves/disproves ``divergence < threshold``).

The box is split into sub-boxes kept in a priority queue ordered by their certified upper bound. Each round pops
the worst sub-boxes (a batch), splits each in two along one input dimension and bounds the children together.
The split dimension is chosen by its effect on the bound: both children of every candidate dimension are bounded
and the dimension whose two children's bounds sum lowest is kept (so each split costs 2 x candidates bounds; this
is meant for low-dimensional inputs). The candidates are every varying dimension, or with the differential bound
the two that weigh most in the bound; when both cuts help about as much, the box is cut along both into quarters
(see :func:`_children`); a quarter starts with its halves' bounds and is bounded as it is when it comes up
(:func:`_refresh`). A box whose own bound no candidate lowers by more than the fraction :data:`STALL_GAIN` gets a
lookahead along every dimension: the few neurons left unstable in a small box can hang on a dimension of small
weight in the bound.
The lower bound is the divergence at the sub-box centres seen so far, improved by the disagreement search
(:mod:`modeldiff.search`) on the current worst sub-box every few rounds.

The result is *anytime*: whenever the run stops (tolerance met, threshold decided, node or time budget, Ctrl-C),
``[lower, upper]`` is valid: ``upper`` is the largest bound over the sub-boxes still open, which together cover
the box.

For high-dimensional inputs, :func:`branch_and_bound_box` with ``split="relu"`` splits by the signs of unstable
hidden neurons instead (:mod:`modeldiff.bounds.relu_split`), with the same result type and stopping rules.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from modeldiff.bounds.base import SpecBounder
from modeldiff.bounds.derive import abs_max
from modeldiff.bounds.diff import DiffBounder, intersect_bounds, split_bounds, stack_bounds
from modeldiff.errors import BoundError
from modeldiff.results import tensor_to_list

__all__ = ["BaBResult", "SPLITS", "branch_and_bound_box"]

#: what branch and bound splits: the input box, or the signs of hidden neurons
SPLITS = ("input", "relu")

#: with the differential bound, lookahead bounds the children of only this many candidate split dimensions per
#: box (those with the largest share of the bound's linear spread); None: every varying dimension
LOOKAHEAD_DIMS: int | None = 2
#: with the differential bound, a box is cut along every lookahead candidate whose cut lowers the sum of its two
#: halves' bounds by at least this fraction of what the best cut does (the best is always cut)
CUT_GAIN: float = 0.3
#: default sub-boxes split per round, with a threshold (proving ``upper < threshold``) and without
BATCH_THRESHOLD: int = 256
BATCH_BEST_FIRST: int = 64
#: with the differential bound, a box that no lookahead candidate improves gets a lookahead along every dimension
STALL_LOOKAHEAD: bool = True
#: ... a box counts as not improved when the best cut lowers the sum of its halves' bounds by at most this fraction
#: (measured on ACAS Xu prop1/4_9 at eps 0.01: with 0.01 the candidates' cuts each gained 1-5% and the box was halved
#: along theta down to 8e-6 of its range, while a psi cut took the bound from 0.019 to 0.005: 60 s left it at
#: 0.0137; with 0.1 it is proven in 32 s)
STALL_GAIN: float = 0.1
#: ... and its cut along another dimension is kept only where its halves' own bounds sum below this fraction of the
#: candidates' best
STALL_MARGIN: float = 0.5
#: ... for boxes with at most this many varying dimensions (two halves per dimension and box are bounded at once:
#: on HAR's 561 inputs a batch of stalled boxes asked for more than 24 GiB)
STALL_MAX_DIMS: int = 16


@dataclass(frozen=True, eq=False)
class BaBResult:
    """Branch and bound over one box.

    Attributes:
        lower: the largest divergence found at a point of the box (sound lower bound of the maximum).
        upper: certified upper bound of the divergence over the box.
        status: ``converged`` (upper - lower within tolerance), ``proven`` (upper < threshold),
            ``disproven`` (lower >= threshold: a witness), ``node-limit``, ``time-limit``, ``interrupted``, or
            (ReLU splits only) ``exhausted``: every subdomain has every neuron decided, and the gap left is
            that of the multipliers found.
        nodes: sub-boxes (or, with ReLU splits, subdomains) bounded.
        time_s: wall time.
        witness: the input reaching ``lower``.
        initial_upper: the bound of the whole box before any split.
    """

    lower: float
    upper: float
    status: str
    nodes: int
    time_s: float
    witness: Tensor
    initial_upper: float
    threshold: float | None = None
    history: list = field(default_factory=list)

    @property
    def proven(self) -> bool | None:
        """With a threshold: True if ``upper < threshold``, False if a witness reaches it, None if undecided."""
        if self.threshold is None:
            return None
        if self.upper < self.threshold:
            return True
        if self.lower >= self.threshold:
            return False
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "status": self.status,
            "proven": self.proven,
            "nodes": self.nodes,
            "time_s": self.time_s,
            "initial_upper": self.initial_upper,
            "threshold": self.threshold,
            "witness": tensor_to_list(self.witness),
        }


class _Objective:
    """Certified bound of the divergence over each box of a batch, with per-box state for the differential bound:
    a child box's intermediate bounds are its own back-substitution bounds intersected with its parent's (valid on
    it, as it lies in the parent)."""

    def __init__(self, bounder: SpecBounder, divergence: str, output_index: int | None, label: int | None):
        self.bounder, self.divergence, self.output_index, self.label = bounder, divergence, output_index, label
        self.stateful = isinstance(bounder, DiffBounder)

    def __call__(self, lo: Tensor, hi: Tensor, parents: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        states = None
        if self.stateful:
            flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
            # full back-substitution on every child, intersected with its parent's bounds: on ACAS Xu this proves
            # in a few hundred nodes what cheap forward-mode child bounds leave open after thousands
            parent = None if parents is None else stack_bounds(parents, self.bounder.hidden_sizes)
            bounds = self.bounder.intermediate_bounds(flat_lo, flat_hi, mode="backward", parent=parent)
            self.bounder.use_intermediate(lo, hi, bounds)
            states = split_bounds(bounds)
        labels = None
        if self.label is not None:
            labels = torch.full((lo.shape[0],), self.label, dtype=torch.long, device=lo.device)
        up, lb, ub = self.bounder.bound_batch(self.divergence, lo, hi, labels)
        if self.output_index is not None and lb is not None:
            up = abs_max(lb[:, self.output_index], ub[:, self.output_index])
        return up, states


def _split(lo: Tensor, hi: Tensor, dims: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Halve each box along ``dims[i]``: the two children's bounds ``(lo1, hi1, lo2, hi2)``."""
    idx = torch.arange(lo.shape[0], device=lo.device)
    flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
    mid = (flat_lo[idx, dims] + flat_hi[idx, dims]) / 2
    hi1, lo2 = flat_hi.clone(), flat_lo.clone()
    hi1[idx, dims] = mid
    lo2[idx, dims] = mid
    return lo, hi1.view_as(hi), lo2.view_as(lo), hi


def _smear(objective: _Objective, lo: Tensor, hi: Tensor, states: Tensor) -> Tensor:
    """``[n, D]`` per box and input dimension: ``|coef_d| * width_d`` of the differential bound's linear upper bound
    of the worst ``+-delta_i`` (the output bounded, or the worst output), i.e. how much of the bound's spread over
    the box comes from dimension ``d``."""
    bounder = objective.bounder
    n, k = lo.shape[0], bounder.n_outputs
    outs = [objective.output_index] if objective.output_index is not None else list(range(k))
    eye = torch.eye(k, dtype=lo.dtype, device=lo.device)[outs]
    spec = torch.cat([eye, -eye]).unsqueeze(0).expand(n, -1, -1)
    coef, const = bounder.linear_bound(lo, hi, spec, stack_bounds(states, bounder.hidden_sizes, relax=True,
                                                                 identity=bounder.identity))
    flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
    mid, rad = (flat_lo + flat_hi) / 2, (flat_hi - flat_lo) / 2
    upper = (coef @ mid.unsqueeze(-1)).squeeze(-1) + (coef.abs() @ rad.unsqueeze(-1)).squeeze(-1) + const
    worst = upper.argmax(dim=1)
    c = coef[torch.arange(n, device=lo.device), worst]  # [n, D]
    return c.abs() * (flat_hi - flat_lo)


def _lookahead(objective: _Objective, lo: Tensor, hi: Tensor, states: Tensor | None, cand: Tensor):
    """Both halves of each box ``[n, ...]`` bounded along each of its candidate dimensions ``cand`` ``[n, C]``:
    ``(los, his, raw, child_states, narrow)``. ``los``/``his`` list the halves (``2 C`` tensors ``[n, ...]``, row
    ``(2 c + h) * n + i`` of their concatenation is half ``h`` of box ``i`` along ``cand[i, c]``), ``raw`` ``[C, 2, n]``
    their own bounds, ``child_states`` their intermediate bounds (or None) and ``narrow`` ``[C, n]`` the candidates far
    narrower than their box's widest dimension (or of zero width), which cannot be split usefully."""
    n, n_cand = lo.shape[0], cand.shape[1]
    los, his = [], []
    for c in range(n_cand):
        l1, h1, l2, h2 = _split(lo, hi, cand[:, c])
        los += [l1, l2]
        his += [h1, h2]
    parents = None if states is None else states.repeat(2 * n_cand, 1, 1)
    ups, child_states = objective(torch.cat(los), torch.cat(his), parents)
    width = (hi - lo).flatten(1)
    w = width[torch.arange(n, device=lo.device).view(1, n), cand.T]  # [C, n]
    narrow = w <= 1e-9 * width.amax(dim=1).view(1, n)
    return los, his, ups.view(n_cand, 2, n), child_states, narrow


def _wider_lookahead(objective: _Objective, lo: Tensor, hi: Tensor, states: Tensor, parent_up: Tensor,
                     varying: Tensor, against: Tensor):
    """Both halves bounded along every ``varying`` dimension, for boxes that no candidate of :func:`_children`
    improved: the few neurons left unstable in a small box can hang on a dimension of small weight in the bound.

    Per box, the cut whose halves' own bounds sum lowest is kept where that sum is below :data:`STALL_MARGIN` times
    ``against`` (the candidates' best sum). Returns ``(keep [m], children, n_bounded)``, ``children`` being
    ``(lo, hi, up, own, states)`` of the kept boxes' two halves each.
    """
    m, n_var = lo.shape[0], len(varying)
    los, his, own, child_states, narrow = _lookahead(objective, lo, hi, states, varying.view(1, -1).expand(m, -1))
    flat_lo, flat_hi, own = torch.cat(los), torch.cat(his), own.flatten()
    # ranked by the halves' own bounds: capped at the box's inherited bound they could all tie
    total = own.view(n_var, 2, m).sum(dim=1).masked_fill(narrow, math.inf)
    pick = total.argmin(dim=0)
    keep = total.amin(dim=0) < STALL_MARGIN * against
    idx = torch.nonzero(keep).flatten()
    rows = torch.cat([(2 * pick[idx] + h) * m + idx for h in (0, 1)])
    up = torch.minimum(own[rows], parent_up[idx].repeat(2))
    return keep, (flat_lo[rows], flat_hi[rows], up, own[rows], child_states[rows]), 2 * n_var * m


def _children(objective: _Objective, lo: Tensor, hi: Tensor, states: Tensor | None, parent_up: Tensor,
              parent_own: Tensor | None = None):
    """Split each box and bound its children: ``(child_lo, child_hi, child_up, child_states, n_bounded,
    child_own, child_fresh)``. ``parent_up`` is each box's bound (the smallest of its own and its ancestors'),
    ``parent_own`` the box's own bound (as computed for it; default ``parent_up``); ``child_own`` are the
    children's, and ``child_fresh`` says which children were bounded as they are (not as the larger halves whose
    intersection they are: see :func:`_refresh`).

    Lookahead: both halves are bounded for each candidate split dimension. The candidates are every varying
    dimension, or (differential bound, :data:`LOOKAHEAD_DIMS` set) the ``LOOKAHEAD_DIMS`` dimensions with the
    largest :func:`_smear`. The box is cut along the candidate whose two halves' bounds sum lowest. With per-box
    state (the differential bound) it is also cut along every other candidate whose cut lowers that sum (from
    twice the box's bound) by at least :data:`CUT_GAIN` times what the best cut does, so that bounds computed are
    not thrown away: each child gets the smallest bound of the halves containing it and the intersection of their
    intermediate bounds (all of them hold on it).
    """
    n = lo.shape[0]
    width = (hi - lo).flatten(1)
    varying = torch.nonzero((width > 0).any(dim=0)).flatten()
    if len(varying) == 0:
        raise BoundError("cannot split a box of zero width")
    lookahead = LOOKAHEAD_DIMS
    if lookahead is not None and states is not None and len(varying) > lookahead:
        smear = _smear(objective, lo, hi, states)[:, varying]  # [n, D]
        w = width[:, varying]
        smear = smear.masked_fill(w <= 1e-9 * w.amax(dim=1, keepdim=True), -1.0)
        cand = varying[smear.topk(lookahead, dim=1).indices]  # [n, L]: per box
    else:
        cand = varying.view(1, -1).expand(n, -1)
    n_cand = cand.shape[1]
    los, his, raw, child_states, narrow = _lookahead(objective, lo, hi, states, cand)
    n_bounded = 2 * n_cand * n
    # a child lies in its parent, so the parent's bound holds for it too (bounds are not monotone in the box)
    ups = torch.minimum(raw, parent_up)
    if parent_own is None:
        parent_own = parent_up
    ar = torch.arange(n, device=lo.device)
    w = width[ar.view(1, n), cand.T]  # [C, n]
    # score: the children's bounds together (the worse child alone is myopic: near the maximiser it is about
    # the same whichever way the box is cut); ties go to the wider dimension
    score = ups.sum(dim=1) - 1e-12 * w / w.amax(dim=0, keepdim=True).clamp_min(1e-300) * ups.abs().sum(dim=1)
    best = score.masked_fill(narrow, math.inf).argmin(dim=0)  # [n]
    # the cuts kept: the best, and (with per-box state) every other candidate that lowers the sum of its halves'
    # bounds by at least CUT_GAIN times what the best does
    cut = torch.zeros(n_cand, n, dtype=torch.bool, device=lo.device)
    cut[best, ar] = True
    if child_states is not None and n_cand > 1:
        gain = (2 * parent_up - ups.sum(dim=1)).clamp_min(0)  # [C, n]
        cut |= (gain >= CUT_GAIN * gain.amax(dim=0)) & (gain.amax(dim=0) > 0) & ~narrow
    out_lo, out_hi, out_up, out_own, out_fresh = [], [], [], [], []
    kept = None if child_states is None else []
    stalled = torch.zeros(n, dtype=torch.bool, device=lo.device)
    if STALL_LOOKAHEAD and child_states is not None and n_cand < len(varying) <= STALL_MAX_DIMS:
        # no candidate's cut lowers the box's own bound (an inherited bound can be far below what any cut reaches
        # yet): the bound's spread over the input, which picks the candidates, misses where its slack comes from
        own_gain = 2 * parent_own - raw.sum(dim=1)  # [C, n]
        st = torch.nonzero(own_gain.amax(dim=0) <= STALL_GAIN * 2 * parent_own.abs()).flatten()
        if len(st):
            cand_best = raw.sum(dim=1).masked_fill(narrow, math.inf).amin(dim=0)[st]
            keep, extra, bounded = _wider_lookahead(objective, lo[st], hi[st], states[st], parent_up[st], varying,
                                                    cand_best)
            n_bounded += bounded
            stalled[st[keep]] = True
            for out, t in zip((out_lo, out_hi, out_up, out_own, kept), extra):
                out.append(t)
            out_fresh.append(torch.ones(len(extra[0]), dtype=torch.bool, device=lo.device))
    for pattern in torch.unique(cut.T, dim=0):
        boxes = torch.nonzero((cut.T == pattern).all(dim=1) & ~stalled).flatten()
        if len(boxes) == 0:
            continue
        dims = torch.nonzero(pattern).flatten().tolist()
        for halves in itertools.product((0, 1), repeat=len(dims)):
            parts = [(2 * c + h) * n for c, h in zip(dims, halves)]  # offsets of the halves containing the child
            c_lo, c_hi, c_up = lo[boxes], hi[boxes], parent_up[boxes]
            c_own = torch.full_like(c_up, math.inf)
            for c, h in zip(dims, halves):
                c_lo = torch.maximum(c_lo, los[2 * c + h][boxes])
                c_hi = torch.minimum(c_hi, his[2 * c + h][boxes])
                c_up = torch.minimum(c_up, ups[c, h, boxes])
                c_own = torch.minimum(c_own, raw[c, h, boxes])
            out_lo.append(c_lo)
            out_hi.append(c_hi)
            out_up.append(c_up)
            out_own.append(c_own)
            # a quarter's bounds are its halves': bounded on larger boxes than itself
            out_fresh.append(torch.full((len(boxes),), len(dims) == 1, dtype=torch.bool, device=lo.device))
            if kept is not None:
                st = child_states[parts[0] + boxes]
                for off in parts[1:]:
                    st = intersect_bounds(st, child_states[off + boxes])
                kept.append(st)
    if kept is not None:
        kept = torch.cat(kept)
    return (torch.cat(out_lo), torch.cat(out_hi), torch.cat(out_up), kept, n_bounded, torch.cat(out_own),
            torch.cat(out_fresh))


def _refresh(objective: _Objective, lo: Tensor, hi: Tensor, up: Tensor, states: Tensor, own: Tensor,
             stale: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Bound the ``stale`` boxes (``[n]`` mask) as they are: a box cut along several dimensions at once inherits
    the bounds of the larger halves it is the intersection of (see :func:`_children`); its own back-substitution,
    intersected with them, is tighter (measured on ACAS Xu prop1/4_6 at eps 0.01: 48 of the 256 worst boxes were
    below eps with it, none without). Returns the boxes' ``(up, states, own, n_bounded)``."""
    idx = torch.nonzero(stale).flatten()
    fresh_up, fresh_states = objective(lo[idx], hi[idx], states[idx])
    up, states, own = up.clone(), states.clone(), own.clone()
    up[idx] = torch.minimum(up[idx], fresh_up)
    states[idx] = fresh_states
    own[idx] = fresh_up
    return up, states, own, len(idx)


def _still_open(up: Tensor, best_val: float, threshold: float | None) -> tuple[Tensor, float]:
    """Which boxes stay in the queue, given their bounds ``up`` ``[n]``: not those bounded by the value found (they
    cannot hold anything above it, and the global bound takes the maximum with it), nor, with a threshold, those
    proven below it. Returns the mask and the largest bound among the proven ones (``-inf`` if none)."""
    keep = up > best_val
    proven_max = -math.inf
    if threshold is not None:
        proven = keep & (up < threshold)
        if bool(proven.any()):
            proven_max = float(up[proven].max())
        keep &= ~proven
    return keep, proven_max


def stop_reason(upper: float, lower: float, threshold: float | None, tolerance: float, nodes: int, max_nodes: int,
                start: float, time_budget_s: float | None, stop: Callable[[], bool] | None) -> str | None:
    """Why a branch and bound run with the interval ``[lower, upper]`` stops now (its status), or None."""
    if threshold is not None:
        if upper < threshold:
            return "proven"
        if lower >= threshold:
            return "disproven"
    if upper - lower <= tolerance * max(abs(upper), 1e-12):
        return "converged"
    if nodes >= max_nodes:
        return "node-limit"
    if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
        return "time-limit"
    if stop is not None and stop():
        return "interrupted"
    return None


def branch_and_bound_box(
    model_a: nn.Module,
    model_b: nn.Module,
    bounder: SpecBounder,
    lower: Tensor,
    upper: Tensor,
    divergence: str,
    *,
    output_index: int | None = None,
    label: int | None = None,
    threshold: float | None = None,
    tolerance: float = 1e-3,
    max_nodes: int = 20_000,
    time_budget_s: float | None = 60.0,
    batch_boxes: int | None = None,
    search_every: int = 10,
    seed: int = 0,
    witness: Tensor | None = None,
    stop: Callable[[], bool] | None = None,
    split: str = "input",
) -> BaBResult:
    """Branch and bound on one box ``[lower, upper]`` (``[1, *input_shape]``).

    Args:
        model_a, model_b: the models (eval mode, the bounder's dtype).
        bounder: a :class:`~modeldiff.bounds.base.SpecBounder` for the pair.
        divergence: the divergence's name.
        output_index: for ``delta``: the output bounded (None: all outputs).
        label: for ``top1``: the label agreement is certified on.
        threshold: stop as soon as ``upper < threshold`` (proven) or ``lower >= threshold`` (disproven).
        tolerance: stop when ``upper - lower <= tolerance * max(|upper|, 1e-12)``.
        max_nodes, time_budget_s: budgets; the result stays valid when they stop the run.
        batch_boxes: sub-boxes split per round (None: :data:`BATCH_THRESHOLD` with a threshold, where every
            sub-box above it must be split anyway and larger batches bound more sub-boxes per second, else
            :data:`BATCH_BEST_FIRST`, where splitting the worst sub-boxes first saves work).
        search_every: run the disagreement search on the worst sub-box every this many rounds (0: never).
        witness: a point of the box (``[*input_shape]``, e.g. from an earlier search) whose divergence seeds the
            lower bound; sub-boxes whose bound is below it are dropped at once.
        stop: called once per round; when it returns True the run stops with status ``interrupted`` (as on
            Ctrl-C), e.g. to stop workers from another process.
        split: ``input`` (split the box, as described in this module) or ``relu`` (split the box's points by the
            signs of unstable hidden neurons: :mod:`modeldiff.bounds.relu_split`; the differential bound and
            ``delta``/``linf`` only, meant for high-dimensional inputs; ``nodes`` then counts subdomains and
            ``search_every`` is not used).

    Returns:
        A :class:`BaBResult`.
    """
    from modeldiff.search import evaluate, search
    from modeldiff.regions import Region

    start = time.perf_counter()
    if split not in SPLITS:
        raise BoundError(f"expected split to be one of {', '.join(SPLITS)}, got {split!r}")

    def value(x: Tensor) -> Tensor:
        with torch.no_grad():
            return evaluate(model_a, model_b, x, divergence, output_index)

    centre = (lower + upper) / 2
    best_val = float(value(centre)[0])
    best_x = centre[0].clone()
    if witness is not None:
        w = witness.to(dtype=lower.dtype, device=lower.device).reshape(lower.shape)
        if not bool(((w >= lower) & (w <= upper)).all()):
            raise BoundError("the seed witness lies outside the box")
        w_val = float(value(w)[0])
        if w_val > best_val:
            best_val, best_x = w_val, w[0].clone()
    if split == "relu":
        from modeldiff.bounds.relu_split import relu_branch_and_bound

        return relu_branch_and_bound(
            value, bounder, lower, upper, divergence, output_index=output_index, threshold=threshold,
            tolerance=tolerance, max_nodes=max_nodes, time_budget_s=time_budget_s, batch_domains=batch_boxes,
            best_val=best_val, best_x=best_x, stop=stop, start=start)
    if batch_boxes is None:
        batch_boxes = BATCH_THRESHOLD if threshold is not None else BATCH_BEST_FIRST
    objective = _Objective(bounder, divergence, output_index, label)
    counter = itertools.count()
    ups, states0 = objective(lower, upper)
    up0 = float(ups[0])
    nodes = 1
    # entries: (-bound, tie-break, lower, upper, intermediate bounds, own bound, bounded as it is)
    heap: list[tuple[float, int, Tensor, Tensor, Any, float, bool]] = [
        (-up0, next(counter), lower[0], upper[0], None if states0 is None else states0[0], up0, True)
    ]
    history = [(0.0, best_val, up0)]
    status = "node-limit"
    rounds = 0
    closed = -math.inf  # largest bound among the sub-boxes dropped from the queue (proven below the threshold)

    def global_upper() -> float:
        return max(-heap[0][0] if heap else -math.inf, closed, best_val)

    try:
        while True:
            verdict = stop_reason(global_upper(), best_val, threshold, tolerance, nodes, max_nodes, start,
                                  time_budget_s, stop)
            if verdict:
                status = verdict
                break
            take = [heapq.heappop(heap) for _ in range(min(batch_boxes, len(heap)))]
            lo = torch.stack([t[2] for t in take])
            hi = torch.stack([t[3] for t in take])
            parent_up = torch.tensor([-t[0] for t in take], dtype=lo.dtype, device=lo.device)
            parent_states = None if take[0][4] is None else torch.stack([t[4] for t in take])
            parent_own = torch.tensor([t[5] for t in take], dtype=lo.dtype, device=lo.device)
            stale = torch.tensor([not t[6] for t in take], device=lo.device)
            if parent_states is not None and bool(stale.any()):
                parent_up, parent_states, parent_own, bounded = _refresh(objective, lo, hi, parent_up, parent_states,
                                                                         parent_own, stale)
                nodes += bounded
                keep, proven_max = _still_open(parent_up, best_val, threshold)
                closed = max(closed, proven_max)
                if not bool(keep.all()):
                    lo, hi, parent_up, parent_states, parent_own = (
                        t[keep] for t in (lo, hi, parent_up, parent_states, parent_own))
                if lo.shape[0] == 0:
                    rounds += 1
                    history.append((time.perf_counter() - start, best_val, global_upper()))
                    continue
            child_lo, child_hi, child_up, child_states, bounded, child_own, child_fresh = _children(
                objective, lo, hi, parent_states, parent_up, parent_own)
            nodes += bounded
            vals = value((child_lo + child_hi) / 2)
            i = int(vals.argmax())
            if float(vals[i]) > best_val:
                best_val, best_x = float(vals[i]), ((child_lo[i] + child_hi[i]) / 2).clone()
            keep, proven_max = _still_open(child_up, best_val, threshold)
            closed = max(closed, proven_max)
            for j in torch.nonzero(keep).flatten().tolist():
                state = None if child_states is None else child_states[j].clone()  # not a view: frees the batch
                heapq.heappush(heap, (-float(child_up[j]), next(counter), child_lo[j], child_hi[j], state,
                                      float(child_own[j]), bool(child_fresh[j])))
            rounds += 1
            if search_every and rounds % search_every == 0 and heap:
                wl, wh = heap[0][2], heap[0][3]
                found = search(model_a, model_b, Region(wl.unsqueeze(0), wh.unsqueeze(0)), divergence,
                               output_index=output_index, restarts=4, steps=20, seed=seed + rounds,
                               dtype=wl.dtype, device=wl.device)
                if float(found.found[0]) > best_val:
                    best_val, best_x = float(found.found[0]), found.witnesses[0].clone()
            history.append((time.perf_counter() - start, best_val, global_upper()))
    except KeyboardInterrupt:
        status = "interrupted"
    return BaBResult(
        lower=best_val, upper=global_upper(), status=status, nodes=nodes, time_s=time.perf_counter() - start,
        witness=best_x, initial_upper=up0, threshold=threshold, history=history,
    )
