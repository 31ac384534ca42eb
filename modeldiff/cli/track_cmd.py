"""``modeldiff drift`` and ``modeldiff stability``: many models at once (thin click commands over
:mod:`modeldiff.track` and :mod:`modeldiff.report.track_report`).

The last lines of :mod:`modeldiff.cli.main` import this module and register its commands on ``cli``; import
``modeldiff.cli.main`` (not this module) first.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from modeldiff.cli.main import (
    CONTEXT,
    DIVERGENCE_CHOICE,
    METHOD_CHOICE,
    _build_region,
    _Command,
    cli,
    _compute_options,
    _region_options,
    _table,
)
from modeldiff.errors import ModelDiffError

__all__ = ["drift_cmd", "stability_cmd"]


def _track_options(f):
    options = [
        click.option("--divergence", type=DIVERGENCE_CHOICE, default="linf", show_default=True,
                     help="What to compare: linf/l1/l2 (output distance), kl, tv (of the softmax distributions), "
                     "delta (max over outputs of |A-B|), top1 (1 where the labels can differ)."),
        click.option("--method", type=METHOD_CHOICE, default="auto", show_default=True,
                     help="Bound method: auto (diff where it applies, else crown), ibp, crown, alpha-crown, diff."),
        click.option("--restarts", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Search restarts per region and pair."),
        click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True,
                     help="Search steps per restart."),
        click.option("--names", metavar="A,B,...",
                     help="Comma-separated model names for the report (default: the file names without suffix)."),
        click.option("--arch", metavar="MODULE:FACTORY",
                     help="Constructor of the nn.Module for .pt/.pth state_dict files (the same for all models)."),
        click.option("--trust-pickle", is_flag=True,
                     help="Allow .pt/.pth files holding a whole pickled module. Loading such a file runs code "
                     "from it."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _out_options(f):
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print the report's JSON object instead of the table.")(f)
    f = click.option("--out", required=True, type=click.Path(),
                     help="Report folder to write (index.html, PNGs, JSON); replaced if it holds an earlier "
                     "report of the same kind.")(f)
    return f


def _names(paths: tuple[str, ...], names: str | None) -> list[str]:
    if names is not None:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(paths):
            raise ModelDiffError(f"--names gives {len(given)} name(s) for {len(paths)} model(s)")
        return given
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    if len(set(paths)) == len(paths):
        return list(paths)
    return [f"{p}#{i}" for i, p in enumerate(paths)]


def _domain_of(models: list[Any]):
    """A stand-in with the intersection of the input ranges the models declare (.nnet files), for _build_region."""
    import torch

    lo = hi = None
    for m in models:
        mlo, mhi = getattr(m, "input_lower", None), getattr(m, "input_upper", None)
        if mlo is None or mhi is None:
            continue
        lo = mlo if lo is None else torch.maximum(lo, mlo)
        hi = mhi if hi is None else torch.minimum(hi, mhi)
    return SimpleNamespace(input_lower=lo, input_upper=hi)


def _prepare(models, names, data, eps, box, domain, limit, arch, trust_pickle, dtype, device, out, marker):
    """Check --out, load the models and build the region: ``(loaded, names, region, dtype)``."""
    from modeldiff.bounds import resolve_dtype
    from modeldiff.graph import resolve_device
    from modeldiff.loading import load_model
    from modeldiff.report.track_report import check_output_dir

    if len(models) < 2:
        raise ModelDiffError(f"expected at least 2 models, got {len(models)}")
    model_names = _names(models, names)
    check_output_dir(out, marker)
    dt = resolve_dtype(dtype)
    resolve_device(device)
    loaded = [load_model(p, arch=arch, trust_pickle=trust_pickle, dtype=dt) for p in models]
    stub = _domain_of(loaded)
    region = _build_region(data, eps, box, domain, limit, stub, stub, dt)
    return loaded, model_names, region, dt


def _provenance(paths, names, region, divergence, method, restarts, steps, seed, dtype, device, batch_size, data,
                eps, box, domain, limit):
    from modeldiff.report._output import provenance

    return provenance(
        dict(zip(names, paths)), region=region.to_dict(), divergence=divergence, method=method, restarts=restarts,
        steps=steps, seed=seed, dtype=dtype, device=device, batch_size=batch_size, data=data, eps=eps, box=box,
        domain=list(domain) if domain else None, limit=limit,
    )


def _g(v: Any) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.4g}"


# ------------------------------------------------------------------------------------------------------- drift


@cli.command("drift", cls=_Command, context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_region_options
@_track_options
@_compute_options
@_out_options
def drift_cmd(models, data, eps, box, domain, limit, divergence, method, restarts, steps, names, arch, trust_pickle,
              device, dtype, seed, batch_size, progress, out, as_json):
    """How a chain of model versions drifts: each of MODELS (in version order, at least 2) against the first and
    against its predecessor, over input regions.

    Per version: the divergence a search finds (reachable) and the one the bound certifies (a sound upper bound
    over each region), medians and maxima over regions, and the share of region centres where the top-1 labels
    differ. Writes a report folder (--out) with index.html, plots and drift.json.

    \b
    Example:
      modeldiff drift round0.onnx round1.onnx round2.onnx --data test.pt --eps 0.03 --out drift/
    """
    import torch

    from modeldiff.report.track_report import DRIFT_MARKER, write_drift
    from modeldiff.track import drift

    torch.manual_seed(seed)
    loaded, model_names, region, dt = _prepare(models, names, data, eps, box, domain, limit, arch, trust_pickle,
                                               dtype, device, out, DRIFT_MARKER)
    show_progress = progress if progress is not None else len(region) > 64
    result = drift(loaded, region, names=model_names, divergence=divergence, method=method, restarts=restarts,
                   steps=steps, seed=seed, dtype=dt, device=device, batch_size=batch_size, progress=show_progress)
    header = _provenance(models, model_names, region, divergence, method, restarts, steps, seed, dtype, device,
                         batch_size, data, eps, box, domain, limit)
    folder = write_drift(result, out, provenance=header)
    if as_json:
        click.echo((folder / DRIFT_MARKER).read_text(encoding="utf-8").rstrip())
        return
    click.echo(drift_table(result))
    methods = sorted(set(result.methods_vs_first) | set(result.methods_vs_previous))
    click.echo(f"\nmedians and maxima over {len(region)} region(s); {divergence}, bound {', '.join(methods)}, search "
               f"{restarts}x{steps}, {dtype}: {result.time_s:.1f} s")
    click.echo(f"report: {folder / 'index.html'}")


def drift_table(result) -> str:
    """The compact text table of a :class:`~modeldiff.track.DriftResult` (one row per version)."""
    rows = []
    for r in result.summary():
        rows.append({
            "version": f"{r['version']} {r['name']}",
            "f_first": _g(r["found_vs_first_median"]), "c_first": _g(r["certified_vs_first_median"]),
            "cmax_first": _g(r["certified_vs_first_max"]), "d_first": f"{100 * float(r['disagreement_vs_first']):.1f}%",
            "f_prev": _g(r["found_vs_previous_median"]), "c_prev": _g(r["certified_vs_previous_median"]),
            "cmax_prev": _g(r["certified_vs_previous_max"]),
            "d_prev": f"{100 * float(r['disagreement_vs_previous']):.1f}%",
        })
    first = result.names[0]
    return _table(rows, [
        ("version", "version"), ("f_first", f"found vs {first}"), ("c_first", "certified"),
        ("cmax_first", "max certified"), ("d_first", "labels differ"), ("f_prev", "found vs prev"),
        ("c_prev", "certified"), ("cmax_prev", "max certified"), ("d_prev", "labels differ"),
    ])


# --------------------------------------------------------------------------------------------------- stability


@cli.command("stability", cls=_Command, context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_region_options
@_track_options
@_compute_options
@_out_options
def stability_cmd(models, data, eps, box, domain, limit, divergence, method, restarts, steps, names, arch,
                  trust_pickle, device, dtype, seed, batch_size, progress, out, as_json):
    """How far apart MODELS meant to be interchangeable are (retrained seeds, bootstrap resamples; at least 2),
    pair by pair, over input regions.

    Every pair gets the divergence a search finds (reachable) and the one the bound certifies (a sound upper
    bound over each region). Prints the pairwise matrix (medians over regions), the spread, the medoid model
    (closest to the others) and the regions that differ most; writes a report folder (--out) with index.html,
    heatmaps and stability.json.

    \b
    Example:
      modeldiff stability seed*.onnx --data test.pt --eps 0.03 --out stability/
    """
    import torch

    from modeldiff.report.track_report import STABILITY_MARKER, write_stability
    from modeldiff.track import stability

    torch.manual_seed(seed)
    loaded, model_names, region, dt = _prepare(models, names, data, eps, box, domain, limit, arch, trust_pickle,
                                               dtype, device, out, STABILITY_MARKER)
    show_progress = progress if progress is not None else len(region) > 64
    result = stability(loaded, region, names=model_names, divergence=divergence, method=method, restarts=restarts,
                       steps=steps, seed=seed, dtype=dt, device=device, batch_size=batch_size,
                       progress=show_progress)
    header = _provenance(models, model_names, region, divergence, method, restarts, steps, seed, dtype, device,
                         batch_size, data, eps, box, domain, limit)
    folder = write_stability(result, out, provenance=header)
    if as_json:
        click.echo((folder / STABILITY_MARKER).read_text(encoding="utf-8").rstrip())
        return
    click.echo(stability_table(result))
    methods = sorted({m for _, _, m in result.pair_methods})
    click.echo(f"\n{len(region)} region(s); {divergence}, bound {', '.join(methods)}, search {restarts}x{steps}, "
               f"{dtype}: {result.time_s:.1f} s")
    click.echo(f"report: {folder / 'index.html'}")


def stability_table(result, top: int = 3) -> str:
    """The compact text of a :class:`~modeldiff.track.StabilityResult`: the pairwise matrix of certified (found)
    medians over regions, the spread, the medoid and the ``top`` regions that differ most."""
    names = list(result.names)
    cert, found = result.certified_median, result.found_median
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"name": name + (" *" if i == result.medoid else "")}
        for j in range(len(names)):
            row[f"c{j}"] = "-" if i == j else f"{_g(float(cert[i, j]))} ({_g(float(found[i, j]))})"
        row["score"] = _g(float(result.medoid_scores[i]))
        rows.append(row)
    columns = [("name", "A \\ B")] + [(f"c{j}", n) for j, n in enumerate(names)] + [("score", "sum to others")]
    s = result.spread()
    lines = [
        f"certified (found) {result.divergence}, median over {result.n_regions} region(s); * = medoid",
        _table(rows, columns),
        "",
        f"spread over {s['pairs']} pair(s): certified median {_g(s['certified_median_of_pair_medians'])}, worst pair "
        f"{_g(s['certified_max_of_pair_medians'])}, max {_g(s['certified_max'])}; found median "
        f"{_g(s['found_median_of_pair_medians'])}, worst pair {_g(s['found_max_of_pair_medians'])}, max "
        f"{_g(s['found_max'])}; labels differ median {100 * float(s['disagreement_median']):.1f}%, max "
        f"{100 * float(s['disagreement_max']):.1f}%",
        f"medoid: {names[result.medoid]}",
    ]
    tops = result.top_regions(min(top, result.n_regions))
    lines.append("regions that differ most: " + "; ".join(
        f"#{t['index']} certified {_g(t['certified'])} ({' vs '.join(t['certified_pair'])}), found {_g(t['found'])}"
        for t in tops))
    return "\n".join(lines)
