"""modeldiff: how far apart can two models be over an input region?

Compose two models into one graph (:class:`ComparisonGraph`), search for inputs where they disagree
(:func:`search`), and certify sound upper bounds of the divergence over whole regions (:func:`bound`).

Example:
    >>> import torch, modeldiff
    >>> a = torch.nn.Linear(3, 2); b = torch.nn.Linear(3, 2)
    >>> region = modeldiff.regions.ball(torch.zeros(1, 3), eps=0.1)
    >>> float(modeldiff.bound(a, b, region, "linf").upper[0]) >= 0
    True
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BoundResult",
    "ComparisonGraph",
    "bounds",
    "SearchResult",
    "bound",
    "load_model",
    "regions",
    "search",
    "__version__",
]

_LAZY = {
    "bound": ("modeldiff.bounds", "bound"),
    "search": ("modeldiff.search", None),  # the package, callable as the search function
    "load_model": ("modeldiff.loading", "load_model"),
    "ComparisonGraph": ("modeldiff.graph", "ComparisonGraph"),
    "BoundResult": ("modeldiff.results", "BoundResult"),
    "SearchResult": ("modeldiff.results", "SearchResult"),
    "regions": ("modeldiff.regions", None),
    "bounds": ("modeldiff.bounds", None),
}


def __getattr__(name: str) -> Any:  # lazy imports keep `import modeldiff` cheap
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'modeldiff' has no attribute {name!r}")
