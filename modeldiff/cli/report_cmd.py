"""``modeldiff report``: the disagreement review of two models as a static HTML page (plus report.json)."""

from __future__ import annotations

import click

from modeldiff.cli.main import (
    CONTEXT,
    DIVERGENCE_CHOICE,
    METHOD_CHOICE,
    _Command,
    cli,
    _compute_options,
    _model_options,
    _region_options,
    _setup,
)

__all__ = ["report_cmd"]


def _summary(d: dict, index) -> str:
    h, n = d["headline"], d["n"]

    def pct(rate: float, count: int) -> str:
        return f"{100 * rate:5.1f}%  ({count}/{n})"

    fs, cs = h["found"], h["certified"]
    return "\n".join([
        f"{n} region(s), divergence {d['divergence']}, bound method {d['method']}",
        f"  clean disagreement          {pct(h['clean_disagreement_rate'], h['clean_disagreements'])}",
        f"  disagreement under search   {pct(h['search_disagreement_rate'], h['search_disagreements'])}",
        f"  certified agreement         {pct(h['certified_agreement_rate'], h['certified_agreements'])}",
        f"  {d['divergence']} found      median {fs['median']:.4g}  max {fs['max']:.4g}",
        f"  {d['divergence']} certified  median {cs['median']:.4g}  max {cs['max']:.4g}",
        f"wrote {index}",
    ])


@cli.command("report", cls=_Command, context_settings=CONTEXT)
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@_region_options
@click.option("--labels", type=click.Path(dir_okay=False),
              help="True labels, one per region, in a .pt/.npy file: per-class rates by true label (default: by "
              "A's label at the seed point).")
@click.option("--divergence", type=DIVERGENCE_CHOICE, default="linf", show_default=True,
              help="The divergence searched and certified besides the labels (top1).")
@click.option("--method", type=METHOD_CHOICE, default="auto", show_default=True,
              help="Bound method of the certificates (auto: diff where it applies, else crown).")
@click.option("--restarts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Search restarts per region.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Search steps per restart.")
@click.option("--gallery", type=click.IntRange(min=0), default=8, show_default=True,
              help="How many top disagreements to show.")
@click.option("--clusters", type=click.IntRange(min=0), default=4, show_default=True,
              help="The most k-means clusters of label-flip witnesses (0: none).")
@click.option("--ig-steps", type=click.IntRange(min=2), default=32, show_default=True,
              help="Integration steps of the integrated-gradients attributions.")
@click.option("--out", type=click.Path(), required=True,
              help="Folder to write (index.html, PNGs, report.json); replaced only if empty or an earlier report.")
@_model_options
@_compute_options
@click.option("--json", "as_json", is_flag=True,
              help="Print report.json to stdout (the summary then goes to stderr).")
def report_cmd(
    model_a, model_b, data, eps, box, domain, limit, labels, divergence, method, restarts, steps, gallery, clusters,
    ig_steps, out, arch, arch_b, trust_pickle, device, dtype, seed, batch_size, progress, as_json,
):
    """Review where MODEL_A and MODEL_B disagree over input regions: a static HTML page OUT/index.html with the
    same numbers in OUT/report.json.

    Per region: labels at the seed point, a search for a label flip, a certificate of label agreement, a search
    and a certified bound of --divergence. The page shows the rates, the gap between found and certified, flip
    matrices, a gallery of the top disagreements with integrated-gradients attributions, clusters of the
    disagreements and search diagnostics. Nothing is left half-written on error.

    \b
    Example:
      modeldiff report base.pt tuned.pt --arch modeldiff.zoo:digits_mlp --data test.pt --labels labels.pt \\
          --eps 0.03 --domain 0 1 --out review/
    """
    from pathlib import Path

    from modeldiff.regions import load_labels
    from modeldiff.report._output import output_dir
    from modeldiff.report.compute import review
    from modeldiff.report.html_review import render_into

    with output_dir(out) as tmp:
        a, b, region, _, dt = _setup(model_a, model_b, arch, arch_b, trust_pickle, data, eps, box, domain, limit,
                                     divergence, None, None, dtype, device)
        true = None
        if labels is not None:
            true = load_labels(labels)
            if limit is not None:
                true = true[: len(region)]
        show_progress = progress if progress is not None else len(region) > 64
        result = review(a, b, region, labels=true, divergence=divergence, method=method, restarts=restarts,
                        steps=steps, seed=seed, gallery=gallery, clusters=clusters, ig_steps=ig_steps, dtype=dt,
                        device=device, batch_size=batch_size, progress=show_progress, model_paths=(model_a, model_b))
        payload = result.to_dict()
        render_into(payload, tmp)
    index = Path(out) / "index.html"
    if as_json:
        click.echo((Path(out) / "report.json").read_text(encoding="utf-8"), nl=False)
        click.echo(_summary(payload, index), err=True)
    else:
        click.echo(_summary(payload, index))
