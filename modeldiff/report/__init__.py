"""Reports on a pair of models: static HTML pages with figures, and the same numbers in JSON.

:func:`review` computes a disagreement review of models A and B over input regions (a typed :class:`Review`);
:func:`write_review` writes it as ``index.html``, PNG figures and ``report.json`` into a folder, atomically.

Example:
    >>> from modeldiff import regions, zoo
    >>> from modeldiff.report import review, write_review
    >>> a, b = zoo.load("digits_mlp"), zoo.load("digits_mlp_finetuned")
    >>> x, y = zoo.digits_test()
    >>> r = review(a, b, regions.ball(x[:20], 0.03, domain=(0, 1)), labels=y[:20], restarts=2, steps=10)
    >>> page = write_review(r, "review")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["Review", "review", "write_review"]

_LAZY = {
    "Review": ("modeldiff.report.records", "Review"),
    "review": ("modeldiff.report.compute", "review"),
    "write_review": ("modeldiff.report.html_review", "write_review"),
}


def __getattr__(name: str) -> Any:  # lazy: importing a sibling module (e.g. _output) stays cheap
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'modeldiff.report' has no attribute {name!r}")
