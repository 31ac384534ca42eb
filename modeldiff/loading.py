"""Load a model file into a ``torch.nn.Module`` ready for comparison.

:func:`load_model` dispatches on the file suffix:

``.pt`` / ``.pth``
    Read with ``torch.load(weights_only=True)``, which runs no code from the file. A state_dict (a mapping of
    names to tensors, possibly under a ``"state_dict"`` key) needs ``arch="package.module:factory"``: the
    factory is imported and called with no arguments and must return the ``nn.Module`` whose weights the file
    holds (loaded with ``strict=True``). A file that holds a pickled module is refused unless
    ``trust_pickle=True`` (``--trust-pickle``), because unpickling it runs code from the file. A ``.pt`` file
    that is really a TorchScript or ``torch.export`` archive is loaded as such.
``.ts`` / ``.torchscript``
    TorchScript, loaded with ``torch.jit.load`` and wrapped in :class:`ScriptedModule`. TorchScript is
    supported, but torch has deprecated it: prefer ``.pt2`` (``torch.export.save``).
``.pt2``
    A ``torch.export`` archive (``torch.export.load(...).module()``), wrapped in :class:`ExportedModule`.
    Loading it runs no pickled code. The exported graph is specialised to the shapes it was exported with
    (including the batch size) unless it was exported with dynamic shapes.
``.onnx``
    Converted to torch by :mod:`modeldiff._onnx` (a subset of ONNX ops, listed there and in its errors).
``.nnet``
    The ReluDiff/NeuroDiff/Reluplex text format, loaded as :class:`NNetModel`, which normalizes raw inputs
    with the file's input means and ranges and returns raw (not de-normalized) outputs.

Every loaded model is in eval mode, converted to ``dtype`` (float64 by default), with ``requires_grad=False``
on its parameters. Where the input shape (without the batch dimension) is known from the file (ONNX, ``.nnet``,
``.pt2``), the model has an ``input_shape`` attribute. Every failure raises
:class:`~modeldiff.errors.ModelLoadError` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeldiff.errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED_SUFFIXES", "ExportedModule", "NNetModel", "ScriptedModule", "load_model", "load_nnet",
           "model_fingerprint"]

#: Suffixes :func:`load_model` understands (compared case-insensitively).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".pt2", ".ts", ".torchscript", ".onnx", ".nnet")

#: Keys under which checkpoints commonly nest their state_dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict")


# ----------------------------------------------------------------------------------------------- public API


def load_model(path: str | os.PathLike, *, arch: str | None = None, trust_pickle: bool = False,
               dtype: torch.dtype = torch.float64) -> nn.Module:  # fmt: skip
    """Load the model in ``path`` (see the module docstring for the formats).

    Args:
        path: the model file.
        arch: ``"package.module:factory"`` for a ``.pt``/``.pth`` file that holds a state_dict.
        trust_pickle: allow unpickling a whole pickled module (this runs code from the file).
        dtype: floating dtype the model is converted to.

    Raises:
        ModelLoadError: the file is missing, unreadable, of an unknown format, unsupported, or refused.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelLoadError(f"{p}: is a directory, not a model file")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ModelLoadError(f"{p}: dtype must be a floating torch dtype, got {dtype!r}")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ModelLoadError(f"{p}: unknown model format {suffix or '(no suffix)'!r}; "
                             f"supported suffixes: {', '.join(SUPPORTED_SUFFIXES)}")  # fmt: skip
    if arch is not None and suffix not in (".pt", ".pth"):
        logger.warning("%s: --arch is only used for .pt/.pth state_dicts; ignored", p)

    input_shape: tuple[int, ...] | None = None
    if suffix in (".pt", ".pth"):
        model = _load_torch_file(p, arch, trust_pickle)
    elif suffix in (".ts", ".torchscript"):
        model = _load_torchscript(p)
    elif suffix == ".pt2":
        model = _load_exported(p)
    elif suffix == ".onnx":
        from modeldiff._onnx import convert_onnx

        model, input_shape = convert_onnx(p)
    else:
        model = load_nnet(p)
    model = _finalize(model, p, dtype)
    if input_shape is not None:
        model.input_shape = input_shape
    return model


def model_fingerprint(path: str | os.PathLike) -> str:
    """The sha256 hex digest of the file's bytes."""
    p = Path(path)
    digest = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {p}") from None
    except OSError as exc:
        raise ModelLoadError(f"{p}: cannot read: {_one_line(exc)}") from None
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- wrappers


class ScriptedModule(nn.Module):
    """A plain ``nn.Module`` around a TorchScript module (``self.scripted``).

    TorchScript is supported but deprecated by torch; prefer ``.pt2`` files written by ``torch.export.save``.
    Whether bound computation can trace the scripted code is decided later, by the bounds code.
    """

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.scripted(*args, **kwargs)


class ExportedModule(nn.Module):
    """A plain ``nn.Module`` around ``torch.export.load(path).module()`` (``self.exported``).

    The exported graph's behaviour (e.g. batch norm statistics) was fixed at export time and its module does not
    support ``train()``/``eval()``, so this wrapper only sets the ``training`` flags, which the graph ignores.
    """

    def __init__(self, exported: nn.Module) -> None:
        super().__init__()
        self.exported = exported

    def train(self, mode: bool = True) -> ExportedModule:
        for module in self.modules():  # only the flags: the exported module's own train() raises
            module.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.exported(*args, **kwargs)


class NNetModel(nn.Module):
    """A ``.nnet`` ReLU network: ``layers((x - input_mean) / input_range)`` on raw inputs ``x``.

    ``layers`` is an ``nn.Sequential`` of ``nn.Linear`` with ``nn.ReLU`` after every layer but the last. Outputs
    are returned raw (not de-normalized; ``output_mean``/``output_range``, None when the file's header does not
    give them unambiguously, are kept for reference only). Inputs are not clamped: ``input_lower`` and
    ``input_upper`` (float64) hold the file's input mins and maxes, for regions to use.
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], mins: torch.Tensor,
                 maxes: torch.Tensor, means: torch.Tensor, ranges: torch.Tensor, *, output_mean: float | None = None,
                 output_range: float | None = None) -> None:  # fmt: skip
        super().__init__()
        # plain tensors, not buffers: traced as constants, which auto_LiRPA 0.3 bounds in batches (a buffer operand
        # of sub/div forces box-by-box bounding); _apply keeps them in the module's dtype and device
        self.input_mean = means.to(torch.float64).clone()
        self.input_range = ranges.to(torch.float64).clone()
        layers: list[nn.Module] = []
        for index, (w, b) in enumerate(zip(weights, biases)):
            linear = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], dtype=torch.float64)
            linear.weight = nn.Parameter(w.to(torch.float64).clone(), requires_grad=False)
            linear.bias = nn.Parameter(b.to(torch.float64).clone(), requires_grad=False)
            layers.append(linear)
            if index < len(weights) - 1:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        self.input_lower = mins.to(torch.float64).clone()
        self.input_upper = maxes.to(torch.float64).clone()
        self.input_shape = (int(weights[0].shape[1]),)
        self.output_mean = output_mean
        self.output_range = output_range

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.input_mean = fn(self.input_mean)
        self.input_range = fn(self.input_range)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - self.input_mean) / self.input_range)


# ------------------------------------------------------------------------------------------ torch formats


def _archive_kind(p: Path) -> str | None:
    """'torchscript' or 'export' for those zip archives, None otherwise (state_dicts, pickles, other files)."""
    try:
        if not zipfile.is_zipfile(p):
            return None
        with zipfile.ZipFile(p) as archive:
            names = [n.split("/", 1)[1] if "/" in n else n for n in archive.namelist()]
    except (OSError, zipfile.BadZipFile):
        return None
    if any(n.startswith("code/") or n == "constants.pkl" for n in names):
        return "torchscript"
    if any(n == "archive_format" or n.startswith("models/") for n in names) and "data.pkl" not in names:
        return "export"
    return None


def _load_torch_file(p: Path, arch: str | None, trust_pickle: bool) -> nn.Module:
    kind = _archive_kind(p)
    if kind == "torchscript":
        return _load_torchscript(p)
    if kind == "export":
        return _load_exported(p)
    try:
        obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        what = _pickled_global(exc)
        if "weights only load failed" not in str(exc).lower():
            raise ModelLoadError(f"{p}: cannot read torch file (corrupt or not written by torch.save): "
                                 f"{type(exc).__name__}: {_one_line(exc)}") from None  # fmt: skip
        if not (what or _is_pickle_stream(p)):
            raise ModelLoadError(f"{p}: cannot read torch file (corrupt or not written by torch.save): "
                                 "not a valid pickle stream") from None  # fmt: skip
        if not trust_pickle:
            raise ModelLoadError(
                f"{p}: holds a pickled module or other Python object{f' ({what})' if what else ''}, not plain "
                "weights; loading it runs code from the file, so it is only loaded with --trust-pickle "
                "(trust_pickle=True)") from None
        logger.info("%s: unpickling with weights_only=False (trusted)", p)
        try:
            obj = torch.load(p, weights_only=False, map_location="cpu")
        except Exception as exc2:
            raise ModelLoadError(f"{p}: cannot unpickle: {type(exc2).__name__}: {_one_line(exc2)}") from None
    except Exception as exc:
        raise ModelLoadError(f"{p}: cannot read torch file (corrupt or not written by torch.save): "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None  # fmt: skip
    if isinstance(obj, nn.Module):
        if arch is not None:
            logger.warning("%s: holds a whole module; --arch %s ignored", p, arch)
        return obj
    state_dict = _as_state_dict(obj)
    if state_dict is None:
        raise ModelLoadError(f"{p}: holds a {type(obj).__name__}, not a state_dict or a torch.nn.Module")
    if arch is None:
        raise ModelLoadError(f"{p}: holds a state_dict; pass --arch package.module:factory (arch=...) naming a "
                             "function that builds the module these weights belong to")  # fmt: skip
    model = _build_arch(arch, p)
    _load_state_dict(model, state_dict, arch, p)
    return model


def _pickled_global(exc: BaseException) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def _is_pickle_stream(p: Path) -> bool:
    """Whether the file's pickle (``data.pkl`` in a torch zip archive, else the file itself) parses as a pickle
    stream; it is only scanned with ``pickletools``, nothing is executed."""
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as archive:
                name = next((n for n in archive.namelist() if n.split("/")[-1] == "data.pkl"), None)
                if name is None:
                    return False
                with archive.open(name) as stream:
                    for _ in pickletools.genops(stream):
                        pass
        else:
            with open(p, "rb") as stream:
                for _ in pickletools.genops(stream):
                    pass
    except Exception:
        return False
    return True


def _is_tensor_map(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items())  # fmt: skip


def _as_state_dict(obj: Any) -> Mapping[str, torch.Tensor] | None:
    if _is_tensor_map(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if key in obj and _is_tensor_map(obj[key]):
                return obj[key]
    return None


def _build_arch(arch: str, p: Path) -> nn.Module:
    module_name, sep, attr = arch.partition(":")
    ident = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"
    if not sep or not re.fullmatch(ident, module_name.strip()) or not re.fullmatch(ident, attr.strip()):
        raise ModelLoadError(f"{p}: bad --arch {arch!r}; expected 'package.module:factory'")
    module_name, attr = module_name.strip(), attr.strip()
    try:
        module = _import(module_name)
    except Exception as exc:
        raise ModelLoadError(f"{p}: --arch {arch}: cannot import {module_name!r}: "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None  # fmt: skip
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelLoadError(f"{p}: --arch {arch}: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelLoadError(f"{p}: --arch {arch}: {attr!r} is not callable")
    try:
        model = factory()
    except Exception as exc:
        raise ModelLoadError(f"{p}: --arch {arch}: calling {attr}() failed: "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None  # fmt: skip
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{p}: --arch {arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import(module_name: str) -> Any:
    """Import ``module_name``; if its top-level package is not found, retry with the working directory on the path
    (console scripts do not put it there, but ``--arch mymodels:net`` usually means a file next to the user)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != module_name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(cwd)


def _load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str, p: Path) -> None:
    expected = set(model.state_dict().keys())
    given = set(state_dict.keys())
    if given and all(k.startswith("module.") for k in given) and not given & expected:
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}  # saved from DataParallel
        given = set(state_dict.keys())
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        parts = [f"{label} keys {_brief(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected))
                 if keys]  # fmt: skip
        raise ModelLoadError(f"{p}: state_dict does not match --arch {arch}: {'; '.join(parts)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [_one_line(exc)]
        raise ModelLoadError(f"{p}: state_dict does not match --arch {arch}: {'; '.join(details)[:400]}") from None


def _brief(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... (+{len(keys) - limit} more)' if len(keys) > limit else ''}]"


def _load_torchscript(p: Path) -> nn.Module:
    try:
        scripted = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{p}: cannot load TorchScript: {type(exc).__name__}: {_one_line(exc)}") from None
    return ScriptedModule(scripted)


def _load_exported(p: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation noise while unpickling specs
            program = torch.export.load(str(p))
        module = program.module()
    except Exception as exc:
        raise ModelLoadError(f"{p}: cannot load torch.export archive: {type(exc).__name__}: {_one_line(exc)}") from None
    wrapper = ExportedModule(module)
    wrapper._example_inputs = getattr(program, "example_inputs", None)  # used by _finalize to check dtype conversion
    return wrapper


def _finalize(model: nn.Module, p: Path, dtype: torch.dtype) -> nn.Module:
    try:
        model = model.to(dtype)
    except Exception as exc:
        raise ModelLoadError(f"{p}: cannot convert the model to {dtype}: {_one_line(exc)}") from None
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if isinstance(model, ExportedModule):
        examples = model.__dict__.pop("_example_inputs", None)
        _check_exported(model, examples, p, dtype)
    return model


def _check_exported(model: ExportedModule, examples: Any, p: Path, dtype: torch.dtype) -> None:
    """Run the exported graph once on its own example inputs cast to ``dtype``; set ``input_shape`` from them."""
    if not examples:
        return
    args, kwargs = examples

    def cast(x: Any) -> Any:
        return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    try:
        with torch.no_grad():
            model(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})
    except Exception as exc:
        raise ModelLoadError(f"{p}: the exported program does not run in {dtype}: {_one_line(exc)}") from None
    if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
        x = cast(args[0])
        n = int(x.shape[0])
        try:
            with torch.no_grad():
                model(torch.cat([x, x[:1]]))
        except Exception:
            raise ModelLoadError(
                f"{p}: the exported program only accepts batches of {n}; modeldiff evaluates batches of any size, "
                "so export with a dynamic batch dimension: torch.export.export(model, (x,), "
                "dynamic_shapes=({0: torch.export.Dim('batch')},))"
            ) from None
        model.input_shape = tuple(int(d) for d in args[0].shape[1:])


# ---------------------------------------------------------------------------------------------------- .nnet


def load_nnet(path: str | os.PathLike) -> NNetModel:
    """Parse a ``.nnet`` file (comments ``//``; sizes; symmetric flag; mins; maxes; means; ranges; then per layer
    one comma-separated weight row per output neuron followed by one bias per line)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{p}: cannot read .nnet file: {_one_line(exc)}") from None
    lines = iter([(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
                  if line.strip() and not line.strip().startswith("//")])  # fmt: skip
    last = [0]

    def row(what: str, count: int, exact: bool = True) -> list[float]:
        try:
            number, line = next(lines)
        except StopIteration:
            raise ModelLoadError(f"{p}: .nnet file ends after line {last[0]}; expected {what}") from None
        last[0] = number
        fields = [f for f in re.split(r"[,\s]+", line) if f]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_float(f))
            raise ModelLoadError(f"{p}: line {number}: non-numeric value {bad!r} in {what}") from None
        if len(values) < count or (exact and len(values) > count):
            raise ModelLoadError(f"{p}: line {number}: expected {'' if exact else 'at least '}{count} values for "
                                 f"{what}, found {len(values)}")  # fmt: skip
        return values

    def integers(values: list[float], what: str) -> list[int]:
        if any(v != int(v) or v < 1 for v in values):
            raise ModelLoadError(f"{p}: line {last[0]}: {what} must be positive integers, got {values}")
        return [int(v) for v in values]

    # Header lines may hold more values than needed (the ReluDiff ACAS Xu files list 7 input mins for 5 inputs);
    # like the reference C reader, use the first ones.
    num_layers, n_in, n_out, _ = integers(row("numLayers, inputSize, outputSize, maxLayerSize", 4, False)[:4], "sizes")
    sizes = integers(row("layer sizes", num_layers + 1, False)[: num_layers + 1], "layer sizes")
    if sizes[0] != n_in or sizes[-1] != n_out:
        raise ModelLoadError(f"{p}: line {last[0]}: layer sizes {sizes[0]}..{sizes[-1]} do not match "
                             f"inputSize {n_in} and outputSize {n_out}")  # fmt: skip
    row("the symmetric flag", 1, False)
    mins = torch.tensor(row("input minimums", n_in, False)[:n_in], dtype=torch.float64)
    maxes = torch.tensor(row("input maximums", n_in, False)[:n_in], dtype=torch.float64)
    means = row("input means and output mean", n_in, False)
    ranges = row("input ranges and output range", n_in, False)
    if any(r == 0 or r != r for r in ranges[:n_in]):
        raise ModelLoadError(f"{p}: line {last[0]}: input ranges must be nonzero numbers, got {ranges[:n_in]}")
    weights, biases = [], []
    for layer in range(num_layers):
        rows = [row(f"layer {layer + 1} weight row {j + 1}", sizes[layer]) for j in range(sizes[layer + 1])]
        bias = [row(f"layer {layer + 1} bias {j + 1}", 1)[0] for j in range(sizes[layer + 1])]
        weights.append(torch.tensor(rows, dtype=torch.float64))
        biases.append(torch.tensor(bias, dtype=torch.float64))
    extra = next(lines, None)
    if extra is not None:
        raise ModelLoadError(f"{p}: line {extra[0]}: unexpected data after the last layer")
    return NNetModel(weights, biases, mins, maxes, torch.tensor(means[:n_in], dtype=torch.float64),
                     torch.tensor(ranges[:n_in], dtype=torch.float64),
                     output_mean=means[n_in] if len(means) == n_in + 1 else None,
                     output_range=ranges[n_in] if len(ranges) == n_in + 1 else None)  # fmt: skip


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
