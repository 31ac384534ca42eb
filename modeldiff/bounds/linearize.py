"""Read a model as a chain ``affine -> ReLU -> affine -> ... -> affine`` of dense layers.

The differential bound (:mod:`modeldiff.bounds.diff`) works on that form. A model is traced with
:func:`torch.fx.symbolic_trace`; it qualifies when its graph is a single chain whose ops are ReLU or affine
(Linear, Conv1d/2d, BatchNorm in eval, average pooling, Flatten/reshape keeping the batch dimension, Identity,
Dropout in eval, and add/sub/mul/div by constants such as an input normalisation). Consecutive affine ops are
merged into one dense matrix by evaluating them on the basis vectors, so any mix of them becomes ``W x + b``.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> [tuple(layer.weight.shape) for layer in linearize(net, (3,))]
    [(4, 3), (2, 4)]
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn

__all__ = ["DenseLayer", "NotLinearizable", "linearize"]

_AFFINE_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)
_RELU_FUNCTIONS = {torch.relu, torch.nn.functional.relu}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_SHAPE_METHODS = {"flatten", "reshape", "view", "contiguous"}
_ARITH = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_ARITH_METHODS = {"add", "sub", "mul", "div"}
#: Largest number of input or output features of a merged affine block (its dense matrix is materialised).
MAX_FEATURES = 20_000


class NotLinearizable(Exception):
    """The model is not a chain of affine ops and ReLUs (the message says why)."""


@dataclass(frozen=True)
class DenseLayer:
    """``y = weight @ x + bias`` on flattened features; ``weight`` is ``[out, in]``."""

    weight: Tensor
    bias: Tensor


class _Leaf(fx.Tracer):
    """Traces through containers but keeps the modules we understand as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_AFFINE_MODULES, nn.ReLU)) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Leaf().trace(model)
    except Exception as exc:  # fx raises many kinds of errors on dynamic control flow
        raise NotLinearizable(f"torch.fx cannot trace the model ({type(exc).__name__})") from exc
    return fx.GraphModule(model, graph)


def _const(gm: fx.GraphModule, arg: Any) -> Any:
    if isinstance(arg, fx.Node):
        if arg.op != "get_attr":
            raise NotLinearizable(f"op {arg.name} mixes two computed values (not a chain)")
        obj: Any = gm
        for part in arg.target.split("."):
            obj = getattr(obj, part)
        return obj
    return arg


def _step(gm: fx.GraphModule, node: fx.Node, current: fx.Node) -> tuple[str, Callable[[Tensor], Tensor]]:
    """Classify ``node`` (consuming ``current``) as 'relu' or 'affine' and return its function of x."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if node.args[:1] != (current,) or len(node.args) != 1 or node.kwargs:
            raise NotLinearizable(f"module {node.target} takes more than the chain value")
        if isinstance(mod, nn.ReLU):
            return "relu", mod
        if isinstance(mod, _AFFINE_MODULES):
            if mod.training and isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)):
                raise NotLinearizable(f"module {node.target} is in training mode")
            return "affine", mod
        raise NotLinearizable(f"module {node.target} ({type(mod).__name__}) is not affine or ReLU")
    if node.op in ("call_function", "call_method"):
        target = node.target
        args, kwargs = list(node.args), dict(node.kwargs)
        positions = [i for i, a in enumerate(args) if a is current]
        others = [a for a in args if a is not current] + list(kwargs.values())
        if any(isinstance(a, fx.Node) and a.op != "get_attr" for a in others) or len(positions) != 1:
            raise NotLinearizable(f"op {node.name} is not a chain step")
        pos = positions[0]

        def call(x: Tensor) -> Tensor:
            a = [x if i == pos else _const(gm, v) for i, v in enumerate(args)]
            kw = {k: _const(gm, v) for k, v in kwargs.items()}
            if node.op == "call_method":
                return getattr(a[0], target)(*a[1:], **kw)
            return target(*a, **kw)

        if node.op == "call_function":
            if target in _RELU_FUNCTIONS:
                return "relu", call
            if target in _SHAPE_FUNCTIONS or target in (operator.neg,):
                return "affine", call
            if target in _ARITH:
                if target in (operator.truediv, torch.div) and pos != 0:
                    raise NotLinearizable(f"op {node.name} divides by the chain value")
                if target in (operator.mul, torch.mul) or pos == 0 or target in (operator.sub, torch.sub,
                                                                                   operator.add, torch.add):
                    return "affine", call
        else:
            if target == "relu" and pos == 0:
                return "relu", call
            if target in _SHAPE_METHODS and pos == 0:
                return "affine", call
            if target in _ARITH_METHODS and pos == 0:
                return "affine", call
        raise NotLinearizable(f"op {getattr(target, '__name__', target)} is not affine or ReLU")
    raise NotLinearizable(f"unexpected graph node {node.op}")


def _dense(fns: list[Callable[[Tensor], Tensor]], in_shape: tuple[int, ...], dtype, device) -> tuple[DenseLayer, tuple]:
    """Evaluate a block of affine functions on the basis vectors: ``W``, ``b`` and the output shape."""
    n_in = 1
    for s in in_shape:
        n_in *= s
    if n_in > MAX_FEATURES:
        raise NotLinearizable(f"a layer has {n_in} input features (more than {MAX_FEATURES})")
    basis = torch.cat([torch.zeros(1, n_in, dtype=dtype, device=device), torch.eye(n_in, dtype=dtype, device=device)])
    y = basis.reshape(n_in + 1, *in_shape)
    with torch.no_grad():
        for fn in fns:
            y = fn(y)
    if y.shape[0] != n_in + 1:
        raise NotLinearizable("an affine op changes the batch dimension")
    out_shape = tuple(y.shape[1:])
    flat = y.reshape(n_in + 1, -1)
    if flat.shape[1] > MAX_FEATURES:
        raise NotLinearizable(f"a layer has {flat.shape[1]} features (more than {MAX_FEATURES})")
    bias = flat[0]
    weight = (flat[1:] - bias).T.contiguous()
    return DenseLayer(weight=weight, bias=bias.clone()), out_shape


def linearize(model: nn.Module, input_shape: tuple[int, ...]) -> list[DenseLayer]:
    """The dense layers of ``model`` (ReLU between consecutive layers, none after the last).

    Args:
        model: a model in eval mode; its parameters' dtype is used.
        input_shape: shape of one input, without the batch dimension.

    Returns:
        ``[L_1, ..., L_k]``: ``model(x) = L_k(relu(... relu(L_1(x.flatten()))))``, each ``weight`` ``[out, in]``.

    Raises:
        NotLinearizable: the model is not such a chain (the message names the offending op).
    """
    gm = _trace(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float64
    device = param.device if param is not None else torch.device("cpu")
    blocks: list[list[Callable]] = [[]]
    current: fx.Node | None = None
    output_seen = False
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise NotLinearizable("the model takes more than one input")
            current = node
            continue
        if node.op == "get_attr":
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise NotLinearizable("the model's output is not the end of the chain")
            output_seen = True
            continue
        kind, fn = _step(gm, node, current)
        if kind == "relu":
            blocks.append([])
        else:
            blocks[-1].append(fn)
        current = node
    if not output_seen or current is None:
        raise NotLinearizable("the model has no output")
    unused = [n for n in gm.graph.nodes if n.op not in ("output", "get_attr") and len(n.users) > 1]
    if unused:
        raise NotLinearizable(f"value {unused[0].name} is used twice (residual connections are not a chain)")
    layers: list[DenseLayer] = []
    shape = tuple(input_shape)
    for block in blocks:
        layer, shape = _dense(block, shape, dtype, device)
        layers.append(layer)
    return layers
