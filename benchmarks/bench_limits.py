"""Where the differential bound's looseness sits on MNIST 3x100 p=3, HAR and ACAS Xu: why the targets are missed.

Three measurements, both about the bound of ``|A(x)_t - B(x)_t|`` (t: the true label) that ``diff`` certifies:

1. **MNIST p=3: better intermediate bounds would not be enough.** The bound's back-substitution relaxes every
   unstable ReLU using bounds on its pre-activation ``z_A``. Those bounds come from CROWN; exact ones would be
   tighter. Here ``z_A`` of every hidden layer after the first (the first is exact: linear in the input) is replaced
   by the range that projected gradient ascent/descent on each neuron reaches (a subset of the true range, so at
   least as tight as exact bounds: an *unsound* stand-in used only to measure), ``z_B`` by ``z_A - delta``, and the
   final bound is recomputed with the same relaxations. Its median is roughly the best any method that only
   tightens intermediate bounds (alpha-CROWN, LP, intermediate-layer splits) could certify.
2. **HAR: the relaxation slack is spread over many neurons.** HAR has one hidden layer, so the intermediate bounds
   are exact and all the looseness is in the relaxation of the 500 hidden ReLUs. At the input corner that attains
   the bound, each unstable neuron's share of ``bound - true value there`` is computed; the table gives how many
   neurons carry half and 80% of it. Branch and bound on ReLUs removes one neuron's slack per split, so halving
   the bound needs every branch to split about as many neurons as carry half of the slack.
3. **ACAS Xu, the pairs input-split branch and bound leaves open at eps 0.05: the intermediate bounds blow up with
   depth on large boxes.** On the property box and on sub-boxes of an eighth of its width per dimension (random
   positions, seed 0), per hidden layer: the mean width of ``z_A`` and of ``delta`` as back-substitution bounds
   them, next to the range that 200,000 uniform points and the box's corners reach (an inner estimate of the exact
   range); and the final bound of ``|A_t - B_t|`` with the back-substituted intermediate bounds and with the
   sampled ranges (unsound, used only to measure). Written to its own section, ``bench_limits_acas``.

Usage::

    python benchmarks/bench_limits.py                 # MNIST: first 20 images, HAR: all 100 regions
    python benchmarks/bench_limits.py --mnist 5 --har 10 --no-write
    python benchmarks/bench_limits.py --mnist 0 --har 0 --acas prop7/1_9 prop8/2_9   # the ACAS section only
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import suites  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from modeldiff.bounds.diff import DiffBounder, _LayerBounds, _relax  # noqa: E402  (internals, for measuring)
from modeldiff.graph import prepare_model  # noqa: E402


def _pair(job: suites.Job):
    a, b = prepare_model(job.a, torch.float64), prepare_model(job.b, torch.float64)
    lo, hi = job.region.lower.to(torch.float64).flatten(1), job.region.upper.to(torch.float64).flatten(1)
    return DiffBounder(a, b, tuple(lo.shape[1:])), lo, hi


def _label_bound(bd: DiffBounder, lo: torch.Tensor, hi: torch.Tensor, target: torch.Tensor, bounds) -> torch.Tensor:
    """``[N]`` certified ``|A_t - B_t|`` with the given intermediate bounds."""
    n = lo.shape[0]
    spec = torch.zeros(n, 2, bd.n_outputs, dtype=lo.dtype)
    spec[torch.arange(n), 0, target] = 1.0
    spec[torch.arange(n), 1, target] = -1.0
    return bd.bound_spec(lo, hi, spec, bounds=bounds).amax(dim=1)


def _pre_activations(layers, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's pre-activation ``[m, n_k]`` for rows ``x`` of a dense ReLU chain ``layers``."""
    z, out = x, []
    for layer in layers:
        z = z @ layer.weight.T + layer.bias
        out.append(z)
        z = z.relu()
    return out


def _pgd_range(bd: DiffBounder, k: int, lo: torch.Tensor, hi: torch.Tensor, steps: int, restarts: int, gen):
    """Per neuron of hidden layer ``k``: ``(min, max)`` of ``z_A`` reached by signed-gradient ascent/descent from
    random starts in the box ``[n_in]`` (an inner estimate of its range)."""
    n = bd.layers_a[k].weight.shape[0]
    sign = torch.cat([torch.ones(n), -torch.ones(n)]).to(lo.dtype)
    rows = torch.arange(2 * n)
    cols = torch.cat([torch.arange(n), torch.arange(n)])
    best = torch.full((2 * n,), -float("inf"), dtype=lo.dtype)
    for _ in range(restarts):
        x = lo + (hi - lo) * torch.rand(2 * n, lo.shape[0], dtype=lo.dtype, generator=gen)
        for s in range(steps):
            x.requires_grad_(True)
            obj = sign * _pre_activations(bd.layers_a, x)[k][rows, cols]
            (g,) = torch.autograd.grad(obj.sum(), x)
            with torch.no_grad():
                best = torch.maximum(best, obj)
                x = torch.minimum(torch.maximum(x + (hi - lo) / 4 * 0.97 ** s * g.sign(), lo), hi)
        with torch.no_grad():
            best = torch.maximum(best, sign * _pre_activations(bd.layers_a, x)[k][rows, cols])
    return -best[n:], best[:n]


def mnist_intermediate(limit: int, steps: int = 200, restarts: int = 2) -> dict:
    job = suites.mnist("p3", limit)
    bd, lo, hi = _pair(job)
    crown = bd.intermediate_bounds(lo, hi)
    gen = torch.Generator().manual_seed(0)
    inner = []
    for k, cb in enumerate(crown):
        if k == 0:  # exact already
            inner.append(cb)
            continue
        ranges = [_pgd_range(bd, k, lo[i], hi[i], steps, restarts, gen) for i in range(lo.shape[0])]
        la = torch.stack([r[0] for r in ranges])
        ua = torch.stack([r[1] for r in ranges])
        b = _LayerBounds(la, ua, la - cb.ud, ua - cb.ld, cb.ld, cb.ud)
        _relax(b)
        inner.append(b)
    unstable = [float(((b.la < 0) & (b.ua > 0)).sum(dim=1).double().mean()) for b in crown]
    unstable_inner = [float(((b.la < 0) & (b.ua > 0)).sum(dim=1).double().mean()) for b in inner]
    return {
        "regions": lo.shape[0],
        "crown": float(_label_bound(bd, lo, hi, job.target, crown).median()),
        "inner": float(_label_bound(bd, lo, hi, job.target, inner).median()),
        "unstable": unstable,
        "unstable_inner": unstable_inner,
    }


def har_slack(limit: int | None) -> dict:
    job = suites.har(limit)
    bd, lo, hi = _pair(job)
    if len(bd.layers_a) != 2:
        raise SystemExit("expected HAR to have one hidden layer")
    bounds = bd.intermediate_bounds(lo, hi)
    b0 = bounds[0]
    n = lo.shape[0]
    half, most, unstable, share = [], [], [], []
    for sgn in (1.0, -1.0):
        spec = torch.zeros(n, 1, bd.n_outputs, dtype=lo.dtype)
        spec[torch.arange(n), 0, job.target] = sgn
        coef, const = bd.linear_bound(lo, hi, spec, bounds)
        x = torch.where(coef[:, 0] > 0, hi, lo)  # the corner attaining the linear bound
        za = x @ bd.layers_a[0].weight.T + bd.layers_a[0].bias
        zb = x @ bd.layers_b[0].weight.T + bd.layers_b[0].bias
        q = sgn * bd.layers_b[1].weight[job.target]  # multiplier of d = relu(z_A) - relu(z_B)
        p = sgn * bd.dw[1][job.target]  # multiplier of h_A = relu(z_A)
        uz, ud, uc, lz, ld, lc = b0.relax_d
        plane = torch.where(q > 0, uz * za + ud * (za - zb) + uc, lz * za + ld * (za - zb) + lc)
        up_s, up_b, lo_s = b0.relax_a
        tri = torch.where(p > 0, up_s * za + up_b, lo_s * za)
        slack = q * (plane - (za.relu() - zb.relu())) + p * (tri - za.relu())  # [N, 500], >= 0 up to rounding
        total = slack.sum(dim=1)
        ordered = slack.sort(dim=1, descending=True).values.cumsum(dim=1) / total.unsqueeze(1)
        half += ((ordered < 0.5).sum(dim=1) + 1).tolist()
        most += ((ordered < 0.8).sum(dim=1) + 1).tolist()
        unstable += (((b0.la < 0) & (b0.ua > 0)) | ((b0.lb < 0) & (b0.ub > 0))).sum(dim=1).tolist()
        bound = (coef[:, 0] * x).sum(dim=1) + const[:, 0]
        share += (total / bound.clamp_min(1e-300)).tolist()
    return {"regions": n, "half": statistics.median(half), "most": statistics.median(most),
            "unstable": statistics.median(unstable), "slack_share": statistics.median(share)}


def _sampled_bounds(bd: DiffBounder, lo: torch.Tensor, hi: torch.Tensor, samples: int, gen) -> list:
    """Per hidden layer, the ranges of ``z_A``, ``z_B`` and ``delta`` over ``samples`` uniform points of the box
    ``[1, n_in]`` and its corners (an inner estimate of the exact ranges), with their relaxations."""
    n_in = lo.shape[1]
    x = lo + (hi - lo) * torch.rand(samples, n_in, dtype=lo.dtype, generator=gen)
    if n_in <= 12:
        corners = torch.cartesian_prod(*[torch.stack([lo[0, d], hi[0, d]]) for d in range(n_in)]).view(-1, n_in)
        x = torch.cat([x, corners])
    out = []
    hidden = zip(_pre_activations(bd.layers_a[:-1], x), _pre_activations(bd.layers_b[:-1], x))
    for k, (za, zb) in enumerate(hidden):
        d = za - zb
        b = _LayerBounds(*(t.unsqueeze(0) for t in (za.amin(0), za.amax(0), zb.amin(0), zb.amax(0), d.amin(0),
                                                     d.amax(0))))
        _relax(b, bd.identity[k])
        out.append(b)
    return out


def acas_intermediate(names: list[str], sub_boxes: int = 3, samples: int = 200_000) -> dict:
    jobs = {j.name: j for j in suites.acas()}
    rows = []
    for name in names:
        job = jobs[name]
        bd, lo, hi = _pair(job)
        gen = torch.Generator().manual_seed(0)
        target = job.target[:1]
        boxes = [("property box", lo, hi)]
        for i in range(sub_boxes):
            corner = lo + (hi - lo) * 0.875 * torch.rand(lo.shape, dtype=lo.dtype, generator=gen)
            boxes.append((f"1/8 sub-box {i + 1}", corner, corner + (hi - lo) / 8))
        for label, bl, bh in boxes:
            crown = bd.intermediate_bounds(bl, bh)
            inner = _sampled_bounds(bd, bl, bh, samples, gen)
            rows.append({
                "pair": name, "box": label,
                "za": [(float((c.ua - c.la).mean()), float((s.ua - s.la).mean())) for c, s in zip(crown, inner)],
                "delta": [(float((c.ud - c.ld).mean()), float((s.ud - s.ld).mean())) for c, s in zip(crown, inner)],
                "crown": float(_label_bound(bd, bl, bh, target, crown)[0]),
                "inner": float(_label_bound(bd, bl, bh, target, inner)[0]),
            })
    return {"rows": rows}


def acas_table(a: dict, eps: float = 0.05) -> str:
    closed = [r for r in a["rows"] if r["inner"] < eps <= r["crown"]]
    out = [
        "## Where the looseness sits on ACAS Xu's open pairs (bench_limits_acas)", "",
        "ACAS Xu vs float16, the pairs that input-split branch and bound leaves open at eps 0.05 (`bench_acas`). Per "
        "box, per hidden layer: mean width of `z_A` and of `delta`, back-substituted (what `diff` uses) / sampled "
        "(200,000 uniform points and the corners: an inner estimate of the exact range); then the bound of "
        "`|A_t - B_t|` with each (the sampled one is unsound, a measure of what tighter intermediate bounds could "
        f"give). The blow-up compounds with depth: on {len(closed)} of the {len(a['rows'])} boxes the bound is at "
        f"least eps {eps:g} with the back-substituted ranges and below it with the sampled ones.",
        "",
        "| pair | box | `z_A` width per layer, back-substituted / sampled | `delta` width per layer, back-substituted "
        "/ sampled | bound, back-substituted | bound, sampled ranges |",
        "|---|---|---|---|---:|---:|",
    ]
    for r in a["rows"]:
        za = ", ".join(f"{c:.3g}/{s:.3g}" for c, s in r["za"])
        de = ", ".join(f"{c:.3g}/{s:.3g}" for c, s in r["delta"])
        out.append(f"| {r['pair']} | {r['box']} | {za} | {de} | {r['crown']:.3g} | {r['inner']:.3g} |")
    return "\n".join(out)


def table(m: dict | None, h: dict | None) -> str:
    out = ["## Where the looseness sits (bench_limits)", ""]
    if m is not None:
        out += [
            f"MNIST 3x100 vs float16, p=3, first {m['regions']} images: median certified label delta with the "
            "CROWN intermediate bounds the bound uses, and with every hidden layer's `z_A` range after the first "
            "replaced by what gradient ascent/descent on each neuron reaches (unsound, tighter than exact: an "
            "optimistic stand-in for perfect intermediate bounds). Target: 0.0012.",
            "",
            "| intermediate bounds | median certified label delta | unstable ReLUs per hidden layer (mean) |",
            "|---|---:|---|",
            f"| CROWN (what `diff` certifies) | {m['crown']:.5f} | {', '.join(f'{u:.1f}' for u in m['unstable'])} |",
            f"| inner estimate of the exact ranges | {m['inner']:.5f} | "
            f"{', '.join(f'{u:.1f}' for u in m['unstable_inner'])} |",
            "",
        ]
    if h is not None:
        out += [
            f"HAR vs float16, 0.1, {h['regions']} regions, both signs of the label delta (one hidden layer of 500: "
            "the intermediate bounds are exact). At the corner attaining each bound: the share of the bound that is "
            "relaxation slack, and how many neurons carry half and 80% of that slack (medians). Target: 0.00065 "
            "against our 0.00145 (about half of the bound must go).",
            "",
            "| unstable ReLUs | slack / bound | neurons carrying 50% of the slack | neurons carrying 80% |",
            "|---:|---:|---:|---:|",
            f"| {h['unstable']:.0f} | {h['slack_share']:.2f} | {h['half']:.0f} | {h['most']:.0f} |",
        ]
    return "\n".join(out).rstrip()


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", type=int, default=20, help="MNIST images (0: skip; default 20)")
    p.add_argument("--har", type=int, default=100, help="HAR regions (0: skip; default 100)")
    p.add_argument("--acas", nargs="*", default=["prop7/1_9", "prop8/2_9"], metavar="PAIR",
                   help="ACAS Xu pairs (default: prop7/1_9 prop8/2_9; none: skip)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv[1:])
    torch.set_num_threads(1)
    if args.mnist or args.har:
        m = mnist_intermediate(args.mnist) if args.mnist else None
        h = har_slack(args.har) if args.har else None
        text = table(m, h)
        print(text, flush=True)
        if not args.no_write:
            print("wrote", suites.write_section("bench_limits", text, argv))
    if args.acas:
        text = acas_table(acas_intermediate(args.acas))
        print(text, flush=True)
        if not args.no_write:
            print("wrote", suites.write_section("bench_limits_acas", text, argv))


if __name__ == "__main__":
    main(sys.argv)
