"""``modeldiff`` command line: thin click commands that parse, call the library and print."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from modeldiff.errors import ModelDiffError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DIVERGENCE_CHOICE = click.Choice(["delta", "linf", "l1", "l2", "kl", "tv", "top1"])
METHOD_CHOICE = click.Choice(["ibp", "crown", "alpha-crown"])


class _Command(click.Command):
    """Every ModelDiffError (and a missing file) becomes a one-line error and exit code 2, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelDiffError as exc:
            raise click.ClickException(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


click.ClickException.exit_code = 2


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="modeldiff")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
def cli(verbose: int) -> None:
    """Compare two models: certify how far apart they can be over input regions, and find where they differ."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr)


# --- shared option groups ------------------------------------------------------------------------------------


def _model_options(f):
    f = click.option(
        "--trust-pickle",
        is_flag=True,
        help="Allow .pt/.pth files holding a whole pickled module. Loading such a file runs code from it.",
    )(f)
    f = click.option(
        "--arch-b",
        metavar="MODULE:FACTORY",
        help="Constructor for MODEL_B's state_dict, if it differs from --arch.",
    )(f)
    f = click.option(
        "--arch",
        metavar="MODULE:FACTORY",
        help="Import path of a function returning the nn.Module a state_dict file belongs to "
        "(e.g. modeldiff.zoo:digits_mlp).",
    )(f)
    return f


def _region_options(f):
    options = [
        click.option(
            "--data",
            type=click.Path(dir_okay=False),
            help="Centers of L-inf balls: a tensor [N, ...] in a .pt file (or a dict with key x) or a .npy file.",
        ),
        click.option("--eps", type=float, help="Radius of the L-inf ball around each center (with --data)."),
        click.option(
            "--box",
            type=click.Path(dir_okay=False),
            help="A VNN-LIB file; its input box (or boxes) is the region. Output constraints are ignored.",
        ),
        click.option(
            "--domain",
            type=float,
            nargs=2,
            metavar="LO HI",
            help="Clip every region to [LO, HI] per input (e.g. 0 1 for pixels). Models loaded from .nnet "
            "files are always clipped to their declared input range.",
        ),
        click.option("--limit", type=int, help="Use only the first N regions."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _compute_options(f):
    options = [
        click.option(
            "--device", default="cpu", show_default=True, help="torch device to compute on (cpu, cuda, cuda:1)."
        ),
        click.option(
            "--dtype",
            type=click.Choice(["float64", "float32"]),
            default="float64",
            show_default=True,
            help="Floating type of the computation. float64 keeps certificates sound when outputs are large.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Regions per batch."
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            help="Show a progress bar on stderr (default: when there are more than 64 regions).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _load_pair(model_a: str, model_b: str, arch: str | None, arch_b: str | None, trust_pickle: bool, dtype):
    from modeldiff.loading import load_model

    a = load_model(model_a, arch=arch, trust_pickle=trust_pickle, dtype=dtype)
    b = load_model(model_b, arch=arch_b or arch, trust_pickle=trust_pickle, dtype=dtype)
    return a, b


def _model_domain(a, b):
    """The intersection of the input ranges the models declare (.nnet files do), or None."""
    import torch

    los = [m.input_lower for m in (a, b) if getattr(m, "input_lower", None) is not None]
    his = [m.input_upper for m in (a, b) if getattr(m, "input_upper", None) is not None]
    if not los:
        return None
    lo = los[0] if len(los) == 1 else torch.maximum(los[0], los[1])
    hi = his[0] if len(his) == 1 else torch.minimum(his[0], his[1])
    return lo, hi


def _build_region(data, eps, box, domain, limit, a, b, dtype):
    from modeldiff import regions
    from modeldiff.errors import RegionError

    if (data is None) == (box is None):
        raise click.UsageError("give exactly one of --data (with --eps) or --box")
    model_domain = _model_domain(a, b)
    if box is not None:
        if eps is not None:
            raise click.UsageError("--eps applies to --data, not to --box")
        region = regions.from_vnnlib(box, dtype=dtype)
        if model_domain is not None:
            region = regions.box(region.lower, region.upper, domain=model_domain, description=region.description)
        if domain is not None:
            region = regions.box(region.lower, region.upper, domain=tuple(domain), description=region.description)
    else:
        if eps is None:
            raise click.UsageError("--data needs --eps")
        centers = regions.load_points(data).to(dtype)
        if limit is not None:
            centers = centers[:limit]
        region = regions.ball(centers, eps, domain=tuple(domain) if domain else None)
        if model_domain is not None:
            region = regions.box(region.lower, region.upper, domain=model_domain, description=region.description)
            region = regions.Region(region.lower, region.upper, centers=None, eps=eps, description=region.description)
    if limit is not None:
        if limit < 1:
            raise RegionError(f"--limit must be >= 1, got {limit}")
        region = region[:limit]
    return region


def _write_json_atomic(payload: dict, path: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[_fmt(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (_, h), w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


# --- bound ---------------------------------------------------------------------------------------------------


@cli.command("bound", cls=_Command, context_settings=CONTEXT)
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@_region_options
@click.option(
    "--divergence",
    type=DIVERGENCE_CHOICE,
    default="linf",
    show_default=True,
    help="What to bound: delta (A-B per output), linf/l1/l2 (output distance), kl, tv (of the softmax "
    "distributions), top1 (certify that the labels agree).",
)
@click.option(
    "--method",
    type=METHOD_CHOICE,
    default="crown",
    show_default=True,
    help="Bound propagation method (auto_LiRPA on the composed graph).",
)
@click.option("--output-index", type=int, help="For --divergence delta: the output to bound (default: all).")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="For --divergence delta: one output index per region (e.g. true labels) in a .pt/.npy file.",
)
@click.option("--alpha-iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="Optimisation steps of alpha-CROWN.")
@_model_options
@_compute_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON object to this file.")
def bound_cmd(
    model_a, model_b, data, eps, box, domain, limit, divergence, method, output_index, labels, alpha_iterations,
    arch, arch_b, trust_pickle, device, dtype, seed, batch_size, progress, as_json, out,
):
    """Certify an upper bound on how far MODEL_A and MODEL_B can differ over each input region.

    MODEL_A and MODEL_B are .pt/.pth (state_dict with --arch, or a pickled module with --trust-pickle),
    .pt2 (torch.export), .onnx, .nnet or TorchScript files. The region is an L-inf ball of radius --eps around
    each point of --data, or the input box of a VNN-LIB file (--box).

    \b
    Examples:
      modeldiff bound a.pt b.pt --arch pkg.mod:make --data points.pt --eps 0.01 --divergence linf
      modeldiff bound a.nnet b.nnet --box prop_1.vnnlib --divergence delta --json
    """
    import torch

    import modeldiff
    from modeldiff.bounds import resolve_dtype
    from modeldiff.regions import load_labels

    torch.manual_seed(seed)
    dt = resolve_dtype(dtype)
    if output_index is not None and labels is not None:
        raise click.UsageError("give at most one of --output-index and --labels")
    if (output_index is not None or labels is not None) and divergence != "delta":
        raise click.UsageError("--output-index and --labels apply to --divergence delta only")
    a, b = _load_pair(model_a, model_b, arch, arch_b, trust_pickle, dt)
    region = _build_region(data, eps, box, domain, limit, a, b, dt)
    index = output_index
    if labels is not None:
        index = load_labels(labels)[: len(region)]
    show_progress = progress if progress is not None else len(region) > 64
    result = modeldiff.bound(
        a, b, region, divergence=divergence, method=method, output_index=index, dtype=dt, device=device,
        batch_size=batch_size, alpha_iterations=alpha_iterations, progress=show_progress,
    )
    payload = {
        "modeldiff_version": modeldiff.__version__,
        "model_a": str(model_a),
        "model_b": str(model_b),
        "settings": {
            "divergence": divergence, "method": method, "eps": eps, "box": box, "data": data,
            "domain": list(domain) if domain else None, "dtype": dtype, "device": device, "seed": seed,
            "alpha_iterations": alpha_iterations, "output_index": output_index, "labels": labels,
        },
        "region": region.to_dict(),
        "time_s": result.time_s,
        "regions": result.to_dict()["regions"],
    }
    if out:
        _write_json_atomic(payload, out)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(_bound_table(result))
    click.echo(f"\n{len(result)} region(s), {divergence}, {method}, {dtype}: {result.time_s:.2f} s")


def _bound_table(result) -> str:
    rows = []
    for i in range(len(result)):
        r = result.region_dict(i)
        row = {"index": i, "certified": r["certified"]}
        if "delta_interval" in r:
            row["output"] = r["output_index"]
            row["delta_lo"], row["delta_hi"] = r["delta_interval"]
        if "agree_label" in r:
            row["label"] = r["agree_label"]
            row["agreement"] = "proven" if r["agreement_certified"] else "not proven"
        rows.append(row)
        if "delta_lower" in r:
            for t, (lo, hi) in enumerate(zip(r["delta_lower"], r["delta_upper"])):
                rows.append({"index": "", "output": t, "delta_lo": lo, "delta_hi": hi})
    columns = [("index", "region"), ("certified", "certified")]
    if result.divergence == "delta":
        columns += [("output", "output"), ("delta_lo", "delta lo"), ("delta_hi", "delta hi")]
    if result.divergence == "top1":
        columns += [("label", "label"), ("agreement", "agreement")]
    return _table(rows, columns)


# --- demo ----------------------------------------------------------------------------------------------------


@cli.command("demo", cls=_Command, context_settings=CONTEXT)
@click.option("--points", type=click.IntRange(min=1), default=20, show_default=True, help="Test digits to use.")
@click.option("--eps", type=float, default=0.01, show_default=True, help="L-inf radius around each digit.")
@click.option("--method", type=METHOD_CHOICE, multiple=True, help="Methods to compare (default: ibp, crown).")
def demo_cmd(points: int, eps: float, method: tuple[str, ...]):
    """Compare the bundled digits MLP with its float16, fine-tuned and pruned copies over eps-balls around test
    digits, and print a table of certified bounds (median and max over the points)."""
    import torch

    import modeldiff
    from modeldiff import regions, zoo

    methods = method or ("ibp", "crown")
    base = zoo.load("digits_mlp")
    x, y = zoo.digits_test()
    region = regions.ball(x[:points], eps, domain=(0.0, 1.0))
    candidates = {
        "float16": zoo.float16_copy(base),
        "finetuned": zoo.load("digits_mlp_finetuned"),
        "pruned": zoo.load("digits_mlp_pruned"),
    }
    click.echo(f"digits MLP (64-32-32-10) vs three variants, {points} test digits, L-inf eps={eps}, float64\n")
    rows = []
    for name, cand in candidates.items():
        with torch.no_grad():
            flips = int((base(x[:points]).argmax(1) != cand(x[:points]).argmax(1)).sum())
        for m in methods:
            lin = modeldiff.bound(base, cand, region, "linf", m)
            top = modeldiff.bound(base, cand, region, "top1", m)
            rows.append({
                "pair": f"base vs {name}", "method": m,
                "linf_median": float(lin.upper.median()), "linf_max": float(lin.upper.max()),
                "agree": f"{int((top.upper == 0).sum())}/{points}", "clean_flips": flips,
                "time": f"{lin.time_s + top.time_s:.2f}s",
            })
    click.echo(_table(rows, [
        ("pair", "pair"), ("method", "method"), ("linf_median", "certified linf (median)"),
        ("linf_max", "(max)"), ("agree", "label agreement proven"), ("clean_flips", "flips at centers"),
        ("time", "time"),
    ]))
    click.echo("\ncertified linf: sound upper bound of max_i |A(x)_i - B(x)_i| over each ball (logits).")
