"""The search driver: argument checks, starting points, batching of restarts, budgets, honest reporting."""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from modeldiff.divergences import Divergence, get_divergence
from modeldiff.errors import SearchError, check_int
from modeldiff.graph import ComparisonGraph, infer_input_shape, prepare_model
from modeldiff.regions import Region
from modeldiff.results import SearchResult
from modeldiff.search.apgd import Chunk, run_apgd, run_pgd
from modeldiff.search.gradient_free import run_random, run_square
from modeldiff.search.objectives import RestartPlan, _check_index, objective, plan_restarts, value_of
from modeldiff.search.reduced import ReducedPair, StackedPair
from modeldiff.search.starts import uniform_points, unit_design, unit_to_box

__all__ = ["OPTIMIZERS", "search"]

logger = logging.getLogger(__name__)

#: accepted values of ``optimizer``
OPTIMIZERS: tuple[str, ...] = ("auto", "apgd", "random", "square")
#: global (box-domain) mode is used automatically up to this many varying input entries
GLOBAL_MAX_DIMS = 16
#: default number of space-filling starting points in global mode
DEFAULT_GLOBAL_STARTS = 4096
#: ... and when the reduced or the stacked forward applies (few free entries of a large input, or a small dense
#: pair such as ACAS Xu: each evaluation is cheap)
DEFAULT_REDUCED_STARTS = 16384
#: exploratory runs: this many fixed sign-gradient steps of EXPLORE_STEP half-widths of the box
EXPLORE_STEPS = 5
EXPLORE_STEP = 0.5
#: APGD's first step (in half-widths of the box) when refining the best point of the exploratory runs
EXPLORE_REFINE_STEP = 0.5
#: default cap on the number of input entries in one batch (rows x input size)
_BATCH_ELEMENTS = 1 << 22
#: how many rows of history to keep at most (the logging interval grows with ``steps``)
_MAX_HISTORY = 500


# ------------------------------------------------------------------------------------------------ checks


def _check_count(name: str, value, minimum: int = 1) -> int:
    return check_int(name, value, minimum, error=SearchError)


def _check_args(region, optimizer, time_budget_s, seed, dtype, batch_size, progress, global_mode, n_starts):
    if not isinstance(region, Region):
        raise TypeError(f"expected region to be a modeldiff.regions.Region, got {type(region).__name__}")
    if not isinstance(optimizer, str):
        raise TypeError(f"expected optimizer to be a str, got {type(optimizer).__name__}")
    if optimizer not in OPTIMIZERS:
        raise SearchError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if time_budget_s is not None:
        if isinstance(time_budget_s, bool) or not isinstance(time_budget_s, numbers.Real):
            raise TypeError(f"expected time_budget_s to be a number or None, got {type(time_budget_s).__name__}")
        if math.isnan(time_budget_s) or time_budget_s < 0:
            raise SearchError(f"expected time_budget_s >= 0, got {time_budget_s}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"expected seed to be an int, got {type(seed).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"expected dtype to be a floating torch.dtype, got {dtype!r}")
    if batch_size is not None:
        _check_count("batch_size", batch_size)
    if not isinstance(progress, bool):
        raise TypeError(f"expected progress to be a bool, got {type(progress).__name__}")
    if global_mode not in ("auto", "on", "off", True, False):
        raise SearchError(f"unknown global_mode {global_mode!r}; expected 'auto', 'on', 'off', True or False")
    if n_starts is not None:
        _check_count("n_starts", n_starts)


def _convert_region(region: Region, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(lower, upper, midpoints)`` in ``dtype`` on ``device``. Bounds rounded to a coarser dtype are moved
    inwards, so every point of the converted boxes lies in the original ones."""
    lo = region.lower.to(device=device, dtype=dtype)
    hi = region.upper.to(device=device, dtype=dtype)
    if dtype != region.dtype:  # rounding may have moved a bound outwards
        ref_lo = region.lower.to(device=device, dtype=torch.float64)
        ref_hi = region.upper.to(device=device, dtype=torch.float64)
        lo = torch.where(lo.double() < ref_lo, torch.nextafter(lo, torch.full_like(lo, math.inf)), lo)
        hi = torch.where(hi.double() > ref_hi, torch.nextafter(hi, torch.full_like(hi, -math.inf)), hi)
        empty = (lo > hi).reshape(lo.shape[0], -1).any(dim=1)
        if bool(empty.any()):
            i = int(empty.nonzero()[0, 0])
            raise SearchError(f"expected every box to contain {dtype} numbers, got box {i} with an entry too "
                              f"narrow for {dtype}; search in the region's dtype {region.dtype}")
    mid = torch.clamp(region.midpoints.to(device=device, dtype=dtype), lo, hi)
    return lo, hi, mid


def _methods(optimizer: str, restarts: int, use_global: bool) -> list[str]:
    """The optimiser of each restart. ``"auto"`` is APGD, except in global mode, where only the first third of the
    restarts (at least one) run APGD and the others the gradient-free square search: on rugged low-dimensional
    objectives, such as the difference of a ReLU network and its float16 copy, narrow peaks that the gradient
    does not lead to are common, and the local random search climbs them more often (measured on the ACAS Xu
    and MNIST three-pixel benchmarks, see ``benchmarks/bench_search.py``)."""
    if optimizer != "auto":
        return [optimizer] * restarts
    if not use_global or restarts < 2:
        return ["apgd"] * restarts
    n_apgd = (restarts + 2) // 3
    return ["apgd"] * n_apgd + ["square"] * (restarts - n_apgd)


def _initial_steps(rows: Tensor, base: Tensor) -> Tensor:
    """APGD's initial step for search rows ``rows`` (row ``r * N + i`` is restart ``r`` of region ``i``), in
    half-widths of the box: ``base[i]`` for restarts 0, 3, 6, ..., ``base[i] / 4`` and ``base[i] / 16`` for the
    others.

    ``base`` is 2 (APGD's ``2 * eps``), except after a screening of candidate starts, where it is twice the
    design's spacing (``2 * n ** (-1 / d)`` for ``n`` candidates over ``d`` free entries): the restarts then
    refine the best candidates locally instead of jumping to a corner first. The smaller first steps of the
    other restarts follow the gradient further before reaching a corner, which lands them in different local
    maxima of rugged objectives (a difference of two nearly equal ReLU networks); with ``2 * eps`` alone, restarts
    from different points mostly reach the same corner.
    """
    n = base.shape[0]
    return base[rows % n] * 0.25 ** (rows // n % 3).to(base.dtype)


# ------------------------------------------------------------------------------------------------ tracking


class _Tracker:
    """Best point per search row, and the history of best values at the logged steps."""

    def __init__(self, rows: int, shape: tuple[int, ...], steps: int, dtype, device):
        self.best_score = torch.full((rows,), -math.inf, dtype=dtype, device=device)
        self.best_value = torch.full((rows,), -math.inf, dtype=dtype, device=device)
        self.best_x = torch.zeros((rows, *shape), dtype=dtype, device=device)
        every = max(1, math.ceil(steps / (_MAX_HISTORY - 1)))
        logged = list(range(0, steps + 1, every))
        if logged[-1] != steps:
            logged.append(steps)
        self.steps = logged
        self.index = {s: t for t, s in enumerate(logged)}
        self.hist = torch.full((len(logged), rows), -math.inf, dtype=dtype, device=device)
        self.reached = -1

    def reporter(self, start: int, stop: int) -> Callable[[int, Tensor, Tensor, Tensor], None]:
        sl = slice(start, stop)

        def report(step: int, x: Tensor, value: Tensor, score: Tensor) -> None:
            better = score > self.best_score[sl]
            if bool(better.any()):
                bx = better.view(-1, *([1] * (x.dim() - 1)))
                self.best_x[sl] = torch.where(bx, x.detach(), self.best_x[sl])
                self.best_value[sl] = torch.where(better, value, self.best_value[sl])
                self.best_score[sl] = torch.where(better, score, self.best_score[sl])
            t = self.index.get(step)
            if t is not None:
                self.hist[t, sl] = self.best_value[sl]
                self.reached = max(self.reached, t)

        return report


class _Forward:
    """Evaluates (loss, value, score, grad) for rows of the search, given their plans and the boxes they lie in
    (``region_of``). With a :class:`~modeldiff.search.reduced.ReducedPair` the search's own evaluations fold the
    boxes' fixed input entries into the first layer, with a :class:`~modeldiff.search.reduced.StackedPair` they
    run both small networks in one product per layer; :meth:`outputs` without ``region_of`` always runs the
    original models (for the values reported)."""

    def __init__(self, a: nn.Module, b: nn.Module, divergence: Divergence, reduced: ReducedPair | None = None,
                 stacked: StackedPair | None = None):
        self.a, self.b, self.divergence, self.reduced, self.stacked = a, b, divergence, reduced, stacked

    def _ab(self, x: Tensor, region_of: Tensor | None) -> tuple[Tensor, Tensor]:
        if region_of is not None:
            if self.reduced is not None:
                return self.reduced.outputs(x, region_of)
            if self.stacked is not None:
                return self.stacked.outputs(x)
        return self.a(x), self.b(x)

    def outputs(self, x: Tensor, region_of: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self._ab(x, region_of)

    def bind(self, plan: RestartPlan, region_of: Tensor | None = None) -> Callable[[Tensor, bool], tuple]:
        def fn(x: Tensor, need_grad: bool):
            if not need_grad:
                with torch.no_grad():
                    loss, value, score = objective(self.divergence, plan, *self._ab(x, region_of))
                return loss, value, score, None
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                loss, value, score = objective(self.divergence, plan, *self._ab(xg, region_of))
                if loss.requires_grad:
                    (grad,) = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
                else:
                    grad = None
            if grad is None:
                grad = torch.zeros_like(x)
            return loss.detach(), value, score, grad

        return fn


# ------------------------------------------------------------------------------------------------ search


def search(
    model_a: nn.Module,
    model_b: nn.Module,
    region: Region,
    divergence: str | Divergence = "linf",
    *,
    output_index: Tensor | int | None = None,
    restarts: int = 10,
    steps: int = 100,
    optimizer: str = "auto",
    time_budget_s: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    progress: bool = False,
    global_mode: str | bool = "auto",
    n_starts: int | None = None,
    explore: int = 15,
) -> SearchResult:
    """Search each region for inputs where models A and B disagree most ("contrastive dreaming").

    Every region gets ``restarts`` runs of ``steps`` steps of an optimiser, all restarts of all regions batched
    together (in chunks of ``batch_size`` rows). The best point found per region is its *witness*; the value
    reported for it is recomputed by a fresh plain forward pass (:func:`~modeldiff.search.evaluate`), so every
    number in ``found`` is a true, reachable divergence: a lower bound of the region's maximum.

    * ``optimizer="apgd"``: Auto-PGD in L-inf geometry (sign-gradient steps starting at ``2 * eps``, i.e. the box
      width, halved at APGD's checkpoints, momentum 0.75, restart from the best point after each halving; see
      :mod:`modeldiff.search.apgd`), projected exactly onto each box. Restarts 0, 3, 6, ... start at ``2 * eps``;
      the others at ``eps / 2`` and ``eps / 8``, for more diverse local maxima.
    * ``"square"``: a gradient-free Square-attack-style local search; ``"random"``: uniform random sampling
      (see :mod:`modeldiff.search.gradient_free`).
    * ``"auto"``: APGD (in global mode: APGD for the first third of the restarts, the square search for the
      others; ``optimizer`` then reads ``"apgd+square"``), unless the gradient of the objective is zero or
      non-finite at every starting point of the first APGD batch (quantised or step-function models): then
      ``"square"`` throughout (``settings["fallback"]`` is True).

    Objectives: continuous divergences are maximised directly; ``delta`` maximises ``|A_t - B_t|`` for the
    output ``t = output_index`` (restart 1 insists on the sign of ``A_t - B_t`` not seen at the midpoint), or
    ``max_i |A_i - B_i|`` when ``output_index`` is None; ``linf`` restarts also target single (output, sign)
    pairs. ``top1`` ascends
    scale-invariant margins that make one model keep a label while the other leaves it (untargeted both ways,
    then targeted over A's top classes); it reports 1.0 only where the argmax labels truly differ, and otherwise
    0.0 with the best-margin point as witness.

    Global (box-domain) mode, for boxes with few free entries (``global_mode="auto"``: at most 16 varying
    entries in every box): ``n_starts`` (default 4096; 16384 where the reduced or the stacked forward below
    applies) scrambled Sobol points per box are evaluated first, and the restarts start from the best of them
    (the best for each restart's objective, kept apart by half the design spacing), with APGD's first step scaled
    to that spacing. Where at most a quarter of the input entries are free and both models read as dense ReLU
    chains (:func:`modeldiff.linearize.linearize`), the search's own evaluations fold each box's fixed entries into
    the first layer (:class:`~modeldiff.search.reduced.ReducedPair`; three free pixels of MNIST: about 4x faster);
    small dense pairs (:class:`~modeldiff.search.reduced.StackedPair`, ACAS Xu) run both networks in one product
    per layer. Reported values still come from the original models. Outside global mode,
    ``n_starts`` uniform random candidates are screened the same way when given; otherwise restart 0 starts
    at the region's midpoint (its seed point projected into the box) and the others uniformly at random.

    Exploration (outside global mode, APGD, ``explore > 0`` and ``steps >= 20``): before the restarts, each
    restart's start and ``explore - 1`` uniform random points per restart run 5 plain sign-gradient steps of half
    the box's half-width; restart ``r`` then refines the best of these short runs not taken by an earlier restart
    with the same objective (APGD from a first step of 0.5 half-widths). This costs ``explore * restarts * 5``
    gradient steps per region on top of ``restarts * steps``; on objectives with rare high basins (the
    difference of a ReLU network and its float16 copy) it finds markedly higher maxima than the same restarts
    alone (``benchmarks/bench_search.py``).

    Args:
        model_a: model A (e.g. the reference network).
        model_b: model B (e.g. its quantised copy). Both are copied, put in eval mode and converted to ``dtype``
            on ``device``; the caller's models are not modified.
        region: the input boxes, ``N`` of them (:class:`~modeldiff.regions.Region`).
        divergence: a name from :data:`modeldiff.divergences.DIVERGENCES` or a :class:`Divergence`.
        output_index: for ``delta``: an int or a long ``[N]`` tensor (one output per region, e.g. the true
            label), or None for all outputs.
        restarts: runs per region (>= 1).
        steps: optimiser steps per run (>= 1).
        optimizer: ``"auto"``, ``"apgd"``, ``"square"`` or ``"random"``.
        time_budget_s: wall-clock budget in seconds (None: none). When hit, the search stops and returns what it
            found, with ``interrupted=True``.
        seed: seed of the run's random generator and of the Sobol scrambling; the same seed gives the same result.
        dtype: floating dtype of the computation (float64 by default, for exact re-checks).
        device: where to compute.
        batch_size: the most search rows (restart x region) in one forward pass; default: all, up to about
            4 million input entries per batch.
        progress: show a tqdm progress bar over the steps.
        global_mode: ``"auto"``, ``"on"``/True or ``"off"``/False.
        n_starts: number of space-filling (global mode) or random candidate starts screened per region.
        explore: outside global mode, with APGD and no ``n_starts``: short exploratory runs per restart, of which
            each restart refines the best (0: none; see above).

    Returns:
        A :class:`~modeldiff.results.SearchResult` with ``found`` ``[N]``, ``witnesses`` ``[N, *input_shape]``
        (each inside its box), ``history`` ``[T, N]`` (best value per region after the logged steps
        ``history_steps`` ``[T]``, step 0 being the starting points) and ``restart_history`` ``[T, R, N]``
        (per restart; NaN where a restart did not run). Ctrl-C stops the search and returns what was found so far,
        with ``interrupted=True``.

    Raises:
        TypeError: an argument has the wrong type ("expected X, got Y").
        SearchError: a bad value (``restarts < 1``, unknown optimizer, region inputs that do not fit the models),
            or a witness outside its region (a bug).
        BoundError: an unknown divergence name.
        IncompatibleModelsError: A and B give outputs of different shapes, or reject the region's input shape.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from modeldiff.regions import ball
        >>> from modeldiff.search import search
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> a = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> b = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> region = ball(torch.zeros(4, 3), 0.5)
        >>> res = search(a, b, region, "linf", restarts=2, steps=20)
        >>> res.found.shape, res.witnesses.shape
        (torch.Size([4]), torch.Size([4, 3]))
        >>> bool(region.contains(res.witnesses).all())
        True
    """
    t_start = time.perf_counter()
    restarts = _check_count("restarts", restarts)
    steps = _check_count("steps", steps)
    _check_args(region, optimizer, time_budget_s, seed, dtype, batch_size, progress, global_mode, n_starts)
    explore = _check_count("explore", explore, minimum=0)
    div = get_divergence(divergence)
    device = torch.device(device)

    a = prepare_model(model_a, dtype=dtype, device=device)
    b = prepare_model(model_b, dtype=dtype, device=device)
    shape = region.input_shape
    expected = infer_input_shape(a) or infer_input_shape(b)
    if expected is not None and math.prod(expected) != math.prod(shape):
        raise SearchError(f"expected regions over inputs of shape {tuple(expected)} (the models' input), "
                          f"got regions of shape {tuple(shape)}")
    graph = ComparisonGraph(a, b, div, input_shape=shape)  # checks that A and B accept the input and agree in shape
    n_out = int(graph.output_shape[0])
    n = len(region)
    out_idx = _check_index(output_index, n, n_out, div.name)
    if out_idx is not None:
        out_idx = out_idx.to(device)

    lower, upper, mid = _convert_region(region, dtype, device)
    numel = max(1, math.prod(shape))
    rows_total = restarts * n
    rows_per_batch = batch_size if batch_size is not None else max(1, min(rows_total, _BATCH_ELEMENTS // numel))
    if batch_size is None and rows_per_batch >= n:
        rows_per_batch -= rows_per_batch % n  # chunks of whole blocks of boxes (the reduced forward's fast path)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    deadline = None if time_budget_s is None else t_start + float(time_budget_s)

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() >= deadline

    n_var = (lower < upper).reshape(n, -1).sum(dim=1)
    use_global = global_mode in ("on", True) or (global_mode == "auto" and int(n_var.max()) <= GLOBAL_MAX_DIMS)
    reduced = ReducedPair.build(a, b, lower, upper) if use_global else None
    stacked = StackedPair.build(a, b, tuple(lower.shape[1:])) if reduced is None else None
    fwd = _Forward(a, b, div, reduced, stacked)
    if n_starts is not None:
        n_cand = n_starts
    elif use_global:
        cheap = fwd.reduced is not None or fwd.stacked is not None
        n_cand = DEFAULT_REDUCED_STARTS if cheap else DEFAULT_GLOBAL_STARTS
    else:
        n_cand = 0
    logger.debug("search: %d regions, divergence %s, %d restarts x %d steps, optimizer %s, global %s, %d starts",
                 n, div.name, restarts, steps, optimizer, use_global, n_cand)

    # midpoints: the first candidate witnesses (so that every region has one, whatever happens next)
    ya_mid, yb_mid = [], []
    for s0 in range(0, n, rows_per_batch):
        rows = torch.arange(s0, min(s0 + rows_per_batch, n), device=device)
        ya, yb = fwd.outputs(mid[s0:s0 + rows_per_batch], rows)
        ya_mid.append(ya)
        yb_mid.append(yb)
    ya_mid, yb_mid = torch.cat(ya_mid), torch.cat(yb_mid)
    plan = plan_restarts(div, restarts, ya_mid, yb_mid, out_idx)
    rows_plan = plan.rows()
    _, init_value, init_score = objective(div, rows_plan.select(slice(0, n)), ya_mid, yb_mid)
    init_x = mid.clone()

    tracker = _Tracker(rows_total, shape, steps, dtype, device)
    eta_base = torch.full((n,), 2.0, dtype=dtype, device=device)
    interrupted = False
    fallback = False
    explored = False
    ran: list[str] = []
    bar = None
    try:
        # ---- starting points
        if n_cand > 0:
            screen_rows = batch_size if batch_size is not None else max(1, _BATCH_ELEMENTS // numel)
            x0, init_x, init_value, init_score, screened = _screen(
                fwd, div, plan, lower, upper, n_cand, use_global, seed, generator, screen_rows,
                (init_x, init_value, init_score), out_of_time)
            interrupted = interrupted or screened < n_cand
            if screened > 0:
                eta_base = torch.clamp(2.0 * screened ** (-1.0 / n_var.clamp_min(1).to(dtype)), max=2.0)
        else:
            x0 = torch.empty((restarts, n, *shape), dtype=dtype, device=device)
            x0[0] = mid
            if restarts > 1:
                x0[1:] = uniform_points(lower, upper, restarts - 1, generator)
            if explore > 0 and optimizer in ("auto", "apgd"):
                x0, best, done = _explore(fwd, rows_plan, x0, lower, upper, explore, steps, rows_per_batch,
                                          generator, out_of_time, optimizer == "auto")
                explored = bool(done) and done != "no-gradient"
                if done:
                    eta_base = torch.full((n,), EXPLORE_REFINE_STEP, dtype=dtype, device=device)
                better = best[2] > init_score
                if bool(better.any()):
                    bx = better.view(n, *([1] * len(shape)))
                    init_x = torch.where(bx, best[0], init_x)
                    init_value = torch.where(better, best[1], init_value)
                    init_score = torch.where(better, best[2], init_score)
                fallback = done == "no-gradient"
                interrupted = interrupted or done == "stopped"
        x0 = x0.reshape(rows_total, *shape)

        # ---- optimisation, chunk by chunk (a chunk never mixes optimisers)
        methods = _methods(optimizer, restarts, use_global)
        chunks = []
        r0 = 0
        while r0 < restarts:
            r1 = r0
            while r1 < restarts and methods[r1] == methods[r0]:
                r1 += 1
            for s0 in range(r0 * n, r1 * n, rows_per_batch):
                chunks.append((s0, min(s0 + rows_per_batch, r1 * n), methods[r0]))
            r0 = r1
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(chunks) * steps, desc="search", unit="step")
        tick = bar.update if bar is not None else (lambda: None)
        check = optimizer == "auto"
        for s0, s1, method in chunks:
            if interrupted or out_of_time():
                interrupted = True
                break
            region_of = torch.arange(s0, s1, device=device) % n
            chunk = Chunk(
                fn=fwd.bind(rows_plan.select(slice(s0, s1)), region_of),
                lo=lower.index_select(0, region_of),
                hi=upper.index_select(0, region_of),
                x0=x0[s0:s1],
                report=tracker.reporter(s0, s1),
                stop=out_of_time,
                tick=tick,
            )
            if method == "apgd" and fallback:
                method = "square"
            if method == "apgd":
                eta0 = _initial_steps(torch.arange(s0, s1, device=device), eta_base)
                status = run_apgd(chunk, steps, check_gradient=check, eta0=eta0)
                check = False
                if status == "no-gradient":
                    logger.info("search: the gradient is zero or non-finite at every start; using the "
                                "gradient-free square search")
                    fallback = True
                    method = "square"
                    status = run_square(chunk, steps, generator)
            elif method == "square":
                status = run_square(chunk, steps, generator)
            else:
                status = run_random(chunk, steps, generator)
            if method not in ran:
                ran.append(method)
            if status == "stopped":
                interrupted = True
                break
    except KeyboardInterrupt:
        logger.info("search: interrupted; returning the best points found so far")
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    used = "+".join(ran) if ran else ("square" if fallback else _methods(optimizer, restarts, use_global)[0])
    if interrupted:
        logger.info("search: stopped early (time budget or interrupt)")

    # ---- pick the witness per region: the best of the screened starts and of every restart
    scores = torch.cat([init_score.view(1, n), tracker.best_score.view(restarts, n)])
    pick = torch.nan_to_num(scores, nan=-math.inf).argmax(dim=0)
    row_x = tracker.best_x.view(restarts, n, *shape)
    arange = torch.arange(n, device=device)
    from_rows = row_x[(pick - 1).clamp_min(0), arange]
    witnesses = torch.where((pick == 0).view(n, *([1] * len(shape))), init_x, from_rows).detach()

    # ---- honest reporting: a fresh plain forward pass on the witnesses
    found = []
    for s0 in range(0, n, rows_per_batch):
        ya, yb = fwd.outputs(witnesses[s0:s0 + rows_per_batch])
        found.append(value_of(div, ya, yb, None if out_idx is None else out_idx[s0:s0 + rows_per_batch]))
    found = torch.cat(found)
    scale = max(1.0, float(region.lower.abs().max()), float(region.upper.abs().max()))
    inside = region.contains(witnesses, atol=1e-12 * scale)
    if not bool(inside.all()):
        i = int((~inside).nonzero()[0, 0])
        raise SearchError(f"internal error: the witness of region {i} lies outside its region "
                          f"({int((~inside).sum())} of {n} witnesses outside)")

    # ---- history
    hist = tracker.hist.cummax(dim=0).values.view(-1, restarts, n)
    t_last = max(tracker.reached, 0) + 1
    hist = hist[:t_last]
    history = torch.maximum(hist.amax(dim=1), init_value.view(1, n))
    restart_history = torch.where(torch.isinf(hist) & (hist < 0), torch.full_like(hist, math.nan), hist)
    history_steps = torch.tensor(tracker.steps[:t_last], dtype=torch.long)

    settings = {
        "requested_optimizer": optimizer,
        "fallback": fallback,
        "global_mode": bool(use_global),
        "n_starts": int(n_cand),
        "reduced_forward": fwd.reduced is not None,
        "stacked_forward": fwd.stacked is not None,
        "explore": int(explore) if explored else 0,
        "batch_size": int(rows_per_batch),
        "time_budget_s": time_budget_s,
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
    }
    return SearchResult(
        divergence=div.name,
        found=found,
        witnesses=witnesses,
        history=history,
        history_steps=history_steps,
        optimizer=used,
        restarts=restarts,
        steps=steps,
        time_s=time.perf_counter() - t_start,
        seed=int(seed),
        output_index=out_idx,
        interrupted=interrupted,
        settings=settings,
        restart_history=restart_history,
    )


def _explore(fwd: _Forward, rows_plan: RestartPlan, x0: Tensor, lower: Tensor, upper: Tensor, explore: int,
             steps: int, rows_per_batch: int, generator: torch.Generator, out_of_time: Callable[[], bool],
             check_gradient: bool):
    """Short plain sign-gradient runs (:func:`run_pgd`) from ``explore`` starts per restart (the restart's own
    start and uniform random points); restart ``r`` of region ``i`` then starts from the best point not taken by an earlier restart among the runs
    of all restarts with the same objective in that region (points tied in value count as taken).

    On rugged objectives (the difference of a ReLU network and its float16 copy) a few percent of random starts
    lead to a markedly higher local maximum; a handful of full-length runs misses it often, while many short runs
    followed by a refinement of the best find it (measured on MNIST 3x100, ``benchmarks/bench_search.py``).

    Returns ``(x0 [R, N, ...], (best_x, best_value, best_score) per region, status)``, ``status`` being ``""``
    (not run: too few steps), ``"done"``, ``"stopped"`` or ``"no-gradient"``.
    """
    R, n = x0.shape[0], x0.shape[1]
    shape = x0.shape[2:]
    short = EXPLORE_STEPS
    none = (x0.new_zeros((n, *shape)), x0.new_full((n,), -math.inf), x0.new_full((n,), -math.inf))
    if steps < 4 * short:
        return x0, none, ""
    starts = torch.cat([x0, uniform_points(lower, upper, (explore - 1) * R, generator)]) if explore > 1 else x0
    rows = starts.shape[0] * n  # row (k * R + r) * n + i: run k of restart r in region i
    tracker = _Tracker(rows, tuple(shape), short, x0.dtype, x0.device)
    flat = starts.reshape(rows, *shape)
    status = "done"
    for s0 in range(0, rows, rows_per_batch):
        s1 = min(s0 + rows_per_batch, rows)
        idx = torch.arange(s0, s1, device=x0.device)
        chunk = Chunk(
            fn=fwd.bind(rows_plan.select(idx % (R * n)), idx % n),
            lo=lower.index_select(0, idx % n),
            hi=upper.index_select(0, idx % n),
            x0=flat[s0:s1],
            report=tracker.reporter(s0, s1),
            stop=out_of_time,
            tick=lambda: None,
        )
        status = run_pgd(chunk, short, eta=EXPLORE_STEP, check_gradient=check_gradient and s0 == 0)
        if status != "done":
            break
    if status == "no-gradient":
        return x0, none, status
    score = torch.nan_to_num(tracker.best_score.view(explore, R, n), nan=-math.inf)
    bx = tracker.best_x.view(explore * R, n, *shape)
    arange = torch.arange(n, device=x0.device)
    # restart r takes the best run not taken yet among the runs of every restart with the same objective in its
    # region (and not tied in value with one taken: same local maximum)
    fields = [f.view(R, n) for f in (rows_plan.mode, rows_plan.out, rows_plan.sign, rows_plan.class_a,
                                      rows_plan.class_b)]
    open_ = torch.ones((explore, R, n), dtype=torch.bool, device=x0.device)
    new_x0 = x0.clone()
    for r in range(R):
        same = torch.ones((R, n), dtype=torch.bool, device=x0.device)
        for f in fields:
            same &= f == f[r : r + 1]
        cand = torch.where(open_ & same.unsqueeze(0), score, torch.full_like(score, -math.inf)).view(-1, n)
        j = cand.argmax(dim=0)
        s_j = cand[j, arange]
        ok = torch.isfinite(s_j)
        new_x0[r] = torch.where(ok.view(n, *([1] * len(shape))), bx[j, arange], x0[r])
        open_ &= ~((score == s_j.view(1, 1, n)) & ok.view(1, 1, n))
    flat_score = score.view(explore * R, n)
    j = flat_score.argmax(dim=0)
    best = (bx[j, arange], tracker.best_value.view(explore * R, n)[j, arange], flat_score[j, arange])
    return new_x0, best, status


def _screen(fwd: _Forward, div: Divergence, plan: RestartPlan, lower: Tensor, upper: Tensor, n_cand: int,
            use_global: bool, seed: int, generator: torch.Generator, rows_per_batch: int,
            init: tuple[Tensor, Tensor, Tensor], out_of_time: Callable[[], bool]):
    """Evaluate ``n_cand`` candidate points per region (scrambled Sobol in global mode, else uniform) and pick each
    restart's start among them.

    Restart ``r`` of region ``i`` starts at the best candidate for its objective that lies at least half a design
    spacing (``0.5 * n_cand ** (-1 / d)`` of the box width, in L-inf) from the starts already chosen for region
    ``i``, so that restarts with the same objective begin in different places; when every one of the best
    ``4 R`` candidates is too close, the farthest of them is taken. The regions' best points are updated on the way.

    Returns ``(x0 [R, N, ...], best_x, best_value, best_score, screened)``, ``screened`` being the number of
    candidates evaluated (fewer than ``n_cand`` when the time ran out).
    """
    n = lower.shape[0]
    R = plan.mode.shape[0]
    dev = lower.device
    best_x, best_value, best_score = (t.clone() for t in init)
    d = int((lower < upper).reshape(n, -1).sum(dim=1).max())
    u = unit_design(n_cand, d, sobol=use_global, seed=seed, generator=generator).to(device=dev, dtype=lower.dtype)

    keep = min(n_cand, 4 * R)
    top_loss = torch.full((0, R, n), -math.inf, dtype=lower.dtype, device=dev)
    top_idx = torch.zeros((0, R, n), dtype=torch.long, device=dev)
    per_chunk = max(1, rows_per_batch // n)
    screened = 0
    arange = torch.arange(n, device=dev)
    fields = (plan.mode, plan.out, plan.sign, plan.class_a, plan.class_b)
    # first[r]: the first restart with restart r's objective in every region (evaluated once per chunk)
    keys = [tuple(t[r] for t in fields) + (() if plan.value_out is None else (plan.value_out[r],)) for r in range(R)]
    first = [next(q for q in range(r + 1) if all(torch.equal(x, y) for x, y in zip(keys[q], keys[r])))
             for r in range(R)]
    for j0 in range(0, n_cand, per_chunk):
        if out_of_time():
            break
        j1 = min(j0 + per_chunk, n_cand)
        c = j1 - j0
        if fwd.reduced is not None:  # the reduced forward reads the design directly: no full-size points
            pts = None
            ya, yb = fwd.reduced.outputs_unit(u[j0:j1])
        else:
            pts = unit_to_box(u[j0:j1], lower, upper)  # [c, N, ...]
            ya, yb = fwd.outputs(pts.reshape(c * n, *pts.shape[2:]), arange.repeat(c))  # the search's own forward
        losses = []
        for r in range(R):
            if first[r] < r:  # the same objective as an earlier restart
                losses.append(losses[first[r]])
                continue
            rp = RestartPlan(*(t[r].repeat(c) for t in fields),
                             None if plan.value_out is None else plan.value_out[r].repeat(c))
            loss, value, score = objective(div, rp, ya, yb)
            losses.append(torch.nan_to_num(loss.view(c, n), nan=-math.inf))
            if r == 0:
                value, score = value.view(c, n), score.view(c, n)
                j = score.argmax(dim=0)
                s = score[j, arange]
                better = s > best_score
                if bool(better.any()):
                    picked = pts[j, arange] if pts is not None else unit_to_box(u[j0 + j].unsqueeze(0), lower,
                                                                                upper)[0]
                    bx = better.view(n, *([1] * (picked.dim() - 1)))
                    best_x = torch.where(bx, picked, best_x)
                    best_value = torch.where(better, value[j, arange], best_value)
                    best_score = torch.where(better, s, best_score)
        loss_all = torch.stack(losses, dim=1)  # [c, R, N]
        idx_all = torch.arange(j0, j1, device=dev).view(c, 1, 1).expand(c, R, n)
        cat_loss = torch.cat([top_loss, loss_all])
        cat_idx = torch.cat([top_idx, idx_all])
        top_loss, pos = torch.topk(cat_loss, min(keep, cat_loss.shape[0]), dim=0)
        top_idx = cat_idx.gather(0, pos)
        screened = j1
    if screened == 0:  # out of time before any candidate: midpoints and uniform points
        x0 = best_x.unsqueeze(0)
        if R > 1:
            x0 = torch.cat([x0, uniform_points(lower, upper, R - 1, generator)])
        return x0, best_x, best_value, best_score, 0

    # diverse choice of starts: [R, N] candidate indices
    min_dist = 0.5 * screened ** (-1.0 / max(d, 1))
    chosen = torch.zeros((R, n), dtype=torch.long, device=dev)
    for r in range(R):
        cand = top_idx[:, r, :]  # [K, N]
        if r == 0:
            chosen[0] = cand[0]
            continue
        uc = u[cand]  # [K, N, d]
        prev = u[chosen[:r]]  # [r, N, d]
        dist = (uc.unsqueeze(1) - prev.unsqueeze(0)).abs().amax(dim=-1).amin(dim=1) if d > 0 \
            else torch.zeros(cand.shape, dtype=u.dtype, device=dev)  # [K, N]
        far = dist >= min_dist
        first_far = torch.where(far.any(dim=0), far.double().argmax(dim=0), dist.argmax(dim=0))
        chosen[r] = cand[first_far, arange]
    x0 = unit_to_box(u[chosen], lower, upper)  # u[chosen]: [R, N, d] -> [R, N, ...]
    return x0, best_x, best_value, best_score, screened
