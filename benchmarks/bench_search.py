"""Benchmark of the disagreement search (modeldiff.search) against a sampling + plain PGD baseline.

For each benchmark, in the same run and on the same machine:

* **baseline**: 10,000 uniform samples per region, plus plain PGD (10 restarts x 100 steps from uniform random
  starts, fixed step of 1/8 of the box width per entry, sign of the gradient, clamp into the box); the value
  per region is the best point of either;
* **search**: :func:`modeldiff.search.search` with the given restarts and steps (``--configs``, default: its
  defaults, 10 x 100).

Benchmarks (network B is A with float16 weights; the data is described in ``benchmarks/data/README.md``; the
regions are built by the shared loaders of ``benchmarks/suites.py``):

* ``mnist-p3``: MNIST 3x100, global perturbation p=3 (pixel i in ``[max(0,(v-3)/255), min(1,(v+3)/255)]``),
  100 images, divergence ``delta`` on the true label;
* ``mnist-3px``: the same network, three free pixels per image (``reludiff_pixels[k][:3]`` in ``[0, 1]``);
* ``har``: HAR 561-500-6, inputs ``[max(-1, v-0.1), min(1, v+0.1)]``, 100 inputs, ``delta`` on the label;
* ``acas``: ACAS Xu property boxes (raw units, clamped to each network's input range), one region per
  (property, network) pair of the published results (143), ``delta`` on the published target output.

The script prints a markdown table and replaces its section of ``benchmarks/RESULTS.md`` (between the
``bench_search`` markers, via ``suites.write_section``), with the exact command that produced it.

Usage::

    python benchmarks/bench_search.py                       # everything (several minutes on 2 cores)
    python benchmarks/bench_search.py --limit 10 --no-write # quick look
    python benchmarks/bench_search.py --threads 1 --configs 10x100 30x100
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

import suites  # noqa: E402  (benchmarks/ is on sys.path when run as a script; it puts the project root there too)

from modeldiff.regions import Region  # noqa: E402
from modeldiff.search import evaluate, search  # noqa: E402

BENCHMARKS = ("mnist-p3", "mnist-3px", "har", "acas")
HERE = suites.HERE
DTYPE = suites.DTYPE


# ------------------------------------------------------------------------------------------------- data


def data_root(arg: str | None) -> Path:
    for cand in ([Path(arg)] if arg else []) + [suites.DATA, Path("/work/shared/benchmarks")]:
        if (cand / "mnist").is_dir() and (cand / "har").is_dir() and (cand / "acasxu").is_dir():
            return cand
    raise SystemExit("benchmark data not found (looked in --data, benchmarks/data, /work/shared/benchmarks)")


def load_jobs(name: str, limit: int | None):
    """``(a, b, region, target)`` per model pair of the benchmark, from the shared loaders in ``suites``."""
    if name == "acas":
        jobs = suites.acas(limit)
    elif name == "har":
        jobs = [suites.har(limit)]
    else:
        jobs = [suites.mnist(name.split("-", 1)[1], limit)]
    return [(j.a, j.b, j.region, j.target) for j in jobs]


# ------------------------------------------------------------------------------------------------- baseline


def baseline(a, b, region: Region, target: torch.Tensor, *, samples: int = 10_000, restarts: int = 10,
             steps: int = 100, seed: int = 0, rows: int = 20_000) -> torch.Tensor:
    """Best ``|A_t - B_t|`` per region over ``samples`` uniform points and a plain fixed-step PGD."""
    g = torch.Generator().manual_seed(seed)
    n = len(region)
    lo, hi = region.lower, region.upper
    best = torch.full((n,), -math.inf, dtype=DTYPE)
    per = max(1, rows // n)
    done = 0
    while done < samples:
        c = min(per, samples - done)
        x = region.sample(c, generator=g)  # [c, N, ...]
        val = evaluate(a, b, x.reshape(c * n, *x.shape[2:]), "delta", target.repeat(c)).view(c, n)
        best = torch.maximum(best, val.amax(dim=0))
        done += c
    # plain PGD, all restarts of all regions in one batch
    x = region.sample(restarts, generator=g).reshape(restarts * n, *lo.shape[1:])
    lo_r, hi_r = lo.repeat(restarts, *([1] * (lo.dim() - 1))), hi.repeat(restarts, *([1] * (lo.dim() - 1)))
    step = (hi_r - lo_r) / 8
    t = target.repeat(restarts)
    a.eval()
    b.eval()
    for _ in range(steps + 1):
        x = x.detach().requires_grad_(True)
        d = (a(x) - b(x)).gather(1, t.view(-1, 1)).squeeze(1).abs()
        (grad,) = torch.autograd.grad(d.sum(), x)
        best = torch.maximum(best, d.detach().view(restarts, n).amax(dim=0))
        x = torch.minimum(torch.maximum(x.detach() + step * grad.sign(), lo_r), hi_r)
    return best


# ------------------------------------------------------------------------------------------------- run


def run_one(name: str, jobs, args) -> list[dict]:
    """The baseline once, then the search in each configuration; one result row per configuration."""
    base_vals, base_t = [], 0.0
    for a, b, region, target in jobs:
        t0 = time.perf_counter()
        base_vals.append(baseline(a, b, region, target, seed=args.seed))
        base_t += time.perf_counter() - t0
    bv = torch.cat(base_vals)
    rows = []
    for restarts, steps in args.configs:
        search_vals, search_t, optimizers = [], 0.0, set()
        for a, b, region, target in jobs:
            t0 = time.perf_counter()
            res = search(a, b, region, "delta", output_index=target, restarts=restarts, steps=steps,
                         seed=args.seed, batch_size=args.batch_size)
            search_t += time.perf_counter() - t0
            search_vals.append(res.found)
            optimizers.add(res.optimizer + (" (global)" if res.settings["global_mode"] else ""))
        sv = torch.cat(search_vals)
        rows.append({
            "benchmark": name,
            "config": f"{restarts} x {steps}, {', '.join(sorted(optimizers))}",
            "regions": int(bv.numel()),
            "baseline_median": float(bv.median()),
            "search_median": float(sv.median()),
            "frac_ge": float((sv >= bv).double().mean()),
            "frac_ge_tol": float((sv >= bv * (1 - 1e-9)).double().mean()),
            "ratio_median": float((sv / bv.clamp_min(1e-300)).median()),
            "ratio_min": float((sv / bv.clamp_min(1e-300)).min()),
            "baseline_s": base_t,
            "search_s": search_t,
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| benchmark | search (restarts x steps, optimiser) | regions | median found, baseline | "
        "median found, search | search >= baseline | median / min search/baseline | baseline time (s) | "
        "search time (s) | time ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['config']} | {r['regions']} | {r['baseline_median']:.6g} | "
            f"{r['search_median']:.6g} | {r['frac_ge']:.0%} ({r['frac_ge_tol']:.0%} within 1e-9 rel.) | "
            f"{r['ratio_median']:.4f} / {r['ratio_min']:.3f} | {r['baseline_s']:.1f} | {r['search_s']:.1f} | "
            f"{r['search_s'] / max(r['baseline_s'], 1e-9):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="benchmark data folder (default: benchmarks/data, else /work/shared/benchmarks)")
    p.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    p.add_argument("--limit", type=int, help="regions per benchmark (ACAS: property/network pairs)")
    p.add_argument("--configs", nargs="+", default=["10x100"], metavar="RxS",
                   help="search configurations, restarts x steps (default 10x100, the search's defaults)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = p.parse_args(argv)
    try:
        args.configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs]
        assert all(len(c) == 2 and min(c) >= 1 for c in args.configs)
    except (ValueError, AssertionError):
        p.error(f"--configs: expected items like 10x100, got {' '.join(args.configs)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if Path(args.results).resolve() != (HERE / "RESULTS.md").resolve():
        p.error("--results: only benchmarks/RESULTS.md is supported (written by suites.write_section)")
    suites.DATA = data_root(args.data)  # the suites loaders read their data from suites.DATA
    rows = []
    for name in args.benchmarks:
        rows += run_one(name, load_jobs(name, args.limit), args)
        print(f"{name}: done ({rows[-1]['baseline_s']:.1f} s baseline)", file=sys.stderr, flush=True)
    text = "\n".join([
        "## Search vs sampling + plain PGD (`benchmarks/bench_search.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float64.  ",
        "Search: `modeldiff.search.search` (optimizer auto: outside global mode, 15 exploratory runs of 5 "
        "sign-gradient steps per restart, then APGD from the best of them; in global mode, boxes with at most 16 "
        "free entries, 4096 Sobol starts screened (16384 where the reduced or the stacked forward applies: MNIST "
        "three-pixel, ACAS Xu), "
        "then APGD on a third of the restarts and the square search on the rest; the search's own steps on small "
        "dense pairs, ACAS Xu, run both networks stacked, one batched product per layer). Baseline: 10,000 uniform "
        "samples + plain PGD (10 restarts x 100 steps from uniform starts, fixed "
        "step width/8), both batched. Values are |A_t - B_t| on the target output, recomputed by a plain forward "
        "pass. Time ratio = search time / baseline time (target: at most 0.2).",
        "",
        table(rows),
    ])
    print(text)
    if not args.no_write:
        command_argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
        print("wrote", suites.write_section("bench_search", text, command_argv))


if __name__ == "__main__":
    main()
