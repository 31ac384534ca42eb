"""``modeldiff`` command line: thin click commands that parse, call the library and print."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from modeldiff.errors import ModelDiffError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DIVERGENCE_CHOICE = click.Choice(["delta", "linf", "l1", "l2", "kl", "tv", "top1"])
METHOD_CHOICE = click.Choice(["auto", "ibp", "crown", "alpha-crown", "diff"])
OPTIMIZER_CHOICE = click.Choice(["auto", "apgd", "random", "square"])


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


def _atomic_write(path: str, write: Any) -> None:
    """Write ``path`` through ``write(tmp_path)`` and rename: nothing half-written is left on failure."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json_atomic(payload: dict, path: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))


def _save_atomic(obj: Any, path: str) -> None:
    import torch

    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _setup(model_a, model_b, arch, arch_b, trust_pickle, data, eps, box, domain, limit, divergence, output_index,
           labels, dtype, device):
    """Load both models, build the region and the per-region output index: ``(a, b, region, index, dtype)``."""
    from modeldiff.bounds import resolve_dtype
    from modeldiff.graph import resolve_device
    from modeldiff.regions import load_labels

    dt = resolve_dtype(dtype)
    resolve_device(device)
    if output_index is not None and labels is not None:
        raise click.UsageError("give at most one of --output-index and --labels")
    if (output_index is not None or labels is not None) and divergence != "delta":
        raise click.UsageError("--output-index and --labels apply to --divergence delta only")
    a, b = _load_pair(model_a, model_b, arch, arch_b, trust_pickle, dt)
    region = _build_region(data, eps, box, domain, limit, a, b, dt)
    index = output_index if labels is None else load_labels(labels)[: len(region)]
    return a, b, region, index, dt


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
    default="auto",
    show_default=True,
    help="Bound method: ibp, crown, alpha-crown (auto_LiRPA on the composed graph), diff (differential bound "
    "for same-architecture ReLU pairs) or auto (diff where it applies, else crown).",
)
@click.option("--output-index", type=int, help="For --divergence delta: the output to bound (default: all).")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="For --divergence delta: one output index per region (e.g. true labels) in a .pt/.npy file.",
)
@click.option("--alpha-iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="Optimisation steps of alpha-CROWN.")
@click.option("--search/--no-search", "run_search", default=True, show_default=True,
              help="Also run a short disagreement search: shows what was found and the gap certified/found.")
@click.option("--restarts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Search restarts per region.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Search steps per restart.")
@click.option("--witnesses", type=click.Path(dir_okay=False),
              help="Save the search's witnesses (and values) to this .pt file.")
@click.option("--bab", is_flag=True,
              help="Tighten each region's bound by branch and bound (see --split).")
@click.option("--split", "bab_split", type=click.Choice(["auto", "input", "relu"]), default="auto",
              show_default=True,
              help="With --bab: split the input box (input: for few free input entries), the signs of unstable "
                   "hidden neurons (relu: method diff, divergences delta and linf), or choose per region (auto).")
@click.option("--threshold", type=float,
              help="With --bab: stop a region once its bound is below this (proven) or a witness reaches it.")
@click.option("--bab-time", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="With --bab: time budget per region in seconds.")
@click.option("--bab-nodes", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="With --bab: node budget per region.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --bab: regions bounded side by side in this many worker processes (one thread each).")
@_model_options
@_compute_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON object to this file.")
def bound_cmd(
    model_a, model_b, data, eps, box, domain, limit, divergence, method, output_index, labels, alpha_iterations,
    run_search, restarts, steps, witnesses, bab, bab_split, threshold, bab_time, bab_nodes, jobs,
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

    if threshold is not None and not bab:
        raise click.UsageError("--threshold applies to --bab")
    if jobs > 1 and not bab:
        raise click.UsageError("--jobs applies to --bab")
    if bab_split != "auto" and not bab:
        raise click.UsageError("--split applies to --bab")
    if witnesses and not (run_search or bab):
        raise click.UsageError("--witnesses needs the search (drop --no-search) or --bab")
    torch.manual_seed(seed)
    a, b, region, index, dt = _setup(model_a, model_b, arch, arch_b, trust_pickle, data, eps, box, domain, limit,
                                     divergence, output_index, labels, dtype, device)
    show_progress = progress if progress is not None else len(region) > 64
    result = modeldiff.bound(
        a, b, region, divergence=divergence, method=method, output_index=index, dtype=dt, device=device,
        batch_size=batch_size, alpha_iterations=alpha_iterations, progress=show_progress,
    )
    certified = result.upper.clone()
    found = found_x = None
    search_s = bab_s = None
    if run_search:
        found_res = modeldiff.search(
            a, b, region, divergence, output_index=result.output_index, restarts=restarts, steps=steps, seed=seed,
            dtype=dt, device=device, progress=show_progress,
        )
        found, found_x = found_res.found.clone(), found_res.witnesses.clone()
        search_s = found_res.time_s
    bab_results = None
    if bab:
        from modeldiff.bounds import refine

        t0 = time.perf_counter()
        bab_results = refine(
            a, b, region, divergence, result.method, output_index=result.output_index, threshold=threshold,
            time_budget_s=bab_time, max_nodes=bab_nodes, dtype=dt, device=device, seed=seed,
            progress=show_progress, witnesses=found_x, workers=jobs, split=bab_split,
        )
        bab_s = time.perf_counter() - t0
        certified = torch.minimum(certified, torch.tensor([r.upper for r in bab_results], dtype=certified.dtype))
        lows = torch.tensor([r.lower for r in bab_results], dtype=certified.dtype)
        if found is None:
            found, found_x = lows, torch.stack([r.witness.cpu() for r in bab_results])
        else:
            better = lows > found
            found = torch.where(better, lows, found)
            found_x[better] = torch.stack([r.witness.cpu() for r in bab_results])[better].to(found_x.dtype)
    rows = result.to_dict()["regions"]
    for i, row in enumerate(rows):
        row["certified"] = float(certified[i])
        if found is not None:
            row["found"] = float(found[i])
            row["gap_ratio"] = _gap(float(certified[i]), float(found[i]))
        if bab_results is not None:
            row["bab"] = {k: v for k, v in bab_results[i].to_dict().items() if k != "witness"}
    payload = {
        "modeldiff_version": modeldiff.__version__,
        "model_a": str(model_a),
        "model_b": str(model_b),
        "settings": {
            "divergence": divergence, "method": method, "method_used": result.method, "eps": eps, "box": box,
            "data": data, "domain": list(domain) if domain else None, "dtype": dtype, "device": device,
            "seed": seed, "alpha_iterations": alpha_iterations, "output_index": output_index, "labels": labels,
            "search": {"restarts": restarts, "steps": steps} if run_search else None,
            "bab": {"threshold": threshold, "time_s": bab_time, "nodes": bab_nodes, "jobs": jobs,
                    "split": bab_split} if bab else None,
        },
        "region": region.to_dict(),
        "time_s": result.time_s,
        "search_time_s": search_s,
        "bab_time_s": bab_s,
        "witnesses": witnesses if (witnesses and found_x is not None) else None,
        "regions": rows,
    }
    if witnesses and found_x is not None:
        _save_atomic({"witnesses": found_x, "found": found, "divergence": divergence}, witnesses)
    if out:
        _write_json_atomic(payload, out)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(_bound_table(result, rows))
    times = f"bound {result.time_s:.2f} s"
    if search_s is not None:
        times += f", search {search_s:.2f} s"
    if bab_s is not None:
        times += f", branch and bound {bab_s:.2f} s"
    click.echo(f"\n{len(result)} region(s), {divergence}, {result.method}, {dtype}: {times}")


def _gap(certified: float, found: float) -> float | None:
    """certified / found, the factor by which the certificate may overstate the worst case (None if found = 0)."""
    if found > 0:
        return certified / found
    return 1.0 if certified == 0 else None


def _bound_table(result, records: list[dict]) -> str:
    rows = []
    for r in records:
        row = {"index": r["index"], "certified": r["certified"], "found": r.get("found"), "gap": r.get("gap_ratio")}
        if "delta_interval" in r:
            row["output"] = r["output_index"]
            row["delta_lo"], row["delta_hi"] = r["delta_interval"]
        if "agree_label" in r:
            row["label"] = r["agree_label"]
            row["agreement"] = "proven" if r["certified"] == 0 else "not proven"
        if "bab" in r:
            row["bab"] = r["bab"]["status"]
        rows.append(row)
        if "delta_lower" in r:
            for t, (lo, hi) in enumerate(zip(r["delta_lower"], r["delta_upper"])):
                rows.append({"index": "", "output": t, "delta_lo": lo, "delta_hi": hi})
    columns = [("index", "region")]
    if any("found" in r for r in records):
        columns += [("found", "found"), ("certified", "certified"), ("gap", "certified/found")]
    else:
        columns += [("certified", "certified")]
    if result.divergence == "delta":
        columns += [("output", "output"), ("delta_lo", "delta lo"), ("delta_hi", "delta hi")]
    if result.divergence == "top1":
        columns += [("label", "label"), ("agreement", "agreement")]
    if any("bab" in r for r in records):
        columns += [("bab", "branch and bound")]
    return _table(rows, columns)


# --- search --------------------------------------------------------------------------------------------------


@cli.command("search", cls=_Command, context_settings=CONTEXT)
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@_region_options
@click.option("--divergence", type=DIVERGENCE_CHOICE, default="linf", show_default=True,
              help="What to maximise (top1: find inputs where the labels differ).")
@click.option("--output-index", type=int, help="For --divergence delta: the output to maximise |A-B| of.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="For --divergence delta: one output index per region in a .pt/.npy file.")
@click.option("--restarts", type=click.IntRange(min=1), default=10, show_default=True, help="Restarts per region.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Steps per restart.")
@click.option("--optimizer", type=OPTIMIZER_CHOICE, default="auto", show_default=True,
              help="apgd (gradient), random or square (gradient-free), or auto (apgd; gradient-free when "
              "gradients vanish).")
@click.option("--explore", type=click.IntRange(min=0), default=15, show_default=True,
              help="Short exploratory runs per restart before APGD refines the best (0: none; not in global mode).")
@click.option("--time-budget", type=click.FloatRange(min=0), help="Stop after this many seconds (keeps the best).")
@click.option("--out", type=click.Path(dir_okay=False), help="Save witnesses, values and settings to this .pt file.")
@_model_options
@_compute_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def search_cmd(
    model_a, model_b, data, eps, box, domain, limit, divergence, output_index, labels, restarts, steps, optimizer,
    explore, time_budget, out, arch, arch_b, trust_pickle, device, dtype, seed, batch_size, progress, as_json,
):
    """Search each region for inputs where MODEL_A and MODEL_B differ most ("contrastive dreaming").

    Every value reported is recomputed on its witness by a plain forward pass of both models: a true lower bound
    of the region's worst case. Ctrl-C stops the search and reports what was found so far.

    \b
    Example:
      modeldiff search a.pt b.pt --arch pkg.mod:make --data points.pt --eps 0.03 --divergence top1 --out w.pt
    """
    import modeldiff

    a, b, region, index, dt = _setup(model_a, model_b, arch, arch_b, trust_pickle, data, eps, box, domain, limit,
                                     divergence, output_index, labels, dtype, device)
    show_progress = progress if progress is not None else len(region) > 64
    result = modeldiff.search(
        a, b, region, divergence, output_index=index, restarts=restarts, steps=steps, optimizer=optimizer,
        time_budget_s=time_budget, seed=seed, dtype=dt, device=device, batch_size=batch_size,
        progress=show_progress, explore=explore,
    )
    payload = {
        "modeldiff_version": modeldiff.__version__,
        "model_a": str(model_a),
        "model_b": str(model_b),
        "region": region.to_dict(),
        "witnesses": out,
        **result.to_dict(),
    }
    if out:
        _save_atomic({"witnesses": result.witnesses, "found": result.found, "history": result.history,
                      "history_steps": result.history_steps, "settings": payload}, out)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    rows = [{"index": i, "found": float(result.found[i])} for i in range(len(result))]
    click.echo(_table(rows, [("index", "region"), ("found", f"found {divergence}")]))
    note = " (interrupted: best so far)" if result.interrupted else ""
    click.echo(f"\n{len(result)} region(s), {divergence}, {result.optimizer}, {result.restarts}x{result.steps}: "
               f"{result.time_s:.2f} s{note}")


# --- demo ----------------------------------------------------------------------------------------------------


@cli.command("demo", cls=_Command, context_settings=CONTEXT)
@click.option("--points", type=click.IntRange(min=1), default=20, show_default=True, help="Test digits to use.")
@click.option("--eps", type=float, default=0.01, show_default=True, help="L-inf radius around each digit.")
@click.option("--method", type=METHOD_CHOICE, multiple=True, help="Methods to compare (default: ibp, crown, diff).")
def demo_cmd(points: int, eps: float, method: tuple[str, ...]):
    """Compare the bundled digits MLP with its float16, fine-tuned and pruned copies over eps-balls around test
    digits: what a search finds, what each bound method certifies (medians over the points), and how often
    label agreement is proven."""
    import torch

    import modeldiff
    from modeldiff import regions, zoo

    methods = method or ("ibp", "crown", "diff")
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
        found = modeldiff.search(base, cand, region, "linf", restarts=5, steps=50, seed=0).found
        for m in methods:
            lin = modeldiff.bound(base, cand, region, "linf", m)
            top = modeldiff.bound(base, cand, region, "top1", m)
            rows.append({
                "pair": f"base vs {name}", "method": m, "found": float(found.median()),
                "linf_median": float(lin.upper.median()), "gap": float((lin.upper / found).median()),
                "agree": f"{int((top.upper == 0).sum())}/{points}", "clean_flips": flips,
                "time": f"{lin.time_s + top.time_s:.2f}s",
            })
    click.echo(_table(rows, [
        ("pair", "pair"), ("method", "method"), ("found", "found linf"), ("linf_median", "certified linf"),
        ("gap", "certified/found"), ("agree", "label agreement proven"), ("clean_flips", "flips at centers"),
        ("time", "time"),
    ]))
    click.echo("\nmedians over the digits. found: largest |A(x)_i - B(x)_i| a search reached in each ball (reachable);"
               "\ncertified: sound upper bound of it over the whole ball; diff: the differential bound.")
# the report, drift and stability commands live in their own modules, which add themselves to ``cli``
for _name in ("report_cmd", "track_cmd"):
    importlib.import_module(f"modeldiff.cli.{_name}")
