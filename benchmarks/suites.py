"""The public differential-verification benchmarks as modeldiff regions, shared by the benchmark scripts.

Data: ``benchmarks/data`` (copied from the ReluDiff/NeuroDiff artifacts, provenance in its README). In every pair,
network B is A with float16 weights. Region definitions follow ``benchmarks/data/README.md``.
"""

from __future__ import annotations

import csv
import json
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from modeldiff.loading import load_model  # noqa: E402
from modeldiff.regions import Region, box  # noqa: E402

DTYPE = torch.float64
DATA = HERE / "data"


@dataclass
class Job:
    """One model pair with a batch of regions and the output index each region is about."""

    name: str
    a: torch.nn.Module
    b: torch.nn.Module
    region: Region
    target: torch.Tensor


def mnist(kind: str = "p3", limit: int | None = None) -> Job:
    """MNIST 3x100 vs float16: ``p3`` (every pixel +-3/255) or ``3px`` (three free pixels), 100 images."""
    d = DATA / "mnist"
    a = load_model(d / "mnist_relu_3_100.nnet")
    b = load_model(d / "mnist_relu_3_100_16bit.nnet")
    tests = json.loads((d / "tests.json").read_text())
    v = torch.tensor(tests["images_0_255"], dtype=DTYPE)
    y = torch.tensor(tests["labels"], dtype=torch.long)
    if limit is not None:
        v, y = v[:limit], y[:limit]
    if kind == "p3":
        lo, hi = ((v - 3) / 255).clamp(0, 1), ((v + 3) / 255).clamp(0, 1)
    elif kind == "3px":
        lo, hi = (v / 255).clone(), (v / 255).clone()
        for k in range(v.shape[0]):
            for p in tests["reludiff_pixels"][k][:3]:
                lo[k, p], hi[k, p] = 0.0, 1.0
    else:
        raise ValueError(f"unknown MNIST benchmark {kind!r}")
    return Job(f"mnist-{kind}", a, b, box(lo, hi), y)


def har(limit: int | None = None) -> Job:
    """HAR 561-500-6 vs float16, inputs ``[max(-1, v-0.1), min(1, v+0.1)]``, 100 inputs."""
    d = DATA / "har"
    a = load_model(d / "HAR.nnet")
    b = load_model(d / "HAR_16bit.nnet")
    tests = json.loads((d / "tests.json").read_text())
    v = torch.tensor(tests["HAR_test"], dtype=DTYPE)
    y = torch.tensor(tests["HAR_correct_class"], dtype=torch.long)
    if limit is not None:
        v, y = v[:limit], y[:limit]
    return Job("har", a, b, box((v - 0.1).clamp_min(-1.0), (v + 0.1).clamp_max(1.0)), y)


def acas_pairs(limit: int | None = None) -> list[tuple[str, str, str, int]]:
    """The 143 (property, network A, network B, target output) rows of the published results."""
    pairs: list[tuple[str, str, str, int]] = []
    with open(DATA / "acasxu" / "published.csv", newline="") as f:
        for row in csv.DictReader(f):
            key = (row["property"], row["net"], row["net16"], int(row["target"]))
            if key not in pairs:
                pairs.append(key)
    return pairs[:limit] if limit is not None else pairs


_NETS: dict[str, torch.nn.Module] = {}


def _net(path: Path) -> torch.nn.Module:
    if str(path) not in _NETS:
        _NETS[str(path)] = load_model(path)
    return _NETS[str(path)]


def acas(limit: int | None = None) -> list[Job]:
    """One job per published (property, network) pair: the property's box in raw units, clamped to the
    network's input range."""
    d = DATA / "acasxu"
    boxes = json.loads((d / "properties.json").read_text())["boxes"]
    jobs = []
    for prop, name, name16, target in acas_pairs(limit):
        a, b = _net(d / "nets" / name), _net(d / "nets16" / name16)
        lo = torch.maximum(torch.tensor(boxes[prop]["lower"], dtype=DTYPE), a.input_lower)
        hi = torch.minimum(torch.tensor(boxes[prop]["upper"], dtype=DTYPE), a.input_upper)
        hi = torch.maximum(hi, lo)
        tag = name.replace("ACASXU_run2a_", "").replace("_batch_2000.nnet", "")
        jobs.append(Job(f"prop{prop}/{tag}", a, b, box(lo.unsqueeze(0), hi.unsqueeze(0)), torch.tensor([target])))
    return jobs


def published(benchmark: str) -> dict[str, dict[str, float]]:
    """Published median certified |delta| on the target (and total time) per tool for an MNIST/HAR benchmark."""
    path = DATA / ("har" if benchmark == "har" else "mnist") / "published.csv"
    names = {"mnist-p3": "mnist_3x100_global", "mnist-3px": "mnist_3x100_pixels", "har": "har"}
    vals: dict[str, list[float]] = {}
    times: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["benchmark"] != names[benchmark]:
                continue
            m = max(abs(float(row["delta_lo"])), abs(float(row["delta_hi"])))
            vals.setdefault(row["tool"], []).append(m)
            times[row["tool"]] = times.get(row["tool"], 0.0) + float(row["time_s"])
    return {t: {"median": statistics.median(v), "time_s": times[t]} for t, v in vals.items()}


def write_section(name: str, text: str, argv: list[str]) -> Path:
    """Replace (or append) the section ``name`` of benchmarks/RESULTS.md with ``text`` and the command line."""
    path = HERE / "RESULTS.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(argv[0]).name}", *argv[1:]])
    section = f"{start}\n{text}\n\nCommand: `{command}`\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        _, tail = rest.split(end, 1)
        new = head + section + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)
    return path
