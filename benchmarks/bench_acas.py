"""Branch and bound on the ACAS Xu differential-verification benchmark, next to NeuroDiff's and ReluDiff's results.

For each of the 143 published (property, network) pairs (``suites.acas``: the property's input box in raw units,
clamped to the network's domain; network B is A with float16 weights) and each eps, the pair is *proven* when
``|A(x)_t - B(x)_t| < eps`` is certified over the whole box for the published target output t:
:func:`modeldiff.bounds.bab.branch_and_bound_box` on divergence ``delta`` with ``threshold=eps``,
``tolerance=0``, a per-pair time budget (``--timeout``) and no node budget, status ``proven``. A status
``disproven`` means a point of the box reaches ``|delta| >= eps`` (its value and the point are printed).

Prints one line per pair as it goes, then a markdown table per eps: pairs run, proven, total time, and the
published NeuroDiff / ReluDiff proven counts and total times on the same pairs (published times are from the
papers' machines, 10-12 threads; pairs they did not finish have no time and are counted apart), the median over
the pairs of the final gap ``upper / lower`` (certified bound / best value found), and the pairs not proven.
The table replaces the ``bench_acas`` section (or ``--section``) of ``benchmarks/RESULTS.md`` unless ``--no-write``.

Usage::

    python benchmarks/bench_acas.py --eps 0.05 --timeout 10            # all 143 pairs at eps 0.05
    python benchmarks/bench_acas.py --eps 0.01 --limit 30 --no-write   # a quick look
    python benchmarks/bench_acas.py --eps 0.01 --timeout 10 --threads 2 --section bench_acas_eps001
    python benchmarks/bench_acas.py --eps 0.01 --timeout 60 --pairs prop1/2_5 prop1/4_9 --no-write
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import multiprocessing
import os
import statistics
import sys
import time

import torch

import suites  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from modeldiff.bounds import METHODS, make_bounder  # noqa: E402
from modeldiff.bounds.bab import branch_and_bound_box  # noqa: E402
from modeldiff.graph import prepare_model  # noqa: E402

TOOLS = {"neurodiff": "NeuroDiff", "reludiffp": "ReluDiff"}


def pair_key(job: suites.Job) -> tuple[str, str]:
    """``(property, tag)`` of a job named ``prop<property>/<tag>``."""
    prop, tag = job.name.split("/", 1)
    return prop[len("prop"):], tag


def published() -> dict[tuple[str, str, str], dict]:
    """Published rows keyed by ``(tool, eps as str, name)``, ``name`` as in :func:`suites.acas`."""
    out = {}
    with open(suites.DATA / "acasxu" / "published.csv", newline="") as f:
        for row in csv.DictReader(f):
            tag = row["net"].replace("ACASXU_run2a_", "").replace("_batch_2000.nnet", "")
            out[(row["tool"], f"{float(row['eps']):g}", f"prop{row['property']}/{tag}")] = row
    return out


_PREPARED: dict[int, torch.nn.Module] = {}


def prepared(model: torch.nn.Module) -> torch.nn.Module:
    if id(model) not in _PREPARED:
        _PREPARED[id(model)] = prepare_model(model, torch.float64)
    return _PREPARED[id(model)]


def run_pair(job: suites.Job, eps: float, method: str, timeout: float) -> dict:
    start = time.perf_counter()
    a, b = prepared(job.a), prepared(job.b)
    lo, hi = job.region.lower.to(torch.float64), job.region.upper.to(torch.float64)
    bounder, used = make_bounder(a, b, tuple(lo.shape[1:]), method)
    res = branch_and_bound_box(a, b, bounder, lo, hi, "delta", output_index=int(job.target[0]), threshold=eps,
                               tolerance=0.0, time_budget_s=timeout, max_nodes=10**9)
    return {"name": job.name, "eps": eps, "method": used, "status": res.status, "nodes": res.nodes,
            "time_s": time.perf_counter() - start, "lower": res.lower, "upper": res.upper,
            "initial_upper": res.initial_upper, "witness": res.witness.flatten().tolist()}


@functools.lru_cache(maxsize=1)
def _jobs_by_name() -> dict[str, suites.Job]:
    return {j.name: j for j in suites.acas()}


def _init_worker(threads: int, data) -> None:
    torch.set_num_threads(threads)
    suites.DATA = data


def _run_named(task: tuple[str, float, str, float]) -> dict:
    """:func:`run_pair` in a worker process, the pair given by name (the worker loads the networks itself)."""
    name, eps, method, timeout = task
    return run_pair(_jobs_by_name()[name], eps, method, timeout)


def run_all(jobs: list[suites.Job], eps: float, method: str, timeout: float, workers: int, threads: int):
    """Every pair run at ``eps``, in ``workers`` processes of ``threads`` torch threads each (1: in this
    process); yields the rows as they finish."""
    tasks = [(job.name, eps, method, timeout) for job in jobs]
    if workers == 1:
        by_name = {j.name: j for j in jobs}
        for name, eps, m, t in tasks:
            yield run_pair(by_name[name], eps, m, t)
        return
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    with ctx.Pool(workers, initializer=_init_worker, initargs=(threads, suites.DATA)) as pool:
        yield from pool.imap_unordered(_run_named, tasks)


def gap(r: dict) -> float:
    return r["upper"] / r["lower"] if r["lower"] > 0 else math.inf


def table(rows: list[dict], timeout: float, method: str, wall_s: float, workers: int, threads: int) -> str:
    pub = published()
    out = []
    head = ["| eps | pairs | proven (us) | total time (s, us) | wall time (s, us) |"]
    sep = ["|---:|---:|---:|---:|---:|"]
    for name in TOOLS.values():
        head.append(f" proven ({name}) | total time (s, {name}) |")
        sep.append("---:|---:|")
    head.append(" both others proven, we did not | median gap upper/lower (us) | disproven (us) |")
    sep.append("---:|---:|---:|")
    out += ["".join(head), "".join(sep)]
    unproven_lines = []
    for eps in dict.fromkeys(r["eps"] for r in rows):
        rs = [r for r in rows if r["eps"] == eps]
        e = f"{eps:g}"
        cells = [f"| {e} | {len(rs)} | {sum(r['status'] == 'proven' for r in rs)} | "
                 f"{sum(r['time_s'] for r in rs):.1f} | {wall_s[eps]:.1f} |"]
        for tool in TOOLS:
            prow = [pub.get((tool, e, r["name"])) for r in rs]
            have = [p for p in prow if p is not None]
            n_proven = sum(p["proven"] == "True" for p in have)
            timed = [float(p["time_s"]) for p in have if p["time_s"]]
            untimed = len(have) - len(timed)
            missing = len(prow) - len(have)
            t = f"{sum(timed):.1f}" + (f" (+{untimed} without time)" if untimed else "")
            cells.append(f" {n_proven}" + (f" ({missing} not published)" if missing else "") + f" | {t} |")
        others = sum(
            r["status"] != "proven" and all((pub.get((tool, e, r["name"])) or {}).get("proven") == "True"
                                            for tool in TOOLS)
            for r in rs
        )
        gaps = [gap(r) for r in rs]
        med = statistics.median(gaps) if gaps else math.nan
        cells.append(f" {others} | {med:.3g} | {sum(r['status'] == 'disproven' for r in rs)} |")
        out.append("".join(cells))
        for r in rs:
            if r["status"] != "proven":
                flags = ", ".join(
                    f"{name} {'proven' if (pub.get((tool, e, r['name'])) or {}).get('proven') == 'True' else 'not'}"
                    for tool, name in TOOLS.items()
                )
                unproven_lines.append(
                    f"- eps {e}, {r['name']}: {r['status']}, lower {r['lower']:.4g}, upper {r['upper']:.4g}, "
                    f"{r['nodes']} nodes, {r['time_s']:.1f} s ({flags})"
                    + (f"; witness x = {[round(v, 6) for v in r['witness']]}" if r["status"] == "disproven" else "")
                )
    text = [
        f"## ACAS Xu at eps {', '.join(f'{e:g}' for e in dict.fromkeys(r['eps'] for r in rows))}: branch and bound "
        "vs NeuroDiff / ReluDiff (`benchmarks/bench_acas.py`)",
        "",
        f"Proven at eps: `|A(x)_t - B(x)_t| < eps` certified over the property box for the published target output "
        f"t, by `branch_and_bound_box` (method `{method}`, tolerance 0, {timeout:g} s per pair, no node limit), "
        f"float64, {workers} worker process(es) of {threads} torch thread(s) on a {os.cpu_count()}-core machine. Our "
        "time per pair includes building the bounder; total time sums them, wall time is the whole run's (with "
        "several workers, pairs run side by side). "
        "Published times are the papers' (other machines, 10-12 threads), summed over the pairs with a time; "
        "pairs without one did not finish. Gap = certified upper bound / largest |delta| found, at the end of "
        "the run (median over all pairs run).",
        "",
        *out,
        "",
        "Not proven by us:" if unproven_lines else "Every pair run was proven.",
    ]
    if unproven_lines:
        text += [""] + unproven_lines
    return "\n".join(text)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eps", type=float, action="append", help="threshold(s) (repeatable; default 0.05 and 0.01)")
    p.add_argument("--method", choices=METHODS, default="diff", help="bound method (default diff)")
    p.add_argument("--timeout", type=float, default=30.0, help="time budget per pair in seconds (default 30)")
    p.add_argument("--limit", type=int, help="first N (property, network) pairs only")
    p.add_argument("--pairs", nargs="+", metavar="NAME", help="only these pairs, named as printed (prop1/2_5 ...)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default 1)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes, each bounding one pair at a time (default 1: none, in this process)")
    p.add_argument("--section", default="bench_acas", help="section of RESULTS.md to write (default bench_acas)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv[1:])
    torch.set_num_threads(args.threads or 1)
    jobs = suites.acas(args.limit)
    if args.pairs:
        wanted = set(args.pairs)
        unknown = sorted(wanted - {j.name for j in jobs})
        if unknown:
            p.error(f"--pairs: no such pair(s) {', '.join(unknown)} (names look like prop1/2_5)")
        jobs = [j for j in jobs if j.name in wanted]
    if args.jobs < 1:
        p.error(f"--jobs: expected an int >= 1, got {args.jobs}")
    rows, wall = [], {}
    order = {j.name: i for i, j in enumerate(jobs)}
    for eps in args.eps or (0.05, 0.01):
        start = time.perf_counter()
        done = []
        for r in run_all(jobs, eps, args.method, args.timeout, args.jobs, args.threads or 1):
            done.append(r)
            line = (f"eps={eps:g} {r['name']:<14} {r['status']:<10} nodes={r['nodes']:<8} time={r['time_s']:7.2f}s "
                    f"lower={r['lower']:.6g} upper={r['upper']:.6g}")
            if r["status"] == "disproven":
                line += f" WITNESS |delta|={r['lower']:.9g} at x={r['witness']}"
            print(line, flush=True)
        wall[eps] = time.perf_counter() - start
        rows += sorted(done, key=lambda r: order[r["name"]])
    text = table(rows, args.timeout, args.method, wall, args.jobs, args.threads or 1)
    print(text, flush=True)
    if not args.no_write:
        print("wrote", suites.write_section(args.section, text, argv))


if __name__ == "__main__":
    main(sys.argv)
