"""Shared plumbing of the report writers: provenance header, figures, a static HTML page, atomic output folders.

Everything here is private to :mod:`modeldiff.report`; the public verbs live in its other modules.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from modeldiff.errors import ModelDiffError

logger = logging.getLogger(__name__)

__all__ = ["provenance", "new_figure", "save_figure", "Page", "check_output_dir", "output_dir", "write_json"]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(models: dict[str, str | os.PathLike | None] | None = None, **settings: Any) -> dict[str, Any]:
    """The reproducibility header: model file hashes, package versions, date and the given settings.

    Args:
        models: role -> file path (e.g. ``{"A": "base.pt", "B": "tuned.pt"}``); None entries are recorded as
            ``"in-memory"``.
        settings: anything else to record (region, divergence, method, seeds, budgets); must be JSON-able.
    """
    from modeldiff import __version__
    from modeldiff.loading import model_fingerprint

    files = {}
    for role, path in (models or {}).items():
        if path is None:
            files[role] = {"path": None, "sha256": "in-memory"}
        else:
            files[role] = {"path": str(path), "sha256": model_fingerprint(path)}
    import torch

    return {
        "models": files,
        "versions": {
            "modeldiff": __version__,
            "torch": torch.__version__,
            "auto_LiRPA": _version("auto_LiRPA") or _version("auto-LiRPA"),
            "captum": _version("captum"),
            "numpy": _version("numpy"),
            "python": platform.python_version(),
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
    }


def new_figure(width: float = 6.4, height: float = 4.0):
    """A matplotlib Figure made with the object API (no pyplot, no global state), Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, folder: str | os.PathLike, name: str, dpi: int = 110) -> str:
    """Save ``fig`` as ``folder/name`` (a .png name) and return ``name`` (the page links it relatively)."""
    fig.savefig(Path(folder) / name, dpi=dpi)
    return name


def write_json(payload: Any, path: str | os.PathLike) -> None:
    """Strict JSON (no NaN/inf literals), indented."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, allow_nan=False)
        f.write("\n")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
.note{color:#555;font-size:.92em}.kv td:first-child{text-align:left;font-weight:600}.mono{font-family:monospace;font-size:.85em}
figure{margin:.8em 0}figcaption{color:#555;font-size:.9em}
"""


class Page:
    """A static, self-contained HTML page (no scripts, inline CSS) built section by section.

    Example:
        >>> p = Page("Review")
        >>> p.section("Headline"); p.paragraph("A and B agree on 98% of points.")
        >>> "<h2>Headline</h2>" in p.render()
        True
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []

    def section(self, title: str, anchor: str | None = None) -> None:
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self._parts.append(f"<h2{ident}>{html.escape(title)}</h2>")

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def raw(self, markup: str) -> None:
        """Append markup verbatim (the caller escapes)."""
        self._parts.append(markup)

    def image(self, src: str, alt: str, caption: str | None = None) -> None:
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">{cap}</figure>')

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], left_columns: int = 1,
              css_class: str = "") -> None:
        def cell(tag: str, i: int, v: Any) -> str:
            cls = ' class="l"' if i < left_columns else ""
            return f"<{tag}{cls}>{html.escape(_fmt(v))}</{tag}>"

        head = "".join(cell("th", i, h) for i, h in enumerate(header))
        body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
        cls = f' class="{css_class}"' if css_class else ""
        self._parts.append(f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def key_values(self, items: dict[str, Any]) -> None:
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td class=\"l mono\">{html.escape(_fmt(v))}</td></tr>"
            for k, v in items.items()
        )
        self._parts.append(f'<table class="kv"><tbody>{rows}</tbody></table>')

    def render(self) -> str:
        body = "\n".join(self._parts)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    if v is None:
        return "n/a"
    return str(v)


def check_output_dir(out: str | os.PathLike, marker: str) -> None:
    """Raise :class:`ModelDiffError` now if ``out`` cannot take a report (exists as a file, or is a non-empty
    folder without ``marker``): the rule of :func:`output_dir`, to check before a long computation."""
    final = Path(out)
    if final.exists():
        if not final.is_dir():
            raise ModelDiffError(f"output path exists and is not a folder: {final}")
        if any(final.iterdir()) and not (final / marker).exists():
            raise ModelDiffError(f"output folder {final} is not empty and holds no earlier report ({marker}); "
                                 "choose another --out")


@contextmanager
def output_dir(path: str | os.PathLike, marker: str = "report.json") -> Iterator[Path]:
    """Write a report folder atomically: yield a fresh temporary folder beside ``path``; on success it replaces
    ``path``, on any error it is removed and ``path`` is left as it was (nothing half-written).

    An existing ``path`` is replaced only if it is empty or holds an earlier report (a ``marker`` file);
    otherwise :class:`ModelDiffError` is raised before anything is computed or written.
    """
    final = Path(path)
    check_output_dir(final, marker)
    parent = final.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); a report folder is as readable as any other
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("wrote %s", final)
