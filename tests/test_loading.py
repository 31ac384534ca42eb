"""Tests of modeldiff.loading: every format round-trips, every failure is a one-line ModelLoadError."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeldiff.errors import ModelLoadError
from modeldiff.loading import (
    SUPPORTED_SUFFIXES,
    ExportedModule,
    NNetModel,
    ScriptedModule,
    load_model,
    model_fingerprint,
)
from tests import _archs

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ACAS = Path(__file__).resolve().parents[2] / "shared/benchmarks/acasxu/nets/ACASXU_run2a_1_1_batch_2000.nnet"
TOL = 1e-6


# ------------------------------------------------------------------------------------------------ helpers


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and (for batch norm) random running statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture
def mlp() -> nn.Module:
    return _randomize(_archs.small_mlp(), 0)


@pytest.fixture
def cnn() -> nn.Module:
    return _randomize(_archs.small_cnn(), 1)


def _x_mlp(batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, 4, generator=torch.Generator().manual_seed(10))


def _x_cnn(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(11))


def _check_same(loaded: nn.Module, reference: nn.Module, x: torch.Tensor, dtype=torch.float64) -> None:
    """``loaded`` is a finalized model (eval, dtype, frozen) computing what ``reference`` computes."""
    assert isinstance(loaded, nn.Module)
    assert not loaded.training
    assert all(not m.training for m in loaded.modules() if not isinstance(m, torch.jit.ScriptModule))
    assert all(not p.requires_grad for p in loaded.parameters())
    assert all(p.dtype == dtype for p in loaded.parameters() if p.is_floating_point())
    with torch.no_grad():
        expected = reference.double()(x.double())
        got = loaded(x.to(dtype))
    assert got.dtype == dtype
    assert got.shape == expected.shape
    tol = TOL if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def _onnx_export(model: nn.Module, x: torch.Tensor, path: Path, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float(), (x.float(),), str(path), dynamo=False, **kwargs)


def _save_onnx(path: Path, nodes, inputs, outputs, initializers=(), opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def _init(name: str, array) -> onnx.TensorProto:
    array = np.asarray(array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return numpy_helper.from_array(array, name)


def _f32(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------- generic errors


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"^model file not found: .*nope\.pt$"):
        load_model(tmp_path / "nope.pt")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"model\.h5: unknown model format '\.h5'; supported suffixes: .*\.onnx"):
        load_model(path)
    assert {".pt", ".pth", ".pt2", ".onnx", ".nnet", ".ts"} <= set(SUPPORTED_SUFFIXES)


def test_directory(tmp_path):
    folder = tmp_path / "model.pt"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(folder)


def test_bad_dtype(tmp_path, mlp):
    path = tmp_path / "m.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(ModelLoadError, match="floating"):
        load_model(path, arch="tests._archs:small_mlp", dtype=torch.int64)


def test_fingerprint(tmp_path):
    path = tmp_path / "m.nnet"
    path.write_bytes(b"some bytes\n")
    assert model_fingerprint(path) == hashlib.sha256(b"some bytes\n").hexdigest()
    with pytest.raises(ModelLoadError, match="model file not found"):
        model_fingerprint(tmp_path / "missing.onnx")


# ---------------------------------------------------------------------------------------------- .pt / .pth


def test_state_dict_with_arch(tmp_path, mlp):
    path = tmp_path / "m.pth"
    torch.save(mlp.state_dict(), path)
    loaded = load_model(path, arch="tests._archs:small_mlp")
    _check_same(loaded, mlp, _x_mlp())
    assert not hasattr(loaded, "input_shape")


def test_state_dict_nested_and_cnn(tmp_path, cnn):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": cnn.state_dict()}, path)
    _check_same(load_model(path, arch="tests._archs:small_cnn"), cnn, _x_cnn())


def test_float32(tmp_path, mlp):
    path = tmp_path / "m.pt"
    torch.save(mlp.state_dict(), path)
    _check_same(load_model(path, arch="tests._archs:small_mlp", dtype=torch.float32), mlp, _x_mlp(), torch.float32)


def test_state_dict_without_arch(tmp_path, mlp):
    path = tmp_path / "m.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"m\.pt: holds a state_dict; pass --arch package\.module:factory"):
        load_model(path)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("tests._archs", r"bad --arch 'tests\._archs'; expected 'package\.module:factory'"),
        ("tests._archs:", "bad --arch"),
        ("a b:c", "bad --arch"),
        ("no_such_pkg_xyz.mod:f", r"cannot import 'no_such_pkg_xyz\.mod': ModuleNotFoundError"),
        ("tests._archs:missing", r"module 'tests\._archs' has no attribute 'missing'"),
        ("tests._archs:not_a_module", r"returned a int, not a torch\.nn\.Module"),
        ("tests._archs:broken", r"calling broken\(\) failed: RuntimeError: factory exploded"),
    ],
)
def test_bad_arch(tmp_path, mlp, arch, message):
    path = tmp_path / "m.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(path, arch=arch)
    assert "\n" not in str(info.value)


def test_state_dict_mismatch_keys(tmp_path, mlp):
    path = tmp_path / "m.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"state_dict does not match --arch tests\._archs:small_cnn: "
                                             r"missing keys \[.*1\.running_mean.*\]; unexpected keys \[.*4\.bias"):
        load_model(path, arch="tests._archs:small_cnn")


def test_state_dict_mismatch_shapes(tmp_path, mlp):
    path = tmp_path / "m.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"state_dict does not match --arch tests\._archs:wide_mlp: "
                                             r"size mismatch for 0\.weight") as info:
        load_model(path, arch="tests._archs:wide_mlp")
    assert "\n" not in str(info.value)


def test_pickled_module_refused_then_trusted(tmp_path, cnn):
    path = tmp_path / "whole.pt"
    torch.save(cnn, path)
    with pytest.raises(ModelLoadError, match=r"whole\.pt: holds a pickled module.*runs code from the file.*"
                                             r"--trust-pickle") as info:
        load_model(path)
    assert "\n" not in str(info.value)
    loaded = load_model(path, trust_pickle=True)
    _check_same(loaded, cnn, _x_cnn())


def test_trusted_pickle_of_non_module(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"weights": [1, 2, 3], "fn": F.relu}, path)
    with pytest.raises(ModelLoadError, match="trust"):
        load_model(path)
    with pytest.raises(ModelLoadError, match=r"holds a dict, not a state_dict or a torch\.nn\.Module"):
        load_model(path, trust_pickle=True)


def test_plain_tensor_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelLoadError, match=r"holds a Tensor, not a state_dict"):
        load_model(path)


@pytest.mark.parametrize("content", [b"definitely not a torch file", b"", b"PK\x03\x04truncated zip"])
def test_corrupt_pt(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"bad\.pt: cannot read torch file") as info:
        load_model(path, trust_pickle=True)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- TorchScript / .pt2


@pytest.mark.parametrize("suffix", [".pt", ".ts"])
def test_torchscript(tmp_path, cnn, suffix):
    path = tmp_path / f"traced{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(cnn, _x_cnn()).save(str(path))
        loaded = load_model(path)  # detected as TorchScript before torch.load, even as .pt
    assert isinstance(loaded, ScriptedModule)
    _check_same(loaded, cnn, _x_cnn())


def test_corrupt_torchscript(tmp_path):
    path = tmp_path / "bad.torchscript"
    path.write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match=r"bad\.torchscript: cannot load TorchScript"):
        load_model(path)


def test_pt2(tmp_path, cnn):
    x = _x_cnn()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(cnn, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    loaded = load_model(path)
    assert isinstance(loaded, ExportedModule)
    assert loaded.input_shape == (1, 8, 8)
    _check_same(loaded, cnn, x)
    loaded.train()  # the exported module refuses train()/eval(); the wrapper must not pass them on
    loaded.eval()


def test_pt2_float32(tmp_path, mlp):
    x = _x_mlp()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(mlp, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    _check_same(load_model(path, dtype=torch.float32), mlp, x, torch.float32)


def test_pt2_static_batch_refused_with_advice(tmp_path, mlp):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(mlp, (_x_mlp(),)), str(path))
    with pytest.raises(ModelLoadError, match=r"only accepts batches of \d+; .*dynamic_shapes"):
        load_model(path)


def test_corrupt_pt2(tmp_path):
    path = tmp_path / "bad.pt2"
    path.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"bad\.pt2: cannot load torch\.export archive"):
        load_model(path)


# ------------------------------------------------------------------------------------------------- ONNX


def test_onnx_export_mlp(tmp_path, mlp):
    path = tmp_path / "mlp.onnx"
    _onnx_export(mlp, _x_mlp(2), path)
    loaded = load_model(path)
    assert loaded.input_shape == (4,)
    assert any(isinstance(m, nn.Linear) for m in loaded.modules())
    _check_same(loaded, mlp, _x_mlp(7))  # a different batch size than exported


def test_onnx_export_cnn(tmp_path, cnn):
    path = tmp_path / "cnn.onnx"
    _onnx_export(cnn, _x_cnn(1), path, dynamic_axes={"input": {0: "batch"}}, input_names=["input"])
    loaded = load_model(path)
    assert loaded.input_shape == (1, 8, 8)
    assert any(isinstance(m, nn.Conv2d) for m in loaded.modules())
    _check_same(loaded, cnn, _x_cnn(4))


class _ViewNet(nn.Module):
    """Conv then ``x.view(x.shape[0], -1)``: a Reshape whose shape the exporter folds to a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_onnx_export_reshape_keeps_batch(tmp_path):
    model = _randomize(_ViewNet(), 2)
    path = tmp_path / "view.onnx"
    _onnx_export(model, _x_cnn(2), path)
    _check_same(load_model(path), model, _x_cnn(5))


def _many_ops_graph(path: Path) -> tuple[Path, callable]:
    """A graph using most supported element-wise/shape ops, and its torch reference."""
    w1, c1 = _f32((6, 5), 1), _f32((5,), 2)
    w2, b2 = _f32((5, 4), 3), _f32((4,), 4)
    s = _f32((4,), 5)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "c1"], ["h1"], alpha=0.5, beta=2.0),
        helper.make_node("LeakyRelu", ["h1"], ["h2"], alpha=0.2),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["h4"]),
        helper.make_node("Constant", [], ["c"], value_float=0.1),
        helper.make_node("Sub", ["h4", "c"], ["h5"]),
        helper.make_node("Mul", ["s", "h5"], ["h6"]),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Div", ["h6", "two"], ["h7"]),
        helper.make_node("Sigmoid", ["h7"], ["a"]),
        helper.make_node("Tanh", ["h7"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["h8"], axis=1),
        helper.make_node("Unsqueeze", ["h8", "ax1"], ["h9"]),
        helper.make_node("Transpose", ["h9"], ["h10"], perm=[0, 2, 1]),
        helper.make_node("Squeeze", ["h10", "ax2"], ["h11"]),
        helper.make_node("Identity", ["h11"], ["h12"]),
        helper.make_node("Dropout", ["h12"], ["h13"]),
        helper.make_node("Reshape", ["h13", "shape"], ["h14"]),
        helper.make_node("Softmax", ["h14"], ["h15"], axis=-1),
        helper.make_node("Flatten", ["h15"], ["h16"], axis=1),
        helper.make_node("Sub", ["h16", "h11"], ["h17"]),  # two dynamic operands
        helper.make_node("Relu", ["h17"], ["y"]),
        helper.make_node("Erf", ["x"], ["dead"]),  # does not feed the output: pruned, so not an error
    ]
    inits = [_init("w1", w1), _init("c1", c1), _init("w2", w2), _init("b2", b2), _init("s", s),
             _init("ax1", np.array([1], np.int64)), _init("ax2", np.array([2], np.int64)),
             _init("shape", np.array([-1, 2, 4], np.int64))]  # fmt: skip
    _save_onnx(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)  # fmt: skip

    def reference(x):
        t = {k: torch.from_numpy(v).double() for k, v in dict(w1=w1, c1=c1, w2=w2, b2=b2, s=s).items()}
        h7 = t["s"] * ((F.leaky_relu(0.5 * x @ t["w1"] + 2.0 * t["c1"], 0.2) @ t["w2"] + t["b2"]) - 0.1) / 2.0
        h11 = torch.cat([torch.sigmoid(h7), torch.tanh(h7)], dim=1)
        h16 = torch.softmax(h11.reshape(-1, 2, 4), dim=-1).flatten(1)
        return torch.relu(h16 - h11)

    return path, reference


def test_onnx_many_ops(tmp_path):
    path, reference = _many_ops_graph(tmp_path / "ops.onnx")
    loaded = load_model(path)
    assert loaded.input_shape == (6,)
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=TOL, atol=TOL)


def test_onnx_conv_pool_ops(tmp_path):
    w = _f32((4, 1, 3, 3), 1)  # group=2 over 2 input channels: weight (out=4, in/group=1, 3, 3)
    bn = [np.abs(_f32((4,), i)) + 0.5 for i in range(2, 6)]
    fc = _f32((3, 4), 7)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 0, 2, 1], strides=[1, 2], dilations=[2, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
        helper.make_node("AveragePool", ["n"], ["p"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("MaxPool", ["p"], ["q"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("GlobalAveragePool", ["q"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = [_init("w", w), _init("g", bn[0]), _init("b", bn[1]), _init("m", bn[2]), _init("v", bn[3]),
             _init("fc", fc)]  # fmt: skip
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9, 9])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    path = _save_onnx(tmp_path / "conv.onnx", nodes, [x_info], [y_info], inits)
    loaded = load_model(path)
    assert loaded.input_shape == (2, 9, 9)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    t = [torch.from_numpy(a).double() for a in bn]
    c = F.conv2d(F.pad(x, (0, 1, 1, 2)), torch.from_numpy(w).double(), stride=(1, 2), dilation=(2, 1), groups=2)
    n = F.batch_norm(c, t[2], t[3], t[0], t[1], training=False, eps=1e-3)
    p = F.avg_pool2d(n, 2, 2, padding=1, count_include_pad=False)
    q = F.max_pool2d(F.pad(p, (0, 1, 0, 1), value=float("-inf")), 2, 1)
    expected = q.mean(dim=(2, 3)) @ torch.from_numpy(fc).double().T
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=TOL, atol=TOL)


def test_onnx_unsupported_op(tmp_path):
    nodes = [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Relu", ["e"], ["r"]),
             helper.make_node("Floor", ["r"], ["y"])]  # fmt: skip
    path = _save_onnx(tmp_path / "erf.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"erf\.onnx: unsupported ONNX op\(s\) Erf, Floor; supported ops: "
                                             r"Add, .*Gemm.*Unsqueeze$") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_onnx_non_constant_shape(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "x"], ["y"])]
    path = _save_onnx(tmp_path / "r.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, [2])],
                      [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"Reshape node .*must be a constant"):
        load_model(path)


def test_onnx_two_inputs(tmp_path):
    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("x", "z", "y")]
    path = _save_onnx(tmp_path / "two.onnx", nodes, vi[:2], vi[2:])
    with pytest.raises(ModelLoadError, match="exactly one input and one output, found 2 input"):
        load_model(path)


@pytest.mark.parametrize("content", [b"not an onnx file", b"\x08\x07garbage\xff\xff"])
def test_corrupt_onnx(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"bad\.onnx: (cannot read ONNX file|ONNX graph must have)"):
        load_model(path)


# -------------------------------------------------------------------------------------------------- .nnet


def _nnet_text(weights, biases, mins, maxes, means, ranges) -> str:
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    lines = ["// a test network", "// second comment line",
             f"{len(weights)},{sizes[0]},{sizes[-1]},{max(sizes)},", ",".join(map(str, sizes)) + ",", "0,"]
    for values in (mins, maxes, means, ranges):
        lines.append(",".join(repr(float(v)) for v in values) + ",")
    for w, b in zip(weights, biases):
        lines += [",".join(repr(float(v)) for v in row) + "," for row in w]
        lines += [f"{float(v)!r}," for v in b]
    return "\n".join(lines) + "\n"


def _nnet_parts():
    g = np.random.default_rng(0)
    weights = [g.normal(size=(4, 3)), g.normal(size=(5, 4)), g.normal(size=(2, 5))]
    biases = [g.normal(size=4), g.normal(size=5), g.normal(size=2)]
    mins, maxes = [-1.0, 0.0, -5.0], [1.0, 10.0, 5.0]
    means, ranges = [0.5, 5.0, -1.0, 7.0], [2.0, 10.0, 4.0, 3.0]  # last entries: output mean/range (not applied)
    return weights, biases, mins, maxes, means, ranges


def test_nnet_roundtrip(tmp_path):
    weights, biases, mins, maxes, means, ranges = parts = _nnet_parts()
    path = tmp_path / "small.nnet"
    path.write_text(_nnet_text(*parts))
    loaded = load_model(path)
    assert isinstance(loaded, NNetModel)
    assert isinstance(loaded.layers, nn.Sequential)
    assert [type(m) for m in loaded.layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert loaded.input_shape == (3,)
    assert loaded.input_lower.dtype == torch.float64 and loaded.input_lower.tolist() == mins
    assert loaded.input_upper.tolist() == maxes
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    x = np.random.default_rng(1).uniform(-20, 20, size=(6, 3))  # outside [mins, maxes]: no clamping
    h = (x - np.array(means[:3])) / np.array(ranges[:3])
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    with torch.no_grad():
        got = loaded(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), h, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not ACAS.exists(), reason="shared benchmarks not present")
def test_nnet_acasxu():
    model = load_model(ACAS)
    assert model.input_shape == (5,)
    assert model.input_lower.shape == (5,) and model.input_upper.shape == (5,)
    assert torch.all(model.input_lower < model.input_upper)
    x = (model.input_lower + model.input_upper) / 2
    with torch.no_grad():
        y = model(torch.stack([model.input_lower, x, model.input_upper]))
    assert y.shape == (3, 5) and torch.isfinite(y).all()
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 7


def _malformed(lines: list[str], index: int, replacement: str | None) -> str:
    lines = list(lines)
    if replacement is None:
        del lines[index:]
    else:
        lines[index] = replacement
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("index", "replacement", "message"),
    [
        (2, "3,3,2,five,", r"line 3: non-numeric value 'five' in numLayers"),
        (2, "3,3,2,", r"line 3: expected at least 4 values for numLayers"),
        (2, "3,3.5,2,5,", r"line 3: sizes must be positive integers"),
        (3, "4,4,5,2,", r"line 4: layer sizes 4\.\.2 do not match inputSize 3"),
        (5, "-1,0,", r"line 6: expected at least 3 values for input minimums, found 2"),
        (8, "1,0,1,1,", r"line 9: input ranges must be nonzero"),
        (10, "1.0,2.0,", r"line 11: expected 3 values for layer 1 weight row 2, found 2"),
        (10, "1.0,2.0,3.0,4.0,", r"line 11: expected 3 values for layer 1 weight row 2, found 4"),
        (13, "0.5,abc,", r"line 14: non-numeric value 'abc' in layer 1 bias 1"),
        (20, None, r"file ends after line 20; expected layer 2 weight row 4"),
    ],
)
def test_nnet_malformed(tmp_path, index, replacement, message):
    lines = _nnet_text(*_nnet_parts()).splitlines()
    path = tmp_path / "bad.nnet"
    path.write_text(_malformed(lines, index, replacement))
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_nnet_trailing_data(tmp_path):
    path = tmp_path / "extra.nnet"
    path.write_text(_nnet_text(*_nnet_parts()) + "1.0,\n")
    with pytest.raises(ModelLoadError, match=r"unexpected data after the last layer"):
        load_model(path)


def test_nnet_binary_garbage(tmp_path):
    path = tmp_path / "bin.nnet"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelLoadError, match=r"bin\.nnet: (cannot read|line 1)"):
        load_model(path)
