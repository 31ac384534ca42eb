"""Read a model as a chain ``affine -> ReLU -> affine -> ... -> affine`` of dense layers.

The differential bound (:mod:`modeldiff.bounds.diff`) works on that form. A model is traced with
:func:`torch.fx.symbolic_trace`; it qualifies when its graph is a single chain whose ops are ReLU or affine
(Linear, Conv1d/2d, BatchNorm in eval, average pooling, Flatten/reshape keeping the batch dimension, Identity,
Dropout in eval, and add/sub/mul/div by constants such as an input normalisation). Consecutive affine ops are
merged into one dense matrix by evaluating them on the basis vectors, so any mix of them becomes ``W x + b``.

A model loaded from a ``.pt2`` file (:class:`~modeldiff.loading.ExportedModule`) is not traced again: the ATen
graph of its exported program is read directly (:func:`_aten_step` lists the ops understood there: linear, addmm,
mm/matmul, convolutions, batch norm in eval, average pooling, reshapes keeping the batch dimension, arithmetic with
constants, eval dropout and copies). Nodes computed from parameters and constants only (``aten.t(weight)``) are
constants, evaluated when needed; ``aten.sym_size(x, 0)`` is the batch size; shape guards are ignored.

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
from torch._ops import OpOverload

from modeldiff.loading import ExportedModule

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
_ATEN = torch.ops.aten
_ATEN_RELU = {_ATEN.relu.default, _ATEN.relu_.default}
#: ATen ops affine in one tensor argument (the others constants): op -> positions the chain value may take.
_ATEN_AFFINE: dict[OpOverload, tuple[int, ...]] = {
    **dict.fromkeys([_ATEN.linear.default, _ATEN.mm.default, _ATEN.matmul.default, _ATEN.conv1d.default,
                     _ATEN.conv2d.default, _ATEN.convolution.default, _ATEN.avg_pool1d.default,
                     _ATEN.avg_pool2d.default, _ATEN.batch_norm.default,
                     _ATEN._native_batch_norm_legit_no_training.default, _ATEN.div.Tensor, _ATEN.add.Scalar,
                     _ATEN.sub.Scalar, _ATEN.mul.Scalar, _ATEN.div.Scalar, _ATEN.rsub.Scalar, _ATEN.neg.default,
                     _ATEN.view.default, _ATEN.reshape.default, _ATEN._unsafe_view.default,
                     _ATEN.flatten.using_ints, _ATEN.dropout.default, _ATEN.clone.default, _ATEN.detach.default,
                     _ATEN.alias.default, _ATEN.contiguous.default], (0,)),
    **dict.fromkeys([_ATEN.add.Tensor, _ATEN.sub.Tensor, _ATEN.mul.Tensor], (0, 1)),
    _ATEN.addmm.default: (1,),
}
#: Ops with a ``training`` flag (its position), which must be a literal False.
_ATEN_TRAINING = {_ATEN.batch_norm.default: 5, _ATEN.dropout.default: 2}
#: Ops whose constant operands at these positions broadcast against the output: they must not span the batch.
_ATEN_BROADCAST = {_ATEN.linear.default: (2,), _ATEN.addmm.default: (0,),
                   **dict.fromkeys([_ATEN.add.Tensor, _ATEN.sub.Tensor, _ATEN.mul.Tensor, _ATEN.div.Tensor], (0, 1))}
_ATEN_CONV = {_ATEN.conv1d.default, _ATEN.conv2d.default, _ATEN.convolution.default}
_ATEN_RESHAPE = {_ATEN.view.default, _ATEN.reshape.default, _ATEN._unsafe_view.default}
#: Ops returning a tuple whose element 0 (taken by the next node, ``getitem``) is the chain value.
_ATEN_TUPLE = {_ATEN._native_batch_norm_legit_no_training.default}
#: Nodes with no users that only check shapes or values (ignored); ``_guards_fn`` is a ``call_module``.
_ATEN_CHECKS = {_ATEN._assert_scalar.default, _ATEN._assert_tensor_metadata.default,
                _ATEN.sym_constrain_range.default, _ATEN.sym_constrain_range_for_size.default}
#: Deterministic, non-mutating ops that still must not be evaluated as constants (uninitialised memory).
_ATEN_NOT_CONST = {_ATEN.empty.memory_format, _ATEN.empty_like.default, _ATEN.new_empty.default,
                   _ATEN.empty_strided.default}
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


def _graph_module(model: nn.Module) -> fx.GraphModule:
    """The graph to read: the exported program's own ATen graph for a ``.pt2`` model, else an fx trace."""
    if not (isinstance(model, ExportedModule) and type(model).forward is ExportedModule.forward):
        return _trace(model)
    gm = model.exported
    if not isinstance(gm, fx.GraphModule):
        raise NotLinearizable(f"the exported program is a {type(gm).__name__}, not an fx graph")
    hooks = [h for m in (model, gm) for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())]
    if any(getattr(h, "__module__", None) != "torch.export._unlift" for h in hooks):  # torch's own only check inputs
        raise NotLinearizable("the exported model has forward hooks")
    return gm


def _is_pure(target: Any) -> bool:
    """Whether ``target`` may be evaluated ahead of time on constants (deterministic ATen op, no mutation)."""
    if target is operator.getitem:
        return True
    return (isinstance(target, OpOverload) and not target._schema.is_mutable and target not in _ATEN_NOT_CONST
            and torch.Tag.nondeterministic_seeded not in target.tags)  # fmt: skip


def _roles(graph: fx.Graph) -> dict[fx.Node, str]:
    """Each node's role: 'const' (a get_attr, or a pure op of constants), 'batch' (``sym_size(v, 0)`` of a computed
    value: the batch size), 'check' (a guard or assertion nobody uses) or 'chain' (anything else)."""
    roles: dict[fx.Node, str] = {}
    for node in graph.nodes:
        inputs = node.all_input_nodes
        role = "chain"
        if node.op == "get_attr":
            role = "const"
        elif node.op == "call_function" and _is_pure(node.target) and all(roles[n] == "const" for n in inputs):
            role = "const"
        elif node.op == "call_function" and node.target is _ATEN.sym_size.int and node.args[1:] == (0,):
            role = "batch"
        elif not node.users and (node.target in _ATEN_CHECKS if node.op == "call_function" else
                                 node.op == "call_module" and node.target == "_guards_fn"):  # fmt: skip
            role = "check"
        roles[node] = role
    return roles


def _const(gm: fx.GraphModule, arg: Any, roles: dict[fx.Node, str] | None = None, batch: int | None = None) -> Any:
    """``arg`` with its nodes replaced by their values: get_attr nodes, and with ``roles`` (ATen graphs) pure ops of
    constants (evaluated) and the batch size."""

    def value(node: fx.Node) -> Any:
        if node.op == "get_attr":
            obj: Any = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        role = roles.get(node) if roles is not None else None
        if role == "batch" and batch is not None:
            return batch
        if role == "const":
            with torch.no_grad():
                return node.target(*_const(gm, node.args, roles), **_const(gm, node.kwargs, roles))
        raise NotLinearizable(f"op {node.name} mixes two computed values (not a chain)")

    return fx.node.map_arg(arg, value)


def _op_name(target: Any) -> str:
    return str(target) if isinstance(target, OpOverload) else getattr(target, "__name__", str(target))


def _step(gm: fx.GraphModule, node: fx.Node, current: fx.Node,
          roles: dict[fx.Node, str]) -> tuple[str, Callable[[Tensor], Tensor]]:  # fmt: skip
    """Classify ``node`` (consuming ``current``) as 'relu' or 'affine' and return its function of x."""
    if node.op == "call_function" and (isinstance(node.target, OpOverload) or node.target is operator.getitem):
        return _aten_step(gm, node, current, roles)
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


def _aten_step(gm: fx.GraphModule, node: fx.Node, current: fx.Node,
               roles: dict[fx.Node, str]) -> tuple[str, Callable[[Tensor], Tensor]]:  # fmt: skip
    """:func:`_step` for an ATen op (an exported graph): the chain value must enter once, at a position where
    the op is affine (or ReLU), every other input must be a constant, and the batch dimension must stay first and
    unmixed (checked on the values too, see :func:`_aten_checked`)."""
    target, name = node.target, _op_name(node.target)
    if target is operator.getitem:  # element 0 of batch norm's (out, mean, rstd)
        if node.args == (current, 0) and not node.kwargs and current.target in _ATEN_TUPLE:
            return "affine", lambda x: x[0]
        raise NotLinearizable(f"op getitem ({node.name}) is not a chain step")
    if target not in _ATEN_RELU and target not in _ATEN_AFFINE:
        raise NotLinearizable(f"op {name} is not affine or ReLU")
    inputs: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), inputs.append)
    positions = [i for i, a in enumerate(node.args) if a is current]
    if len(positions) != 1 or inputs.count(current) != 1:
        raise NotLinearizable(f"op {name} ({node.name}) is not a chain step")
    batch_ok = [node.args[1][0]] if target in _ATEN_RESHAPE and isinstance(node.args[1], (list, tuple)) else []
    for n in inputs:
        if n is not current and roles[n] != "const" and not (roles[n] == "batch" and any(n is b for b in batch_ok)):
            raise NotLinearizable(f"op {name} ({node.name}) mixes two computed values (not a chain)")
    if target in _ATEN_RELU:
        return "relu", torch.relu
    pos = positions[0]
    if pos not in _ATEN_AFFINE[target]:
        raise NotLinearizable(f"op {name} is not affine in argument {pos}")
    flag = _ATEN_TRAINING.get(target)
    if flag is not None and (len(node.args) <= flag or node.args[flag] is not False):
        raise NotLinearizable(f"op {name} ({node.name}) runs in training mode")
    if target in _ATEN_RESHAPE:
        shape = node.args[1] if len(node.args) == 2 else None
        if not (isinstance(shape, (list, tuple)) and shape and (shape[0] == -1 or roles.get(shape[0]) == "batch")
                and all(isinstance(s, int) for s in shape[1:])):  # fmt: skip
            raise NotLinearizable(f"op {name} ({node.name}) does not keep the batch dimension first")

    def call(x: Tensor) -> Tensor:
        def value(n: fx.Node) -> Any:
            return x if n is current else _const(gm, n, roles, x.shape[0])

        return _aten_checked(target, name, fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value), x)

    return "affine", call


def _aten_checked(target: OpOverload, name: str, args: tuple, kwargs: dict, x: Tensor) -> Any:
    """``target(*args, **kwargs)`` on the chain value ``x``, refusing what would treat the batch as data."""
    if target in _ATEN_CONV and args[1].dim() != x.dim():
        raise NotLinearizable(f"op {name} sees an unbatched input")
    if target in (_ATEN.linear.default, _ATEN.mm.default, _ATEN.matmul.default) and (
            x.dim() < 2 or args[1].dim() > 2):
        raise NotLinearizable(f"op {name} multiplies along the batch dimension")
    for i in _ATEN_BROADCAST.get(target, ()):
        c = args[i] if i < len(args) else None
        if isinstance(c, Tensor) and c is not x and c.dim() >= x.dim() and c.shape[0] != 1:
            raise NotLinearizable(f"op {name} broadcasts a constant of shape {tuple(c.shape)} over the batch")
    if target is _ATEN.flatten.using_ints:
        dim = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        if dim % x.dim() == 0:
            raise NotLinearizable(f"op {name} flattens the batch dimension")
    y = target(*args, **kwargs)
    out = y[0] if target in _ATEN_TUPLE else y
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise NotLinearizable(f"op {name} changes the batch dimension")
    return y


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
    gm = _graph_module(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float64
    device = param.device if param is not None else torch.device("cpu")
    layers: list[DenseLayer] = []
    shape = tuple(input_shape)
    for block in _blocks(gm):
        layer, shape = _dense(block, shape, dtype, device)
        layers.append(layer)
    return layers


def _blocks(gm: fx.GraphModule) -> list[list[Callable[[Tensor], Tensor]]]:
    """The chain's affine functions, split into blocks at each ReLU."""
    roles = _roles(gm.graph)
    blocks: list[list[Callable]] = [[]]
    current: fx.Node | None = None
    output_seen = False
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise NotLinearizable("the model takes more than one input")
            current = node
            continue
        if node.op == "output":
            if _returned(gm, node) is not current:
                raise NotLinearizable("the model's output is not the end of the chain")
            output_seen = True
            continue
        if roles[node] != "chain":
            continue
        kind, fn = _step(gm, node, current, roles)
        if kind == "relu":
            blocks.append([])
        else:
            blocks[-1].append(fn)
        current = node
    if not output_seen or current is None:
        raise NotLinearizable("the model has no output")
    for node in gm.graph.nodes:
        if node.op != "output" and roles[node] == "chain":
            if len([u for u in node.users if roles[u] not in ("batch", "check")]) > 1:
                raise NotLinearizable(f"value {node.name} is used twice (residual connections are not a chain)")
    return blocks


def _returned(gm: fx.GraphModule, node: fx.Node) -> Any:
    """What the model returns, from its ``output`` node: an exported module returns its one output unwrapped when
    its output spec is a single tensor; anything else (a tuple, a dict) is returned as it is and is no chain end."""
    value = node.args[0]
    info = getattr(gm.graph._codegen, "pytree_info", None)
    spec = getattr(info, "out_spec", None)
    if spec is not None and spec.is_leaf() and isinstance(value, (tuple, list)) and len(value) == 1:
        return value[0]
    return value
