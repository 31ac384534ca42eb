"""The comparison graph: two models fed the same input, their outputs fed to a divergence.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from modeldiff.graph import ComparisonGraph
    >>> a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    >>> g = ComparisonGraph(a, b, "linf", input_shape=(4,))
    >>> g(torch.zeros(2, 4)).shape
    torch.Size([2])
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from modeldiff.divergences import Divergence, get_divergence
from modeldiff.errors import IncompatibleModelsError

__all__ = [
    "ComparisonGraph",
    "DeltaNet",
    "PairNet",
    "SoftmaxDeltaNet",
    "infer_input_shape",
    "prepare_model",
    "resolve_device",
]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, checked to exist on this machine.

    Raises:
        BoundError: the device is unknown or absent.
    """
    from modeldiff.errors import BoundError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BoundError(f"unknown device {device!r}: expected cpu, cuda, cuda:N, mps, ...") from exc
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise BoundError(f"device {device!r} is not available on this machine (torch sees "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA devices)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BoundError(f"device {device!r} is not available on this machine")
    return dev


def infer_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape (without batch dimension) of ``model`` where it can be read off: an ``input_shape``
    attribute (set by :func:`modeldiff.load_model` where the file says it) or a first ``nn.Linear``."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return (module.in_features,)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return None
    return None


def prepare_model(model: nn.Module, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    """A copy of ``model`` in eval mode, on ``device`` and in ``dtype``, with gradients off for its parameters.
    The caller's model is never modified."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    with warnings.catch_warnings():
        # torch's own deprecation notice on every copy of a loaded torch.export (.pt2) module: not actionable here
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        model = copy.deepcopy(model)
    model.eval()
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _Pair(nn.Module):
    """Holds models A and B (as submodules ``a`` and ``b``) and checks that they are comparable."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module, input_shape: Sequence[int] | None = None):
        super().__init__()
        for name, model in (("A", model_a), ("B", model_b)):
            if not isinstance(model, nn.Module):
                raise TypeError(f"expected model {name} to be a torch.nn.Module, got {type(model).__name__}")
        self.a = model_a.eval()
        self.b = model_b.eval()
        self.training = False
        if input_shape is None:
            input_shape = infer_input_shape(model_a) or infer_input_shape(model_b)
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        if self.input_shape is not None:
            self.output_shape = self._check_outputs()

    def train(self, mode: bool = True) -> "_Pair":
        """Always eval mode: a comparison is of the models as deployed (no dropout, frozen batch norm)."""
        return super().train(False)

    def _check_outputs(self) -> tuple[int, ...]:
        param = next(self.a.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        device = param.device if param is not None else "cpu"
        x = torch.zeros((2, *self.input_shape), dtype=dtype, device=device)
        outs = []
        for name, model in (("A", self.a), ("B", self.b)):
            try:
                with torch.no_grad():
                    y = model(x)
            except Exception as exc:
                raise IncompatibleModelsError(
                    f"model {name} does not accept inputs of shape {tuple(self.input_shape)}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
            if not isinstance(y, Tensor):
                raise IncompatibleModelsError(f"model {name} returns {type(y).__name__}, expected one tensor")
            outs.append(tuple(y.shape))
        if outs[0] != outs[1]:
            raise IncompatibleModelsError(f"model outputs differ in shape: A gives {outs[0]}, B gives {outs[1]}")
        if len(outs[0]) != 2:
            raise IncompatibleModelsError(f"expected model outputs of shape [N, K], got {outs[0]}")
        return outs[0][1:]


class ComparisonGraph(_Pair):
    """One module computing ``divergence(A(x), B(x))``.

    Both models are put in eval mode; their output shapes are checked at construction on a zero input of
    ``input_shape`` (inferred from the models where possible).

    Args:
        model_a: model A (the reference, e.g. the precursor).
        model_b: model B (the candidate, e.g. the fine-tuned or quantised copy).
        divergence: a name from :data:`modeldiff.divergences.DIVERGENCES` or a :class:`Divergence`.
        input_shape: shape of one input without batch dimension; needed when it cannot be inferred.

    Shapes:
        ``forward(x)``: ``x`` is ``[N, *input_shape]``; returns ``[N]`` (``[N, K]`` for ``delta``).

    Raises:
        IncompatibleModelsError: the outputs of A and B differ in shape, or a model rejects the input shape.

    Example:
        >>> g = ComparisonGraph(nn.Linear(2, 2), nn.Linear(2, 2), "top1", input_shape=(2,))
        >>> g.outputs(torch.zeros(1, 2))[0].shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        divergence: str | Divergence = "linf",
        input_shape: Sequence[int] | None = None,
    ):
        super().__init__(model_a, model_b, input_shape)
        self.divergence = get_divergence(divergence)

    def outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(A(x), B(x))``."""
        return self.a(x), self.b(x)

    def forward(self, x: Tensor) -> Tensor:
        ya, yb = self.outputs(x)
        return self.divergence(ya, yb)


# --- heads for bound propagation: the quantities auto_LiRPA bounds, written with ops it can bound -----------


class DeltaNet(_Pair):
    """``x -> A(x) - B(x)``, shape ``[N, K]``: the graph whose bounds give delta, norms, KL and TV bounds."""

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) - self.b(x)


class PairNet(_Pair):
    """``x -> [A(x), B(x)]`` concatenated, shape ``[N, 2K]``: used for top-1 agreement certificates."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class SoftmaxDeltaNet(_Pair):
    """``x -> softmax(A(x)) - softmax(B(x))``, shape ``[N, K]``, with softmax written as ``exp / sum(exp)``
    (auto_LiRPA 0.3 has no bounds for ``F.softmax``)."""

    @staticmethod
    def _softmax(y: Tensor) -> Tensor:
        e = torch.exp(y)
        return e / e.sum(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return self._softmax(self.a(x)) - self._softmax(self.b(x))
