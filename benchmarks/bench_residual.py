"""Certified bounds on a residual network: a small ResNet-style CNN trained on digits vs its float16 copy and vs a
pruned copy, composed-graph CROWN against the differential bound ``diff``, with the search's values beside them.

The network (trained here, offline, on scikit-learn's 8x8 digits scaled to [0, 1], seed 0):
``conv(1->8, 3x3) -> BN -> ReLU -> basic block (conv-BN-ReLU-conv-BN, out += identity, ReLU) ->
basic block -> 2x2 average pooling -> linear(10)``. B is A with every parameter rounded to float16, or A with the
10% smallest-magnitude weights of every conv and linear layer set to zero (no fine-tuning). Regions: L-inf balls
of radius ``--eps`` around the first ``--points`` test digits, clipped to [0, 1]. Reported per pair and method: the
median over the regions of the certified ``|A(x)_t - B(x)_t|`` on the true label ``t``, the time, the median found
by the search (10 restarts x 100 steps) and the median ratio certified/found.

Usage::

    python benchmarks/bench_residual.py                  # writes its section of benchmarks/RESULTS.md
    python benchmarks/bench_residual.py --points 20 --no-write
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time

import torch
from torch import nn

import suites  # noqa: E402  (benchmarks/ is on sys.path when run as a script; it puts the project root there too)

import modeldiff  # noqa: E402
from modeldiff.bounds.derive import abs_max  # noqa: E402
from modeldiff.regions import ball  # noqa: E402
from modeldiff.zoo import float16_copy  # noqa: E402


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        out += x
        return torch.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(c * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train(xtr, ytr, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(ytr), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval().double()


def pruned_copy(model: nn.Module, frac: float) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(frac * w.numel())
                cut = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= cut] = 0.0
    return out.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = digits()
    t0 = time.perf_counter()
    a = train(xtr, ytr, args.epochs)
    train_s = time.perf_counter() - t0
    x, y = xte[: args.points].double(), yte[: args.points]
    region = ball(x, args.eps, domain=(0.0, 1.0))
    rows = []
    for name, b in (("float16", float16_copy(a)), ("pruned 10%", pruned_copy(a, 0.1))):
        with torch.no_grad():
            acc = [float((m(xte.double()).argmax(1) == yte).double().mean()) for m in (a, b)]
        found = modeldiff.search(a, b, region, "delta", output_index=y, seed=0).found
        for method in ("crown", "diff"):
            start = time.perf_counter()
            res = modeldiff.bound(a, b, region, "delta", method, output_index=y)
            elapsed = time.perf_counter() - start
            per = abs_max(res.delta_lower.gather(1, y[:, None]), res.delta_upper.gather(1, y[:, None])).squeeze(1)
            assert (found <= per + 1e-12).all(), "found above certified: a soundness bug"
            rows.append((name, acc, method, float(per.median()), elapsed, float(found.median()),
                         float((per / found.clamp_min(1e-300)).median())))
        print(f"{name}: done", file=sys.stderr, flush=True)
    lines = [
        "## A residual network: CROWN vs the differential bound (`benchmarks/bench_residual.py`)",
        "",
        f"Machine: {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, float64. "
        f"A: a ResNet-style CNN (stem conv-BN-ReLU, two basic blocks with `out += x`, 2x2 average pooling, "
        f"linear; 4 channels) trained {args.epochs} epochs on digits 8x8 ({train_s:.0f} s, not counted). "
        f"{args.points} test digits, L-inf radius {args.eps} in [0, 1]; certified |A_t - B_t| on the true label; "
        "found: the search (10 x 100) on the same regions.",
        "",
        "| B | test accuracy A / B | method | median certified | time (s) | median found | median certified/found |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, acc, method, med, t, f, ratio in rows:
        lines.append(f"| {name} | {acc[0]:.3f} / {acc[1]:.3f} | {method} | {med:.3g} | {t:.1f} | {f:.3g} | "
                     f"{ratio:.2f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        suites.write_section("bench_residual", text, sys.argv if argv is None else ["bench_residual.py", *argv])


if __name__ == "__main__":
    main()
