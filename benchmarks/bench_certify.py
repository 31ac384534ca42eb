"""Certified bounds on the public differential-verification benchmarks, side by side with the published ones.

For MNIST 3x100 (p=3 and three-pixel) and HAR, each vs its float16 copy: the median over the 100 regions of the
certified ``|A(x)_t - B(x)_t|`` on the target output t (the true label), and the total time, per method
(auto_LiRPA IBP/CROWN/alpha-CROWN on the composed graph, and modeldiff's differential bound ``diff``), next to
ReluDiff's and NeuroDiff's published numbers (which ran on 10-12 threads; ours on this machine's cores).

Usage::

    python benchmarks/bench_certify.py                                  # all benchmarks, all methods
    python benchmarks/bench_certify.py --bench mnist-p3 --method diff   # one cell
    python benchmarks/bench_certify.py --bench mnist-3px --method diff --method diff+bab --gap --section bench_bab
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import suites  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import modeldiff  # noqa: E402
from modeldiff.bounds.derive import abs_max  # noqa: E402

BENCHES = ("mnist-p3", "mnist-3px", "har")
METHODS = ("ibp", "crown", "alpha-crown", "diff", "diff+bab")
#: input-split branch and bound per region (diff+bab): relative tolerance and seconds per region
BAB_TOLERANCE = 0.05


def job(name: str, limit: int | None) -> suites.Job:
    return suites.har(limit) if name == "har" else suites.mnist(name.split("-")[1], limit)


_FOUND: dict[tuple[str, int | None], torch.Tensor] = {}


def found(name: str, limit: int | None) -> torch.Tensor:
    """``[N]`` largest |A_t - B_t| the search reaches per region (10 restarts x 100 steps, seed 0), cached."""
    if (name, limit) not in _FOUND:
        j = job(name, limit)
        _FOUND[(name, limit)] = modeldiff.search(j.a, j.b, j.region, "delta", output_index=j.target, seed=0).found
    return _FOUND[(name, limit)]


def run(name: str, method: str, limit: int | None, batch_size: int, gap: bool = False,
        bab_time: float = 2.0, split: str = "auto", jobs: int = 1) -> dict:
    j = job(name, limit)
    start = time.perf_counter()
    reached = None
    if method == "diff+bab":  # seeded by a 5 x 50 search inside refine (its time included)
        res = modeldiff.bounds.refine(j.a, j.b, j.region, "delta", "diff", output_index=j.target,
                                      tolerance=BAB_TOLERANCE, time_budget_s=bab_time, split=split, workers=jobs)
        per_region = torch.tensor([r.upper for r in res], dtype=torch.float64)
        reached = torch.tensor([r.lower for r in res], dtype=torch.float64)
        if split == "auto":  # as refine chooses for the differential bound and delta
            free = int((j.region.upper > j.region.lower).flatten(1).sum(dim=1).max())
            split = "relu" if free > modeldiff.bounds.RELU_SPLIT_MIN_DIMS else "input"
        method = f"diff+bab ({split} split, {bab_time:g} s per region, {jobs} worker(s))"
    else:
        result = modeldiff.bound(j.a, j.b, j.region, "delta", method, output_index=j.target,
                                 batch_size=batch_size)
        lo, hi = result.delta_lower.gather(1, j.target[:, None]), result.delta_upper.gather(1, j.target[:, None])
        per_region = abs_max(lo, hi).squeeze(1)
    elapsed = time.perf_counter() - start
    row = {"bench": name, "method": method, "median": float(per_region.median()), "time_s": elapsed,
           "regions": len(j.region)}
    if gap:
        f = found(name, limit)
        if reached is not None:  # what branch and bound reached counts as found too
            f = torch.maximum(f, reached)
        assert (f <= per_region + 1e-12).all(), "found above certified: a soundness bug"
        row["found"] = float(f.median())
        row["gap"] = float((per_region / f).median())
    return row


def table(rows: list[dict]) -> str:
    gap = any("gap" in r for r in rows)
    head = "| benchmark | method | regions | median certified label delta | time (s) |"
    lines = [head + (" median found | median certified/found |" if gap else ""),
             "|---|---|---|---|---|" + ("---|---|" if gap else "")]
    for bench in dict.fromkeys(r["bench"] for r in rows):
        for tool, res in sorted(suites.published(bench).items()):
            lines.append(f"| {bench} | {tool} (published) | 100 | {res['median']:.5f} | {res['time_s']:.1f} |"
                         + (" | |" if gap else ""))
        for r in (r for r in rows if r["bench"] == bench):
            line = f"| {bench} | {r['method']} | {r['regions']} | {r['median']:.5f} | {r['time_s']:.1f} |"
            if gap:
                line += f" {r['found']:.6f} | {r['gap']:.2f} |"
            lines.append(line)
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", choices=BENCHES, action="append", help="benchmark(s) (default: all)")
    p.add_argument("--method", choices=METHODS, action="append",
                   help="method(s) (default: all but diff+bab, input-split branch and bound, meant for few free "
                        "inputs: mnist-3px)")
    p.add_argument("--bab-time", type=float, default=2.0, help="diff+bab: seconds per region (default 2)")
    p.add_argument("--split", choices=("auto", "input", "relu"), default="auto",
                   help="diff+bab: what branch and bound splits (default auto: ReLU signs for mnist-p3 and har, "
                        "the input box for mnist-3px)")
    p.add_argument("--jobs", type=int, default=1, help="diff+bab: worker processes (default 1)")
    p.add_argument("--limit", type=int, help="first N regions only")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--gap", action="store_true",
                   help="also run the search (10 x 100) and report the median ratio certified/found per region")
    p.add_argument("--section", default="bench_certify", help="section of RESULTS.md to write")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv[1:])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for bench in args.bench or BENCHES:
        for method in args.method or METHODS[:-1]:
            rows.append(run(bench, method, args.limit, args.batch_size, args.gap, args.bab_time, args.split,
                            args.jobs))
            print(rows[-1], flush=True)
    title = "Certified bounds and their gap to the search" if args.gap else "Certified bounds"
    notes = f"\n\nMeasured on {torch.get_num_threads()} CPU thread(s), float64."
    if args.gap and any(r["method"].startswith("diff+bab") for r in rows):
        notes += (" Found: the search (10 restarts x 100 steps); for diff+bab, per region the larger of that and the "
                  "value branch and bound reached (its lower bound).")
    text = f"## {title} ({args.section})\n\n" + table(rows) + notes
    print(text)
    if not args.no_write:
        print("wrote", suites.write_section(args.section, text, argv))


if __name__ == "__main__":
    main(sys.argv)
