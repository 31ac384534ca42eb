"""How long a disagreement report takes: ``modeldiff.report.review`` + ``write_review`` on the digits example.

Trains the example's self-training chain (``examples/make_digits_versions.py``, 4 rounds, no ensemble) into a
temporary folder, then reviews ``round0`` against ``round3`` over L-inf balls (eps 0.03, domain [0, 1]) around
the first ``--points`` digits of scikit-learn's digits data (scaled to [0, 1]; 1,797 digits in all, so training
digits are included: this measures time, not accuracy) with the report's default budgets, and writes the report
folder. Prints a table with the time per stage and replaces the ``bench_report`` section of
``benchmarks/RESULTS.md`` unless ``--no-write``.

Usage::

    python benchmarks/bench_report.py                  # 1,000 points
    python benchmarks/bench_report.py --points 100 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import suites  # noqa: E402  (benchmarks/ is on sys.path when run as a script; it puts the project root there too)

from modeldiff import regions  # noqa: E402
from modeldiff.loading import load_model  # noqa: E402
from modeldiff.report import review, write_review  # noqa: E402

ROOT = suites.HERE.parent


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1000, help="digits reviewed (at most 1797)")
    p.add_argument("--eps", type=float, default=0.03)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "examples"))
    import make_digits_versions as gen
    from sklearn.datasets import load_digits

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gen.main(["--out", str(Path(tmp) / "digits"), "--rounds", "4", "--members", "1",
                  "--threads", str(torch.get_num_threads())])
        train_s = time.perf_counter() - t0
        a = load_model(Path(tmp) / "digits" / "round0.onnx")
        b = load_model(Path(tmp) / "digits" / "round3.onnx")
        digits = load_digits()
        x = torch.tensor(digits.data[: args.points] / 16.0, dtype=torch.float64)
        y = torch.tensor(digits.target[: args.points], dtype=torch.long)
        region = regions.ball(x, args.eps, domain=(0.0, 1.0))
        t0 = time.perf_counter()
        result = review(a, b, region, labels=y)
        review_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_review(result, Path(tmp) / "review")
        write_s = time.perf_counter() - t0
    stages = "; ".join(f"{k} {v:.1f}" for k, v in result.time_s.items())
    text = "\n".join([
        "## Report time (`benchmarks/bench_report.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), float64. `review(round0, round3, ...)` of the digits example "
        f"(64-32-32-10), eps {args.eps}, default budgets (search 5 x 50 for top1 and linf, method auto: "
        f"{result.method}), then `write_review` (HTML, PNGs, JSON). Training the example: {train_s:.1f} s "
        "(not counted).",
        "",
        "| points | review (s) | write (s) | total (s) | clean disagreement | under search | certified agreement |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(region)} | {review_s:.1f} | {write_s:.1f} | {review_s + write_s:.1f} | "
        f"{result.clean_disagreement_rate:.1%} | {result.search_disagreement_rate:.1%} | "
        f"{result.certified_agreement_rate:.1%} |",
        "",
        f"Time per stage (s): {stages}.",
    ])
    print(text)
    if not args.no_write:
        print("wrote", suites.write_section("bench_report", text, argv))


if __name__ == "__main__":
    main(sys.argv)
