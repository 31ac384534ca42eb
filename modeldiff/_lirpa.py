"""The one adapter between modeldiff and auto_LiRPA.

Nothing else in modeldiff imports auto_LiRPA. This module

* imports it lazily (``import modeldiff`` stays cheap and never touches global logging or warnings:
  auto_LiRPA 0.3 calls ``logging.basicConfig`` and ``warnings.simplefilter`` at import, which we undo);
* applies the compatibility patches that auto_LiRPA 0.3 (the last PyPI release, 2022) needs on torch 2.x and
  numpy 2, each mirroring a later upstream fix and each applied only when the installed auto_LiRPA is 0.3 and
  the patched attribute is really missing, so that a newer auto_LiRPA installed from source runs untouched;
* keeps auto_LiRPA's TorchScript tracing behind :func:`bounded_module`;
* turns auto_LiRPA's failures into :class:`~modeldiff.errors.UnsupportedModelError` naming the op.

The patches (see :data:`PATCHES`):

``opset``
    auto_LiRPA 0.3 imports ``torch.onnx.symbolic_helper._set_opset_version``, which torch 2 removed. The shim
    really sets opset 12 in the TorchScript exporter's ``GLOBALS``, as the graph optimiser reads it there.
``node_getitem``
    auto_LiRPA 0.3 reads node attributes as ``node[name]``; torch 2 dropped ``torch._C.Node.__getitem__``.
``arraysetops``
    auto_LiRPA 0.3 imports ``numpy.lib.arraysetops.isin``; numpy 2 removed that module.
``named_members``
    torch 2 calls ``Module._named_members(..., remove_duplicate=...)``; auto_LiRPA 0.3 overrides it without
    that argument.

The fifth known problem (2-D Add/Sub nodes broken in conv "patches" mode) is avoided by always passing
``conv_mode='matrix'`` in :data:`BOUND_OPTS`, together with the two ``sparse_*_alpha`` switches without which
alpha-CROWN crashes on layers where most neurons are unstable.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import sys
import threading
import types
import warnings
from typing import Any, Callable

import torch

from modeldiff.errors import BoundError, UnsupportedModelError

logger = logging.getLogger(__name__)

#: Options passed to every ``BoundedModule``.
BOUND_OPTS: dict[str, Any] = {
    "conv_mode": "matrix",
    "sparse_features_alpha": False,
    "sparse_spec_alpha": False,
    "sparse_intermediate_bounds": False,
}

#: modeldiff method name -> auto_LiRPA ``compute_bounds`` method name.
METHODS = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "CROWN-Optimized"}

_lock = threading.RLock()
_module: types.SimpleNamespace | None = None
_applied: list[str] = []


def installed_version() -> str | None:
    """Version of the installed auto_LiRPA distribution, or None when it is not installed."""
    for name in ("auto_LiRPA", "auto-LiRPA", "auto_lirpa"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def needs_legacy_patches(version: str | None) -> bool:
    """True for auto_LiRPA 0.3.x, the release that predates torch 2; False for anything newer."""
    if version is None:
        return False
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return False
    return (major, minor) <= (0, 3)


# --- the patches -------------------------------------------------------------------------------------------


def _patch_opset() -> bool:
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return False
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    def _set_opset_version(opset_version: int) -> None:
        GLOBALS.export_onnx_opset_version = opset_version

    helper._set_opset_version = _set_opset_version
    return True


def _node_getitem(node: Any, key: str) -> Any:
    return getattr(node, node.kindOf(key))(key)


def _patch_node_getitem() -> bool:
    if hasattr(torch._C.Node, "__getitem__"):
        return False
    torch._C.Node.__getitem__ = _node_getitem
    return True


def _patch_arraysetops() -> bool:
    try:
        importlib.import_module("numpy.lib.arraysetops")
        return False
    except ImportError:
        pass
    import numpy

    shim = types.ModuleType("numpy.lib.arraysetops")
    shim.isin = numpy.isin  # type: ignore[attr-defined]
    sys.modules["numpy.lib.arraysetops"] = shim
    return True


def _patch_named_members(bounded_module_cls: type) -> bool:
    import inspect

    original = bounded_module_cls._named_members
    if "remove_duplicate" in inspect.signature(original).parameters:
        return False

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        memo: set = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [
            (prefix, self)
        ]
        for module_prefix, module in modules:
            for k, v in get_members_fn(module):
                if v is None or (remove_duplicate and v in memo):
                    continue
                if remove_duplicate:
                    memo.add(v)
                yield module_prefix + ("." if module_prefix else "") + k, v

    bounded_module_cls._named_members = _named_members
    return True


#: name -> function applying it (functions of the class take auto_LiRPA's BoundedModule).
PATCHES: dict[str, Callable[..., bool]] = {
    "opset": _patch_opset,
    "node_getitem": _patch_node_getitem,
    "arraysetops": _patch_arraysetops,
    "named_members": _patch_named_members,
}


def applied_patches() -> list[str]:
    """Names of the patches applied in this process (empty before the first :func:`load`)."""
    return list(_applied)


def load() -> types.SimpleNamespace:
    """Import auto_LiRPA (patched where needed) and return its ``BoundedModule``, ``BoundedTensor``,
    ``PerturbationLpNorm``. Global logging and warnings configuration is left as it was before the import."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        version = installed_version()
        if version is None:
            raise BoundError(
                "auto_LiRPA is not installed; install it with `pip install --no-deps auto_LiRPA==0.3` "
                "(see the README's set-up command)"
            )
        legacy = needs_legacy_patches(version)
        if legacy:
            for name in ("opset", "node_getitem", "arraysetops"):
                if PATCHES[name]():
                    _applied.append(name)
        root = logging.getLogger()
        saved_handlers, saved_level = list(root.handlers), root.level
        try:
            # record=True swallows what the import warns about (torch.jit.script deprecation) even after
            # auto_LiRPA's own simplefilter("once"), and restores the filters afterwards.
            with warnings.catch_warnings(record=True):
                auto_lirpa = importlib.import_module("auto_LiRPA")
                perturbations = importlib.import_module("auto_LiRPA.perturbations")
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            lirpa_logger = logging.getLogger("auto_LiRPA")
            if lirpa_logger.level < logging.WARNING:
                # auto_LiRPA logs at INFO/DEBUG for every bound; keep it quiet unless the user asks otherwise.
                lirpa_logger.setLevel(logging.WARNING)
        if legacy and _patch_named_members(auto_lirpa.BoundedModule):
            _applied.append("named_members")

        if _applied:
            logger.debug("auto_LiRPA %s: applied compatibility patches %s", version, _applied)
        _module = types.SimpleNamespace(
            version=version,
            BoundedModule=auto_lirpa.BoundedModule,
            BoundedTensor=auto_lirpa.BoundedTensor,
            PerturbationLpNorm=perturbations.PerturbationLpNorm,
        )
        return _module


# --- the adapter -------------------------------------------------------------------------------------------

_OP_HINT_KEYS = ("onnx::", "aten::", "prim::")


def _name_op(exc: BaseException) -> str:
    """Best-effort name of the op an auto_LiRPA failure is about."""
    text = f"{type(exc).__name__}: {exc}"
    for key in _OP_HINT_KEYS:
        at = text.find(key)
        if at >= 0:
            end = at
            while end < len(text) and (text[end].isalnum() or text[end] in ":_"):
                end += 1
            return text[at:end]
    for word in text.replace("'", " ").replace('"', " ").split():
        if word.startswith("Bound") and len(word) > 5:
            return word.rstrip(".,:")
    return text.splitlines()[0][:200] if text else type(exc).__name__


class _CapturedOps(logging.Handler):
    """Collects the op names auto_LiRPA logs for nodes it cannot convert (it raises a bare error without them)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.ops: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        for arg in record.args or ():
            op = getattr(arg, "op", None)
            attr = getattr(arg, "attr", None)
            if op == "aten::ATen" and isinstance(attr, dict) and "operator" in attr:
                op = f"aten::{attr['operator']}"
            if isinstance(op, str) and op not in self.ops:
                self.ops.append(op)


_ARITHMETIC_NODES = {"BoundAdd", "BoundSub", "BoundMul", "BoundDiv"}


def _buffers_in_arithmetic(bm: Any) -> bool:
    """True when a registered buffer is an operand of add/sub/mul/div (e.g. ``(x - self.mean) / self.std``).

    auto_LiRPA 0.3 then sums the buffer's A matrix over the batch and reshapes it back per batch element, which
    raises, or silently mixes the boxes of a batch when the sizes happen to divide. Such modules are bounded one
    box at a time (exact, since a batch of one sums nothing).
    """
    for node in bm.modules():
        if type(node).__name__ in _ARITHMETIC_NODES:
            if any(type(inp).__name__ == "BoundBuffers" for inp in getattr(node, "inputs", ())):
                return True
    return False


def bounded_module(model: torch.nn.Module, example: torch.Tensor, device: str | torch.device = "cpu"):
    """Trace ``model`` on ``example`` into an auto_LiRPA ``BoundedModule``.

    Raises:
        UnsupportedModelError: the model contains an op auto_LiRPA cannot trace or bound (the op is named).
    """
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise UnsupportedModelError(
            "TorchScript modules cannot be traced for bound propagation; re-export the model with torch.export "
            "(save as .pt2) or to ONNX"
        )
    lirpa = load()
    captured = _CapturedOps()
    lirpa_logger = logging.getLogger("auto_LiRPA")
    saved_propagate = lirpa_logger.propagate
    lirpa_logger.addHandler(captured)
    lirpa_logger.propagate = False  # its error lines about unsupported nodes become our one-line error
    try:
        with warnings.catch_warnings(), _default_dtype(example.dtype):
            warnings.simplefilter("ignore")
            bm = lirpa.BoundedModule(model, example, bound_opts=dict(BOUND_OPTS), device=str(device))
    except UnsupportedModelError:
        raise
    except Exception as exc:  # auto_LiRPA raises bare exceptions of every kind while tracing
        op = ", ".join(captured.ops) if captured.ops else _name_op(exc)
        raise UnsupportedModelError(f"auto_LiRPA cannot trace this model: unsupported op {op}") from exc
    finally:
        lirpa_logger.removeHandler(captured)
        lirpa_logger.propagate = saved_propagate
    bm._modeldiff_unbatched = _buffers_in_arithmetic(bm)
    unsupported = getattr(bm, "unsupported_ops", None) or []
    if unsupported:
        ops = sorted({getattr(node, "op", type(node).__name__) for node in unsupported} or {"?"})
        raise UnsupportedModelError(f"auto_LiRPA has no bounds for op {', '.join(map(str, ops))}")
    return bm


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """alpha-CROWN in auto_LiRPA 0.3 allocates its buffers in the default dtype; float64 bounds need it set."""
    saved = torch.get_default_dtype()
    with _lock:
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(saved)


def compute_bounds(
    bm: Any,
    lower: torch.Tensor,
    upper: torch.Tensor,
    method: str,
    C: torch.Tensor | None = None,
    alpha_iterations: int = 20,
    alpha_lr: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``C @ f(x)`` (or of ``f(x)``) for all ``x`` in the box ``[lower, upper]``.

    Returns ``(lb, ub)``, each ``[batch, n_spec]``. ``method`` is a key of :data:`METHODS`.
    """
    if getattr(bm, "_modeldiff_unbatched", False) and lower.shape[0] > 1:
        parts = [
            compute_bounds(bm, lower[i : i + 1], upper[i : i + 1], method, None if C is None else C[i : i + 1],
                           alpha_iterations, alpha_lr)
            for i in range(lower.shape[0])
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    lirpa = load()
    center = (lower + upper) / 2
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=None, x_L=lower, x_U=upper)
    x = lirpa.BoundedTensor(center, ptb)
    kwargs: dict[str, Any] = {}
    if method == "alpha-crown":
        bm.set_bound_opts(
            {"optimize_bound_args": {"iteration": alpha_iterations, "lr_alpha": alpha_lr, "enable_beta_crown": False}}
        )
    try:
        with warnings.catch_warnings(), _default_dtype(lower.dtype):
            warnings.simplefilter("ignore")
            lb, ub = bm.compute_bounds(x=(x,), C=C, method=METHODS[method], **kwargs)
    except Exception as exc:
        raise UnsupportedModelError(f"auto_LiRPA failed to bound this model with {method}: {_name_op(exc)}") from exc
    return lb.detach(), ub.detach()
