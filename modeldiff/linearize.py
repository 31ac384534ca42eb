"""Read a model as a chain ``affine -> ReLU -> affine -> ... -> affine`` of dense layers.

The differential bound (:mod:`modeldiff.bounds.diff`) works on that form. A model is traced with
:func:`torch.fx.symbolic_trace`; it qualifies when its graph has one input and one output and its ops are ReLU or
affine: Linear, Conv1d/2d, BatchNorm in eval, average pooling (adaptive too), means and sums over non-batch
dimensions, Flatten/reshape keeping the batch dimension, Identity, Dropout in eval, add/sub/mul/div by constants
(an input normalisation), and the sum or difference of two computed values of the same shape (residual
connections). The affine ops between two ReLU layers are merged into one dense matrix by evaluating them on the
basis vectors, so any mix of them becomes ``W x + b``. A value read again after ReLUs it skipped is carried through
them (see :func:`linearize`).

A model loaded from a ``.pt2`` file (:class:`~modeldiff.loading.ExportedModule`) is not traced again: the ATen
graph of its exported program is read directly (:func:`_aten_step` lists the ops understood there: linear, addmm,
mm/matmul, convolutions, batch norm in eval, average pooling (adaptive too), means and sums over non-batch
dimensions, reshapes keeping the batch dimension, arithmetic with constants or between two computed values (add,
sub), eval dropout and copies). Nodes computed from parameters and constants only (``aten.t(weight)``) are
constants, evaluated when needed; ``aten.sym_size(x, 0)`` is the batch size; shape guards are ignored.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> [tuple(layer.weight.shape) for layer in linearize(net, (3,))]
    [(4, 3), (2, 4)]
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn
from torch._ops import OpOverload

from modeldiff import _onnx
from modeldiff.loading import ExportedModule

__all__ = ["DenseLayer", "NotLinearizable", "activate", "linearize", "mismatch"]

_AFFINE_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)
#: the ONNX converter's own shape and pooling modules (:mod:`modeldiff._onnx`): affine, but not traceable (they branch
#: on the input's rank), so read as leaves; a reshape that would mix the batch is caught on the basis evaluation
_ONNX_AFFINE = (_onnx._Flatten, _onnx._Reshape, _onnx._GlobalAveragePool)
_RELU_FUNCTIONS = {torch.relu, torch.nn.functional.relu}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_SHAPE_METHODS = {"flatten", "reshape", "view", "contiguous"}
#: means and sums over given non-batch dimensions (global average pooling written as ``x.mean((2, 3))``)
_REDUCE_FUNCTIONS = {torch.mean, torch.sum}
_REDUCE_METHODS = {"mean", "sum"}
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
                     _ATEN.alias.default, _ATEN.contiguous.default, _ATEN.mean.dim, _ATEN.sum.dim_IntList,
                     _ATEN.adaptive_avg_pool1d.default, _ATEN.adaptive_avg_pool2d.default,
                     _ATEN._adaptive_avg_pool2d.default], (0,)),
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
    """The model is not made of affine ops and ReLUs (the message says why)."""


@dataclass(frozen=True)
class DenseLayer:
    """``y = weight @ x + bias`` on flattened features; ``weight`` is ``[out, in]``. ``identity``: ``[out]`` mask of
    the outputs that the ReLU after this layer leaves as they are (values carried past a ReLU layer by a residual
    connection), or None: see :func:`activate`."""

    weight: Tensor
    bias: Tensor
    identity: Tensor | None = None


def activate(h: Tensor, layer: DenseLayer) -> Tensor:
    """The activation after ``layer`` on its outputs ``h`` ``[..., out]``: ReLU, except on carried outputs."""
    return torch.relu(h) if layer.identity is None else torch.where(layer.identity, h, torch.relu(h))


def mismatch(layers_a: list[DenseLayer], layers_b: list[DenseLayer]) -> str | None:
    """Why two models' dense layers differ in structure (layer shapes, carried outputs), or None if they do not."""
    if len(layers_a) != len(layers_b) or any(x.weight.shape != y.weight.shape for x, y in zip(layers_a, layers_b)):
        return (f"layer shapes {[tuple(x.weight.shape) for x in layers_a]} vs "
                f"{[tuple(y.weight.shape) for y in layers_b]}")
    if any((x.identity is None) != (y.identity is None)
           or (x.identity is not None and not torch.equal(x.identity, y.identity))
           for x, y in zip(layers_a, layers_b)):
        return "their residual connections differ"
    return None


class _Leaf(fx.Tracer):
    """Traces through containers but keeps the modules we understand as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_AFFINE_MODULES, *_ONNX_AFFINE, nn.ReLU)) or super().is_leaf_module(m, qualname)


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
        if isinstance(mod, (*_AFFINE_MODULES, *_ONNX_AFFINE)):
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

        if (target in _REDUCE_FUNCTIONS if node.op == "call_function" else target in _REDUCE_METHODS) and pos == 0:
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)

            def reduce(x: Tensor) -> Tensor:
                if not _keeps_batch(dims, x.dim()):
                    raise NotLinearizable(f"op {node.name} reduces over the batch dimension")
                return call(x)

            return "affine", reduce
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
    if target in (_ATEN.mean.dim, _ATEN.sum.dim_IntList):
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        if not _keeps_batch(dims, x.dim()):
            raise NotLinearizable(f"op {name} reduces over the batch dimension")
    if target is _ATEN.flatten.using_ints:
        dim = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        if dim % x.dim() == 0:
            raise NotLinearizable(f"op {name} flattens the batch dimension")
    y = target(*args, **kwargs)
    out = y[0] if target in _ATEN_TUPLE else y
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise NotLinearizable(f"op {name} changes the batch dimension")
    return y


def linearize(model: nn.Module, input_shape: tuple[int, ...]) -> list[DenseLayer]:
    """The dense layers of ``model`` (ReLU between consecutive layers, none after the last).

    Residual connections are allowed: a value computed before a ReLU and used again after it (``relu(f(h)) + h``,
    ``x + g(x)``) is carried through the layers in between as extra outputs that the ReLU leaves as they are
    (:attr:`DenseLayer.identity`). Chains get no extra outputs.

    Args:
        model: a model in eval mode; its parameters' dtype is used.
        input_shape: shape of one input, without the batch dimension.

    Returns:
        ``[L_1, ..., L_k]``: ``model(x) = L_k(act(... act(L_1(x.flatten()))))``, each ``weight`` ``[out, in]``,
        ``act`` the ReLU after each layer (:func:`activate`).

    Raises:
        NotLinearizable: the model is not such a network (the message names the offending op).
    """
    gm = _graph_module(model)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float64
    device = param.device if param is not None else torch.device("cpu")
    graph = _Graph(gm)
    layers: list[DenseLayer] = []
    present = [_Slot(graph.input, tuple(input_shape))]  # what the state between layers holds
    for level in range(1, graph.depth + 2):
        layer, present = graph.layer(level, present, dtype, device)
        layers.append(layer)
    return layers


@dataclass
class _Slot:
    """One value held in the state between two layers: an atom (the input or a ReLU output) and its shape."""

    node: fx.Node
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class _Graph:
    """A traced model read as ReLUs (atoms, by depth) and affine ops (each a function of its computed inputs)."""

    def __init__(self, gm: fx.GraphModule):
        roles = _roles(gm.graph)
        self.input: fx.Node | None = None
        self.steps: dict[fx.Node, tuple[str, Callable[..., Tensor], list[fx.Node]]] = {}
        self.output: fx.Node | None = None
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                if self.input is not None:
                    raise NotLinearizable("the model takes more than one input")
                self.input = node
            elif node.op == "output":
                value = _returned(gm, node)
                if not (isinstance(value, fx.Node) and (value in self.steps or value is self.input)):
                    raise NotLinearizable("the model's output is not the end of the chain")
                self.output = value
            elif roles[node] == "chain":
                computed = list(dict.fromkeys(n for n in node.all_input_nodes if roles[n] == "chain"))
                if len(computed) == 1:
                    kind, fn = _step(gm, node, computed[0], roles)
                elif len(computed) == 2:
                    kind, fn = "affine", _join(gm, node, computed, roles)
                else:
                    raise NotLinearizable(f"op {node.name} is not a chain step")
                self.steps[node] = (kind, fn, computed)
        if self.input is None or self.output is None:
            raise NotLinearizable("the model has no output")
        for node, (_, _, inputs) in self.steps.items():
            shared = [u for u in inputs[0].users if u is not node and u in self.steps or u.op == "output"]
            if _inplace(gm, node) and shared:
                raise NotLinearizable(f"the in-place op {node.name} overwrites a value that is used again")
        # depth of each live value: the most ReLUs on a path from the input (a ReLU output is an atom)
        live, stack = set(), [self.output]
        while stack:
            n = stack.pop()
            if n not in live:
                live.add(n)
                stack.extend(self.steps[n][2] if n in self.steps else [])
        self.order = [n for n in gm.graph.nodes if n in live]
        self.level = {self.input: 0}
        for n in self.order:
            if n in self.steps:
                kind, _, inputs = self.steps[n]
                self.level[n] = max(self.level[i] for i in inputs) + (kind == "relu")
        self.relus = [n for n in self.order if n in self.steps and self.steps[n][0] == "relu"]
        self.depth = max((self.level[n] for n in self.relus), default=0)
        # last layer that reads each atom (layer l computes the ReLUs of level l; layer depth + 1 the output)
        self.last_use: dict[fx.Node, int] = {}
        for target, layer in [(r, self.level[r]) for r in self.relus] + [(self.output, self.depth + 1)]:
            for atom in self._atoms(self.steps[target][2][0] if target in self.relus else target):
                self.last_use[atom] = max(self.last_use.get(atom, 0), layer)

    def _is_atom(self, n: fx.Node) -> bool:
        return n is self.input or (n in self.steps and self.steps[n][0] == "relu")

    def _atoms(self, node: fx.Node) -> set[fx.Node]:
        """The atoms an affine value is computed from (through affine ops only)."""
        out, stack, seen = set(), [node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if self._is_atom(n):
                out.add(n)
            else:
                stack.extend(self.steps[n][2])
        return out

    def _evaluate(self, env: dict[fx.Node, Tensor], targets: list[fx.Node]) -> list[Tensor]:
        needed, stack = set(), list(targets)
        while stack:
            n = stack.pop()
            if n not in needed and n not in env:
                if self._is_atom(n):  # an atom is read from the state, never computed
                    raise NotLinearizable(f"internal: value {n.name} is not carried to this layer")
                needed.add(n)
                stack.extend(self.steps[n][2])
        with torch.no_grad():
            for n in self.order:
                if n in needed:
                    _, fn, inputs = self.steps[n]
                    try:
                        env[n] = fn(*[env[i] for i in inputs])
                    except RuntimeError as exc:
                        raise NotLinearizable(f"op {n.name} fails on a batch of inputs ({exc})") from exc
        return [env[t] for t in targets]

    def layer(self, level: int, present: list[_Slot], dtype, device) -> tuple[DenseLayer, list[_Slot]]:
        """Layer ``level``: the dense map from the state ``present`` to the next layer's pre-activations (the
        ReLUs of this level, then the carried atoms; the model's output after the last ReLU), and the next state."""
        n_in = sum(slot.size for slot in present)
        if n_in > MAX_FEATURES:
            raise NotLinearizable(f"a layer has {n_in} input features (more than {MAX_FEATURES})")
        basis = torch.cat([torch.zeros(1, n_in, dtype=dtype, device=device),
                           torch.eye(n_in, dtype=dtype, device=device)])
        env: dict[fx.Node, Tensor] = {}
        for slot, part in zip(present, basis.split([slot.size for slot in present], dim=1)):
            env[slot.node] = part.reshape(n_in + 1, *slot.shape)
        if level > self.depth:
            (out,) = self._evaluate(env, [self.output])
            return _dense_rows([out], n_in), []
        relus = [r for r in self.relus if self.level[r] == level]
        values = self._evaluate(env, [self.steps[r][2][0] for r in relus])
        slots = [_Slot(r, tuple(v.shape[1:])) for r, v in zip(relus, values)]
        carried = [torch.zeros(v[0].numel(), dtype=torch.bool, device=device) for v in values]
        for slot in present:
            if self.last_use.get(slot.node, 0) > level:  # still read after this layer: carry it past the ReLU
                slots.append(slot)
                values.append(env[slot.node])
                carried.append(torch.ones(slot.size, dtype=torch.bool, device=device))
        layer = _dense_rows(values, n_in)
        mask = torch.cat(carried)
        return DenseLayer(layer.weight, layer.bias, mask if bool(mask.any()) else None), slots


def _keeps_batch(dims: Any, ndim: int) -> bool:
    """Whether reducing over ``dims`` (an int or a sequence of ints; None: all) leaves the batch dimension."""
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, int) for d in dims):
        return False
    return all(d % ndim != 0 for d in dims)


def _inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a node overwrites its first input (the graph is read as if every op were pure)."""
    if node.op == "call_module":  # (an in-place Dropout in eval mode leaves its input as it is)
        mod = gm.get_submodule(node.target)
        return isinstance(mod, nn.ReLU) and mod.inplace
    if isinstance(node.target, OpOverload):
        return node.target._schema.name.endswith("_")  # aten.relu_, aten.add_
    if node.target in _RELU_FUNCTIONS:
        return node.kwargs.get("inplace") is True or (len(node.args) > 1 and node.args[1] is True)
    return False


def _dense_rows(values: list[Tensor], n_in: int) -> DenseLayer:
    """The dense layer whose outputs are ``values`` evaluated on the basis (row 0: zero, row i: e_i)."""
    for v in values:
        if v.dim() == 0 or v.shape[0] != n_in + 1:
            raise NotLinearizable("an affine op changes the batch dimension")
    flat = torch.cat([v.reshape(n_in + 1, -1) for v in values], dim=1)
    if flat.shape[1] > MAX_FEATURES:
        raise NotLinearizable(f"a layer has {flat.shape[1]} features (more than {MAX_FEATURES})")
    bias = flat[0]
    return DenseLayer(weight=(flat[1:] - bias).T.contiguous(), bias=bias.clone())


_JOIN_FUNCTIONS = {operator.add, operator.sub, torch.add, torch.sub}
_JOIN_ATEN = {_ATEN.add.Tensor, _ATEN.sub.Tensor, _ATEN.add_.Tensor, _ATEN.sub_.Tensor}


def _join(gm: fx.GraphModule, node: fx.Node, computed: list[fx.Node],
          roles: dict[fx.Node, str]) -> Callable[[Tensor, Tensor], Tensor]:  # fmt: skip
    """``node`` adding or subtracting two computed values (a residual connection): its function of both."""
    target = node.target
    ok = (node.op == "call_function" and (target in _JOIN_FUNCTIONS or target in _JOIN_ATEN)) or (
        node.op == "call_method" and target in ("add", "sub"))
    args = list(node.args)
    if not ok or sum(any(a is c for c in computed) for a in args[:2]) != 2 or len(args) > 2:
        raise NotLinearizable(f"op {_op_name(target)} ({node.name}) mixes two computed values (only add and sub may)")
    aten = target in _JOIN_ATEN

    def call(x: Tensor, y: Tensor) -> Tensor:
        env = {computed[0]: x, computed[1]: y}
        a = [env[v] for v in args]
        kw = {k: _const(gm, v, roles if aten else None, x.shape[0]) for k, v in node.kwargs.items()}
        if x.dim() != y.dim() or x.dim() < 2 or x.shape[0] != y.shape[0]:  # broadcasting only along the features
            raise NotLinearizable(f"op {_op_name(target)} ({node.name}) broadcasts one computed value over another")
        return getattr(a[0], target)(a[1], **kw) if node.op == "call_method" else target(*a, **kw)

    return call


def _returned(gm: fx.GraphModule, node: fx.Node) -> Any:
    """What the model returns, from its ``output`` node: an exported module returns its one output unwrapped when
    its output spec is a single tensor; anything else (a tuple, a dict) is returned as it is and is no chain end."""
    value = node.args[0]
    info = getattr(gm.graph._codegen, "pytree_info", None)
    spec = getattr(info, "out_spec", None)
    if spec is not None and spec.is_leaf() and isinstance(value, (tuple, list)) and len(value) == 1:
        return value[0]
    return value
