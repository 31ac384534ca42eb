"""Errors raised by modeldiff. Every message is one line that names the problem."""

from __future__ import annotations

import numbers
from typing import Any


class ModelDiffError(Exception):
    """Base class of every error modeldiff raises on bad input."""


class ModelLoadError(ModelDiffError):
    """A model file is missing, corrupt, of an unknown format, or refused (untrusted pickle)."""


class IncompatibleModelsError(ModelDiffError):
    """Models A and B cannot be compared: their outputs differ in shape, or they do not accept the input."""


class UnsupportedModelError(ModelDiffError):
    """The bounder cannot handle an op of the model; the message names the op."""


class RegionError(ModelDiffError):
    """An input region is malformed: negative eps, NaN, lower above upper, unreadable file, wrong shape."""


class BoundError(ModelDiffError):
    """Bound computation failed or was misconfigured (unknown method or divergence, missing auto_LiRPA)."""


class SearchError(ModelDiffError):
    """The disagreement search was misconfigured or produced an invalid witness."""


class ReportError(ModelDiffError):
    """A report was misconfigured: an argument of the wrong type or value, labels that do not fit the region."""


def check_int(name: str, value: Any, minimum: int | None = None, *, error: type[Exception] = ModelDiffError,
              type_error: type[Exception] = TypeError) -> int:
    """``value`` as an int: ``type_error`` if it is not an integer (bools are not), ``error`` if it is below
    ``minimum``; messages read "expected NAME ...", as everywhere in modeldiff."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(f"expected {name} to be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise error(f"expected {name} >= {minimum}, got {value}")
    return int(value)
