"""Errors raised by modeldiff. Every message is one line that names the problem."""

from __future__ import annotations


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
