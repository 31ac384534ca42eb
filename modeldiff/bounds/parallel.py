"""Branch and bound over many boxes, one box at a time per worker process.

Each box's branch and bound is independent, so boxes are shared out among ``workers`` processes (started with
``spawn``: forking a process whose torch thread pools are running is unsafe), each running torch on one thread.
On 2 cores, two single-thread processes bound 1.7x as many sub-boxes per second as one process on two threads
(measured on two ACAS Xu pairs, 3,000 sub-boxes each): the per-box work is many small products, which one process
does not spread well over threads.

Ctrl-C (``KeyboardInterrupt`` in the calling process) stops every worker at its next round: the boxes being
bounded keep their anytime results, with status ``interrupted``, and boxes not started yet get their bound
before any split (status ``interrupted`` too), so that every box has a valid ``[lower, upper]``. Workers ignore
SIGINT themselves and are stopped through a shared event instead.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import pickle
import signal
from concurrent.futures import ProcessPoolExecutor, wait
from typing import Any, Callable

import torch
from torch import nn

from modeldiff.bounds.bab import BaBResult, branch_and_bound_box
from modeldiff.bounds.base import SpecBounder

__all__ = ["run_boxes"]

logger = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}


def _init_worker(a: nn.Module, b: nn.Module, input_shape: tuple[int, ...], method: str, stop_event) -> None:
    from modeldiff.bounds import make_bounder

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers through stop_event
    torch.set_num_threads(1)
    _WORKER.update(a=a, b=b, bounder=make_bounder(a, b, input_shape, method)[0], stop=stop_event.is_set)


def _run_in_worker(box: dict[str, Any]) -> BaBResult:
    return branch_and_bound_box(_WORKER["a"], _WORKER["b"], _WORKER["bounder"], stop=_WORKER["stop"], **box)


def _not_run(a: nn.Module, b: nn.Module, bounder: SpecBounder, box: dict[str, Any]) -> BaBResult:
    """The anytime result of a box that branch and bound never reached: its bound before any split."""
    res = branch_and_bound_box(a, b, bounder, **{**box, "max_nodes": 1, "search_every": 0})
    if res.status == "node-limit":
        res = dataclasses.replace(res, status="interrupted")
    return res


def _picklable(*objects: Any) -> str | None:
    try:
        pickle.dumps(objects)
    except Exception as exc:  # noqa: BLE001  (any failure means: cannot send them to a worker)
        return f"{type(exc).__name__}: {exc}"
    return None


def run_boxes(a: nn.Module, b: nn.Module, bounder: SpecBounder, method: str, input_shape: tuple[int, ...],
              boxes: list[dict[str, Any]], workers: int = 1,
              done: Callable[[], None] | None = None) -> list[BaBResult]:
    """:func:`~modeldiff.bounds.bab.branch_and_bound_box` on each box, in order of ``boxes``.

    Args:
        a, b, bounder: the prepared models and their bounder (used in this process).
        method: the resolved bound method (``diff``, ``crown``, ...): each worker builds its own bounder with it.
        input_shape: one input's shape.
        boxes: per box, the keyword arguments of ``branch_and_bound_box`` other than the models and bounder.
        workers: processes to run in (1: this process). Models that cannot be pickled run in this process.
        done: called once per finished box (progress).

    Returns:
        One :class:`~modeldiff.bounds.bab.BaBResult` per box.
    """
    tick = done or (lambda: None)
    workers = min(workers, len(boxes))
    if workers > 1:
        reason = _picklable(a, b)
        if reason is not None:
            logger.warning("branch and bound: the models cannot be sent to worker processes (%s); running the "
                           "boxes one after another in this process", reason)
            workers = 1
    if workers <= 1:
        results: list[BaBResult] = []
        for box in boxes:
            if results and results[-1].status == "interrupted":
                results.append(_not_run(a, b, bounder, box))  # Ctrl-C stops the whole run, not just one box
            else:
                results.append(branch_and_bound_box(a, b, bounder, **box))
            tick()
        return results
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    out: list[BaBResult | None] = [None] * len(boxes)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(a, b, tuple(input_shape), method, stop)) as pool:
        futures = {pool.submit(_run_in_worker, box): i for i, box in enumerate(boxes)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when="FIRST_COMPLETED")
                for f in finished:
                    out[futures[f]] = f.result()
                    tick()
        except KeyboardInterrupt:
            logger.info("branch and bound: interrupted; stopping the workers")
            stop.set()
            for f in pending:
                f.cancel()
            for f in pending:
                if not f.cancelled():
                    out[futures[f]] = f.result()  # running: stops at its next round with its anytime result
        except BaseException:  # a box failed: stop the others before the pool waits for them
            stop.set()
            for f in pending:
                f.cancel()
            raise
    return [r if r is not None else _not_run(a, b, bounder, box) for r, box in zip(out, boxes)]
