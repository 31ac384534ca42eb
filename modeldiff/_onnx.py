"""A small ONNX -> torch converter for feed-forward verification models.

:func:`convert_onnx` reads an ONNX file with the ``onnx`` package and builds an :class:`OnnxModule`, an ordinary
``torch.nn.Module`` that replays the graph in topological order with torch ops. Weights become
``nn.Parameter`` s of ``nn.Linear`` / ``nn.Conv2d`` / ``nn.BatchNorm2d`` submodules where the node maps onto
one, and buffers otherwise, so that tracing-based tools (auto_LiRPA) see ordinary ops. Nodes whose inputs are
all constant are evaluated once at conversion (constant folding), and nodes that do not feed the output are
dropped.

Supported ops (default ONNX domain only; see :data:`SUPPORTED_OPS`):
Gemm (alpha, beta, transA, transB), MatMul, Add, Sub, Mul, Div, Relu, Sigmoid, Tanh, LeakyRelu,
Conv (2-D; strides, pads, dilations, group, auto_pad VALID, or SAME with stride 1), MaxPool (2-D),
AveragePool (2-D), GlobalAveragePool, BatchNormalization (inference), Flatten, Reshape (constant shape),
Identity, Constant, Transpose, Concat, Softmax, Squeeze / Unsqueeze (axes as attribute or constant input),
Dropout (identity).

The graph must have exactly one input (inputs that are initializers do not count) and one output. Its first
dimension is taken as the batch dimension: a Reshape to a constant shape that starts with 0, -1 or the declared
batch size keeps the runtime batch size (``x.reshape(x.shape[0], ...)``), so the converted model accepts any
batch size. Constants are kept in float64 (exact for float16/32 weights).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modeldiff.errors import ModelLoadError

SUPPORTED_OPS: tuple[str, ...] = (
    "Add", "AveragePool", "BatchNormalization", "Concat", "Constant", "Conv", "Div", "Dropout", "Flatten",
    "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Relu", "Reshape",
    "Sigmoid", "Softmax", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
)  # fmt: skip

# Inputs (by position) that must be constant at conversion time: they become module parameters or attributes.
_STATIC_INPUTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}),
    "BatchNormalization": frozenset({1, 2, 3, 4}),
    "Reshape": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Dropout": frozenset({1, 2}),
}

_F64 = torch.float64


class _Unsupported(Exception):
    """Raised by a node handler; turned into a ModelLoadError naming the file and node."""


# --------------------------------------------------------------------------------------------- modules


class OnnxModule(nn.Module):
    """The converted graph: ``nodes[i]`` computes value ``wiring[i][1]`` from values ``wiring[i][0]``."""

    def __init__(self, modules: Sequence[nn.Module], wiring: Sequence[tuple[tuple[str, ...], str]],
                 input_name: str, output_name: str) -> None:  # fmt: skip
        super().__init__()
        self.nodes = nn.ModuleList(modules)
        self._wiring = [(tuple(ins), out) for ins, out in wiring]
        self._input_name = input_name
        self._output_name = output_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self._input_name: x}
        for module, (ins, out) in zip(self.nodes, self._wiring):
            env[out] = module(*(env[name] for name in ins))
        return env[self._output_name]


class _Apply(nn.Module):
    """Calls ``fn`` on the node's inputs in ONNX order: dynamic ones from ``forward``, constants from buffers."""

    def __init__(self, fn: Callable[..., torch.Tensor], ins: Sequence[Any]) -> None:
        super().__init__()
        self.fn = fn
        self._spec: list[tuple[str, str | None]] = []
        for i, value in enumerate(ins):
            if value is None:
                self._spec.append(("none", None))
            elif isinstance(value, str):
                self._spec.append(("dyn", None))
            else:
                self.register_buffer(f"const{i}", value)
                self._spec.append(("const", f"const{i}"))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        it = iter(xs)
        args = [next(it) if kind == "dyn" else getattr(self, name) if kind == "const" else None
                for kind, name in self._spec]  # fmt: skip
        return self.fn(*args)

    def extra_repr(self) -> str:
        fn = self.fn.func if isinstance(self.fn, partial) else self.fn
        return getattr(fn, "__name__", repr(fn)).lstrip("_")


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm over dim 1 for any input of rank >= 2 (ONNX BatchNormalization is rank-generic)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank >= 2, got rank {input.dim()}")


class _Reshape(nn.Module):
    def __init__(self, shape: Sequence[int], batch_first: bool, allowzero: bool) -> None:
        super().__init__()
        self.shape = [int(d) for d in shape]
        self.batch_first = batch_first
        self.allowzero = allowzero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copy = not self.allowzero
        dims = [x.shape[i] if (d == 0 and copy) else d for i, d in enumerate(self.shape)]
        if self.batch_first and len(dims) >= 1:
            rest = dims[1:]
            n = x.shape[0]
            if -1 in rest or x.numel() == n * math.prod(rest):
                return x.reshape(n, *rest)
        return x.reshape(dims)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, batch_first={self.batch_first}"


class _Flatten(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        if axis == 1 and x.dim() >= 2:
            return torch.flatten(x, 1)
        return x.reshape(math.prod(x.shape[:axis]), -1)


class _GlobalAveragePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return F.adaptive_avg_pool2d(x, 1)
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


class _TransposeInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.t()


# ----------------------------------------------------------------------------------- tensor functions
# Module-level (not lambdas) so that converted models can be pickled and deep-copied.


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return torch.div(a, b)


def _gemm(a, b, c, *, alpha: float, beta: float, trans_a: bool, trans_b: bool) -> torch.Tensor:
    a = a.t() if trans_a else a
    b = b.t() if trans_b else b
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _transpose(x: torch.Tensor, *, perm: tuple[int, ...] | None) -> torch.Tensor:
    return x.permute(*perm) if perm else x.permute(*reversed(range(x.dim())))


def _concat(*xs: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat([x for x in xs if x is not None], dim=axis)


def _softmax(x: torch.Tensor, *, axis: int, legacy: bool) -> torch.Tensor:
    if not legacy:
        return torch.softmax(x, dim=axis)
    # opset < 13: coerce to 2-D at `axis`, softmax over the second dimension, restore the shape.
    axis = axis + x.dim() if axis < 0 else axis
    if axis == x.dim() - 1:
        return torch.softmax(x, dim=-1)
    shape = x.shape
    return torch.softmax(x.reshape(math.prod(shape[:axis]), -1), dim=1).reshape(shape)


def _squeeze(x: torch.Tensor, *unused: Any, axes: tuple[int, ...] | None) -> torch.Tensor:
    return x.squeeze(axes) if axes else x.squeeze()


def _unsqueeze(x: torch.Tensor, *unused: Any, axes: tuple[int, ...]) -> torch.Tensor:
    rank = x.dim() + len(axes)
    for axis in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(axis)
    return x


_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div}


# ------------------------------------------------------------------------------------------ handlers


def _skip_init(cls: type[nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    return torch.nn.utils.skip_init(cls, *args, dtype=_F64, **kwargs)


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    setattr(module, name, nn.Parameter(value.detach().to(_F64).clone(), requires_grad=False))


def _ints(value: Any) -> list[int]:
    return [int(v) for v in value]


def _gemm_handler(attrs: dict[str, Any], ins: list[Any], ctx: _Context) -> nn.Module:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0))
    if isinstance(a, str) and isinstance(b, torch.Tensor) and b.dim() == 2 and not isinstance(c, str):
        weight = (b if trans_b else b.t()) * alpha  # (out, in)
        out_f, in_f = weight.shape
        bias = None
        extra = None
        if c is not None:
            cb = c.to(_F64) * beta
            if cb.dim() == 0 or (cb.dim() <= 2 and cb.numel() in (1, out_f) and (cb.dim() < 2 or cb.shape[0] == 1)):
                bias = torch.broadcast_to(cb.reshape(-1), (out_f,))
            else:
                extra = cb
        linear = _skip_init(nn.Linear, in_f, out_f, bias=bias is not None)
        _set(linear, "weight", weight)
        if bias is not None:
            _set(linear, "bias", bias)
        parts: list[nn.Module] = [_TransposeInput()] if trans_a else []
        parts.append(linear)
        if extra is not None:
            parts.append(_Apply(torch.add, ["x", extra]))
        return parts[0] if len(parts) == 1 else nn.Sequential(*parts)
    fn = partial(_gemm, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
    return _Apply(fn, ins if len(ins) > 2 else [*ins, None])


def _matmul_handler(attrs: dict[str, Any], ins: list[Any], ctx: _Context) -> nn.Module:
    a, b = ins
    if isinstance(a, str) and isinstance(b, torch.Tensor) and b.dim() == 2:
        linear = _skip_init(nn.Linear, b.shape[0], b.shape[1], bias=False)
        _set(linear, "weight", b.t())
        return linear
    return _Apply(torch.matmul, ins)


def _pads_2d(attrs: dict[str, Any], op: str, kernel: Sequence[int], dilations: Sequence[int],
             strides: Sequence[int]) -> list[int]:  # fmt: skip
    """[top, left, bottom, right] from ``pads`` / ``auto_pad``."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = _ints(attrs.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise _Unsupported(f"{op} pads {pads} are not 2-D")
        return pads
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and all(s == 1 for s in strides):
        totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
        small = [t // 2 for t in totals]
        big = [t - t // 2 for t in totals]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return [*begin, *end]
    raise _Unsupported(f"{op} auto_pad={auto_pad} with strides {list(strides)} is not supported")


def _conv_handler(attrs: dict[str, Any], ins: list[Any], ctx: _Context) -> nn.Module:
    w = ins[1]
    b = ins[2] if len(ins) > 2 else None
    if w.dim() != 4:
        raise _Unsupported(f"Conv with a {w.dim()}-D weight is not supported (only 2-D convolution)")
    kernel = list(w.shape[2:])
    strides = _ints(attrs.get("strides", [1, 1]))
    dilations = _ints(attrs.get("dilations", [1, 1]))
    group = int(attrs.get("group", 1))
    top, left, bottom, right = _pads_2d(attrs, "Conv", kernel, dilations, strides)
    symmetric = top == bottom and left == right
    conv = _skip_init(nn.Conv2d, w.shape[1] * group, w.shape[0], tuple(kernel), stride=tuple(strides),
                      padding=(top, left) if symmetric else 0, dilation=tuple(dilations), groups=group,
                      bias=b is not None)  # fmt: skip
    _set(conv, "weight", w)
    if b is not None:
        _set(conv, "bias", b)
    if symmetric:
        return conv
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)


def _pool_handler(attrs: dict[str, Any], ins: list[Any], ctx: _Context, *, op: str) -> nn.Module:
    kernel = _ints(attrs.get("kernel_shape", []))
    if len(kernel) != 2:
        raise _Unsupported(f"{op} with kernel_shape {kernel} is not supported (only 2-D pooling)")
    strides = _ints(attrs.get("strides", [1, 1]))
    dilations = _ints(attrs.get("dilations", [1, 1]))
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    top, left, bottom, right = _pads_2d(attrs, op, kernel, dilations, strides)
    effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    fits = top == bottom and left == right and top <= effective[0] // 2 and left <= effective[1] // 2
    padding = (top, left) if fits else (0, 0)
    if op == "MaxPool":
        pool: nn.Module = nn.MaxPool2d(kernel, strides, padding, tuple(dilations), ceil_mode=ceil_mode)
        pad_value = float("-inf")
    else:
        if any(d != 1 for d in dilations):
            raise _Unsupported(f"AveragePool with dilations {dilations} is not supported")
        include = bool(attrs.get("count_include_pad", 0))
        if not fits and not include:
            raise _Unsupported("AveragePool with asymmetric or oversized pads and count_include_pad=0 is not supported")
        pool = nn.AvgPool2d(kernel, strides, padding, ceil_mode=ceil_mode, count_include_pad=include)
        pad_value = 0.0
    if fits:
        return pool
    return nn.Sequential(nn.ConstantPad2d((left, right, top, bottom), pad_value), pool)


def _batchnorm_handler(attrs: dict[str, Any], ins: list[Any], ctx: _Context) -> nn.Module:
    if int(attrs.get("training_mode", 0)):
        raise _Unsupported("BatchNormalization with training_mode=1 is not supported (inference only)")
    scale, bias, mean, var = ins[1:5]
    bn = _BatchNorm(scale.numel(), eps=float(attrs.get("epsilon", 1e-5)), dtype=_F64)
    with torch.no_grad():
        bn.weight.copy_(scale.reshape(-1))
        bn.bias.copy_(bias.reshape(-1))
        bn.running_mean.copy_(mean.reshape(-1))
        bn.running_var.copy_(var.reshape(-1))
    return bn.eval()


def _reshape_handler(attrs: dict[str, Any], ins: list[Any], ctx: _Context) -> nn.Module:
    shape = _ints(ins[1].reshape(-1).tolist())
    allowzero = bool(attrs.get("allowzero", 0))
    lead = shape[0] if shape else None
    batch_first = lead is not None and (
        lead == -1 or (lead == 0 and not allowzero) or (ctx.batch is not None and lead == ctx.batch))
    return _Reshape(shape, batch_first, allowzero)


def _axes(attrs: dict[str, Any], ins: list[Any], op: str) -> tuple[int, ...] | None:
    if len(ins) > 1 and ins[1] is not None:
        return tuple(_ints(ins[1].reshape(-1).tolist()))
    if "axes" in attrs:
        return tuple(_ints(attrs["axes"]))
    if op == "Unsqueeze":
        raise _Unsupported("Unsqueeze without axes")
    return None


def _softmax_handler(attrs: dict[str, Any], ins: list[Any], ctx: _Context) -> nn.Module:
    legacy = ctx.opset < 13
    axis = int(attrs.get("axis", 1 if legacy else -1))
    return _Apply(partial(_softmax, axis=axis, legacy=legacy), ins)


def _simple(module_factory: Callable[[dict[str, Any]], nn.Module]) -> Callable[..., nn.Module]:
    return lambda attrs, ins, ctx: module_factory(attrs)


_HANDLERS: dict[str, Callable[[dict[str, Any], list[Any], _Context], nn.Module]] = {
    "Gemm": _gemm_handler,
    "MatMul": _matmul_handler,
    **{op: (lambda fn: lambda attrs, ins, ctx: _Apply(fn, ins))(fn) for op, fn in _BINARY.items()},
    "Relu": _simple(lambda a: nn.ReLU()),
    "Sigmoid": _simple(lambda a: nn.Sigmoid()),
    "Tanh": _simple(lambda a: nn.Tanh()),
    "LeakyRelu": _simple(lambda a: nn.LeakyReLU(float(a.get("alpha", 0.01)))),
    "Conv": _conv_handler,
    "MaxPool": partial(_pool_handler, op="MaxPool"),
    "AveragePool": partial(_pool_handler, op="AveragePool"),
    "GlobalAveragePool": _simple(lambda a: _GlobalAveragePool()),
    "BatchNormalization": _batchnorm_handler,
    "Flatten": _simple(lambda a: nn.Flatten(1) if int(a.get("axis", 1)) == 1 else _Flatten(int(a["axis"]))),
    "Reshape": _reshape_handler,
    "Identity": _simple(lambda a: nn.Identity()),
    "Dropout": _simple(lambda a: nn.Identity()),
    "Transpose": lambda attrs, ins, ctx: _Apply(
        partial(_transpose, perm=tuple(_ints(attrs["perm"])) if "perm" in attrs else None), ins),
    "Concat": lambda attrs, ins, ctx: _Apply(partial(_concat, axis=int(attrs["axis"])), ins),
    "Softmax": _softmax_handler,
    "Squeeze": lambda attrs, ins, ctx: _Apply(partial(_squeeze, axes=_axes(attrs, ins, "Squeeze")), ins[:1]),
    "Unsqueeze": lambda attrs, ins, ctx: _Apply(partial(_unsqueeze, axes=_axes(attrs, ins, "Unsqueeze")), ins[:1]),
}


# ----------------------------------------------------------------------------------------- conversion


class _Context:
    def __init__(self, opset: int, batch: int | None) -> None:
        self.opset = opset
        self.batch = batch


def _to_tensor(array: Any) -> torch.Tensor:
    import numpy as np

    array = np.asarray(array)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return torch.from_numpy(array.astype(np.float64))
    if array.dtype.kind in "iu":
        return torch.from_numpy(array.astype(np.int64))
    if array.dtype.kind == "b":
        return torch.from_numpy(array.copy())
    raise _Unsupported(f"constant of dtype {array.dtype} is not supported")


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
    return attrs


def _constant_value(attrs: dict[str, Any]) -> torch.Tensor:
    from onnx import numpy_helper

    if "value" in attrs:
        return _to_tensor(numpy_helper.to_array(attrs["value"]))
    for key, dtype in (("value_float", _F64), ("value_floats", _F64), ("value_int", torch.int64),
                       ("value_ints", torch.int64)):  # fmt: skip
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise _Unsupported(f"Constant with attributes {sorted(attrs)} is not supported")


def _unsupported_message(path: Path, ops: Sequence[str]) -> str:
    return (f"{path}: unsupported ONNX op(s) {', '.join(ops)}; supported ops: {', '.join(SUPPORTED_OPS)}")


def convert_onnx(path: str | Path) -> tuple[OnnxModule, tuple[int, ...] | None]:
    """Read ``path`` and convert it; returns the module and the input shape without the batch dim, if known."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError, OSError, external-data errors
        raise ModelLoadError(f"{path}: cannot read ONNX file (corrupt or not ONNX): {_one_line(exc)}") from None
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    consts: dict[str, torch.Tensor] = {}
    try:
        for init in graph.initializer:
            consts[init.name] = _to_tensor(numpy_helper.to_array(init))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read ONNX initializer: {_one_line(exc)}") from None
    inputs = [v for v in graph.input if v.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelLoadError(f"{path}: ONNX graph must have exactly one input and one output, found "
                             f"{len(inputs)} input(s) and {len(graph.output)} output(s)")  # fmt: skip
    input_name, output_name = inputs[0].name, graph.output[0].name
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]  # fmt: skip
    batch = dims[0] if dims else None
    input_shape = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None

    nodes = _live_nodes(path, graph.node, output_name)
    unsupported = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                          for n in nodes if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS})
    if unsupported:
        raise ModelLoadError(_unsupported_message(path, unsupported))

    ctx = _Context(opset, batch)
    dynamic = {input_name}
    used = {name for n in nodes for name in n.input} | {output_name}
    modules: list[nn.Module] = []
    wiring: list[tuple[tuple[str, ...], str]] = []
    for node in nodes:
        label = f"{node.op_type} node {node.name or node.output[0]!r}"
        extra = [o for o in node.output[1:] if o and o in used]
        if extra:
            raise ModelLoadError(f"{path}: {label}: only the first output is supported, but {extra} is used")
        try:
            attrs = _attributes(node)
            if node.op_type == "Constant":
                consts[node.output[0]] = _constant_value(attrs)
                continue
            ins: list[Any] = []
            for i, name in enumerate(node.input):
                if not name:
                    ins.append(None)
                elif name in consts:
                    ins.append(consts[name])
                elif name in dynamic:
                    if i in _STATIC_INPUTS.get(node.op_type, ()):
                        raise _Unsupported(f"input {i} ({name!r}) must be a constant (initializer or Constant)")
                    ins.append(name)
                else:
                    raise _Unsupported(f"input {name!r} is not defined before use")
            handler = _HANDLERS[node.op_type]
            if any(isinstance(v, str) for v in ins):
                module = handler(attrs, ins, ctx)
                modules.append(module)
                wiring.append((tuple(v for v in ins if isinstance(v, str)), node.output[0]))
                dynamic.add(node.output[0])
            else:  # constant folding: evaluate once, with the data inputs fed as runtime values
                static = _STATIC_INPUTS.get(node.op_type, frozenset())
                data = [i for i, v in enumerate(ins) if v is not None and i not in static]
                placeholders = [f"\0{i}" if i in data else v for i, v in enumerate(ins)]
                module = handler(attrs, placeholders, ctx).eval()
                with torch.no_grad():
                    consts[node.output[0]] = module(*(ins[i] for i in data)).detach()
        except _Unsupported as exc:
            raise ModelLoadError(f"{path}: {label}: {exc}") from None
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{path}: {label}: cannot convert: {_one_line(exc)}") from None
    if output_name not in dynamic:
        raise ModelLoadError(f"{path}: ONNX output {output_name!r} does not depend on the input")
    return OnnxModule(modules, wiring, input_name, output_name), input_shape


def _live_nodes(path: Path, nodes: Sequence[Any], output_name: str) -> list[Any]:
    """Nodes the output depends on, in topological order."""
    producer = {}
    for index, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = index
    live: set[int] = set()
    stack = [output_name]
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in live:
            live.add(index)
            stack.extend(name for name in nodes[index].input if name)
    order: list[int] = []
    state: dict[int, int] = {}  # 1 = visiting, 2 = done
    for root in sorted(live):
        stack2 = [(root, False)]
        while stack2:
            index, expanded = stack2.pop()
            if expanded:
                state[index] = 2
                order.append(index)
                continue
            if state.get(index) == 2:
                continue
            if state.get(index) == 1:
                raise ModelLoadError(f"{path}: ONNX graph has a cycle through node {nodes[index].name!r}")
            state[index] = 1
            stack2.append((index, True))
            for name in nodes[index].input:
                dep = producer.get(name) if name else None
                if dep is not None and state.get(dep) != 2:
                    if state.get(dep) == 1:
                        raise ModelLoadError(f"{path}: ONNX graph has a cycle through node {nodes[dep].name!r}")
                    stack2.append((dep, False))
    return [nodes[i] for i in order]


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
