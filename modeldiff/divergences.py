"""Divergences: how far apart two output vectors are.

Each divergence is a pure function of the two models' outputs ``ya = A(x)`` and ``yb = B(x)`` (both ``[N, K]``)
plus a small :class:`torch.nn.Module` wrapping it (torchmetrics-style), so that it can sit at the head of a
:class:`~modeldiff.graph.ComparisonGraph`.

============  =====================================================  ==============
name          value                                                  range
============  =====================================================  ==============
``delta``     the vector ``ya - yb`` (per output; scalar summary:    ``[N, K]``
              ``max_i |ya_i - yb_i|`` over the selected outputs)
``linf``      ``max_i |ya_i - yb_i|``                                ``[0, inf)``
``l1``        ``sum_i |ya_i - yb_i|``                                ``[0, inf)``
``l2``        ``sqrt(sum_i (ya_i - yb_i)^2)``                        ``[0, inf)``
``kl``        ``KL(softmax(ya) || softmax(yb))``                     ``[0, inf)``
``tv``        ``0.5 * sum_i |softmax(ya)_i - softmax(yb)_i|``        ``[0, 1]``
``top1``      ``1`` where ``argmax ya != argmax yb`` else ``0``      ``{0, 1}``
============  =====================================================  ==============

How a sound certified *upper* bound of each is derived from bounds that auto_LiRPA computes is documented in
:mod:`modeldiff.bounds.derive`.

Example:
    >>> import torch
    >>> from modeldiff.divergences import linf, get_divergence
    >>> ya, yb = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.5, 1.0]])
    >>> linf(ya, yb)
    tensor([1.])
    >>> get_divergence("l1")(ya, yb)
    tensor([1.5000])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modeldiff.errors import BoundError, IncompatibleModelsError

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "delta",
    "get_divergence",
    "kl",
    "l1",
    "l2",
    "linf",
    "top1",
    "tv",
]


def _check(ya: Tensor, yb: Tensor) -> None:
    if not isinstance(ya, Tensor) or not isinstance(yb, Tensor):
        raise TypeError(f"expected two tensors, got {type(ya).__name__} and {type(yb).__name__}")
    if ya.shape != yb.shape:
        raise IncompatibleModelsError(
            f"outputs differ in shape: A gives {tuple(ya.shape)}, B gives {tuple(yb.shape)}"
        )
    if ya.dim() != 2:
        raise IncompatibleModelsError(f"expected outputs of shape [N, K], got {tuple(ya.shape)}")


def delta(ya: Tensor, yb: Tensor) -> Tensor:
    """The difference ``ya - yb``, shape ``[N, K]``."""
    _check(ya, yb)
    return ya - yb


def linf(ya: Tensor, yb: Tensor) -> Tensor:
    """L-infinity distance of the output vectors, shape ``[N]``."""
    _check(ya, yb)
    return (ya - yb).abs().amax(dim=1)


def l1(ya: Tensor, yb: Tensor) -> Tensor:
    """L1 distance of the output vectors, shape ``[N]``."""
    _check(ya, yb)
    return (ya - yb).abs().sum(dim=1)


def l2(ya: Tensor, yb: Tensor) -> Tensor:
    """Euclidean distance of the output vectors, shape ``[N]``."""
    _check(ya, yb)
    return torch.linalg.vector_norm(ya - yb, dim=1)


def kl(ya: Tensor, yb: Tensor) -> Tensor:
    """``KL(softmax(ya) || softmax(yb))`` in nats, shape ``[N]``; ``ya``, ``yb`` are logits."""
    _check(ya, yb)
    la, lb = torch.log_softmax(ya, dim=1), torch.log_softmax(yb, dim=1)
    return (la.exp() * (la - lb)).sum(dim=1).clamp_min(0.0)


def tv(ya: Tensor, yb: Tensor) -> Tensor:
    """Total variation distance of ``softmax(ya)`` and ``softmax(yb)``, shape ``[N]``, in ``[0, 1]``."""
    _check(ya, yb)
    return 0.5 * (torch.softmax(ya, dim=1) - torch.softmax(yb, dim=1)).abs().sum(dim=1)


def top1(ya: Tensor, yb: Tensor) -> Tensor:
    """``1.0`` where the argmax labels of ``ya`` and ``yb`` differ, else ``0.0``; shape ``[N]``."""
    _check(ya, yb)
    return (ya.argmax(dim=1) != yb.argmax(dim=1)).to(ya.dtype)


_FUNCTIONS = {"delta": delta, "linf": linf, "l1": l1, "l2": l2, "kl": kl, "tv": tv, "top1": top1}
_RANGES = {
    "delta": "(-inf, inf) per output",
    "linf": "[0, inf)",
    "l1": "[0, inf)",
    "l2": "[0, inf)",
    "kl": "[0, inf)",
    "tv": "[0, 1]",
    "top1": "{0, 1}",
}

#: The divergence names, in the order the CLI lists them.
DIVERGENCES: tuple[str, ...] = tuple(_FUNCTIONS)


class Divergence(nn.Module):
    """A divergence as a module: ``forward(ya, yb)`` returns its value.

    Args:
        name: one of :data:`DIVERGENCES`.

    Attributes:
        name: the divergence's name.
        value_range: its documented range, as text.
        vector_valued: True for ``delta`` (one value per output), False otherwise (one value per input).

    Example:
        >>> d = Divergence("tv")
        >>> float(d(torch.zeros(1, 3), torch.zeros(1, 3)))
        0.0
    """

    def __init__(self, name: str):
        super().__init__()
        if not isinstance(name, str):
            raise TypeError(f"expected a divergence name (str), got {type(name).__name__}")
        if name not in _FUNCTIONS:
            raise BoundError(f"unknown divergence {name!r}; expected one of {', '.join(DIVERGENCES)}")
        self.name = name
        self.value_range = _RANGES[name]
        self.vector_valued = name == "delta"
        self._fn = _FUNCTIONS[name]

    def forward(self, ya: Tensor, yb: Tensor) -> Tensor:
        return self._fn(ya, yb)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, range={self.value_range}"


def get_divergence(name: str | Divergence) -> Divergence:
    """The :class:`Divergence` called ``name`` (a Divergence passes through)."""
    if isinstance(name, Divergence):
        return name
    return Divergence(name)
