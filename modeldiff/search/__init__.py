"""Contrastive dreaming: search input regions for points where two models disagree most.

:func:`search` runs batched APGD restarts (or a gradient-free search) per region and returns a
:class:`~modeldiff.results.SearchResult` whose values are recomputed on the witnesses by :func:`evaluate`, a plain
forward pass. The values found are lower bounds of each region's maximal divergence; the certified upper bounds
come from :mod:`modeldiff.bounds` (this package never imports it).

Modules:
    :mod:`~modeldiff.search.objectives`: the quantity ascended per divergence, and :func:`evaluate`.
    :mod:`~modeldiff.search.apgd`: Auto-PGD over boxes.
    :mod:`~modeldiff.search.gradient_free`: random and Square-attack-style searches.
    :mod:`~modeldiff.search.starts`: Sobol and uniform starting points.
    :mod:`~modeldiff.search.driver`: :func:`search` itself.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from modeldiff.regions import box
    >>> from modeldiff.search import search, evaluate
    >>> a = nn.Linear(2, 1).double()
    >>> b = nn.Linear(2, 1).double()
    >>> with torch.no_grad():
    ...     _ = a.weight.copy_(torch.tensor([[1.0, 1.0]])); _ = a.bias.zero_()
    ...     _ = b.weight.copy_(torch.tensor([[1.0, -1.0]])); _ = b.bias.zero_()
    >>> res = search(a, b, box(torch.zeros(1, 2), torch.ones(1, 2)), "linf")
    >>> float(res.found[0])  # |A - B| = 2 * x1, largest at x1 = 1
    2.0
    >>> torch.equal(res.found, evaluate(a, b, res.witnesses, "linf"))
    True
"""

import sys
import types

from modeldiff.search.driver import OPTIMIZERS, search
from modeldiff.search.objectives import evaluate

__all__ = ["OPTIMIZERS", "evaluate", "search"]


class _CallableModule(types.ModuleType):
    """``modeldiff.search`` is both this package and the function: ``modeldiff.search(a, b, region, ...)`` calls
    :func:`search` (the package attribute shadows a function of the same name on the parent package)."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
