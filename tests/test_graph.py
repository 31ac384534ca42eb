"""The comparison graph and the bound-propagation heads built on the same model pair."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeldiff.divergences import DIVERGENCES, Divergence, get_divergence
from modeldiff.errors import IncompatibleModelsError, ModelDiffError
from modeldiff.graph import ComparisonGraph, DeltaNet, PairNet, SoftmaxDeltaNet, infer_input_shape, prepare_model
from tests._models import SmallCNN, mlp, perturbed


def _pair(seed: int = 0):
    a = mlp([4, 8, 3], seed)
    return a, perturbed(a, 0.1, seed + 1)


def _x(n: int = 5, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class TrainOnly(nn.Module):
    """Linear -> BatchNorm1d -> Dropout: random and batch-dependent in train mode."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(6, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
        self.double()

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.lin(x)))))


# --- ComparisonGraph ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIVERGENCES)
def test_forward_is_divergence_of_outputs(name):
    a, b = _pair()
    g = ComparisonGraph(a, b, name, input_shape=(4,))
    x = _x()
    with torch.no_grad():
        expected = get_divergence(name)(a(x), b(x))
        got = g(x)
    assert torch.equal(got, expected)
    assert got.shape == ((5, 3) if name == "delta" else (5,))
    ya, yb = g.outputs(x)
    assert torch.equal(ya, a(x)) and torch.equal(yb, b(x))


def test_default_divergence_is_linf_and_accepts_module():
    a, b = _pair()
    assert ComparisonGraph(a, b).divergence.name == "linf"
    d = Divergence("tv")
    assert ComparisonGraph(a, b, d).divergence is d


def test_cnn_pair():
    a, b = SmallCNN(0), SmallCNN(1)
    g = ComparisonGraph(a, b, "l2", input_shape=(1, 6, 6))
    assert g.output_shape == (3,)
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(g(x), torch.linalg.vector_norm(a(x) - b(x), dim=1))


def test_models_put_in_eval_mode():
    a, b = TrainOnly(0), TrainOnly(1)
    a.train(), b.train()
    running = a.bn.running_mean.clone()
    g = ComparisonGraph(a, b, "delta", input_shape=(4,))
    assert not any(m.training for m in [*g.a.modules(), *g.b.modules()])
    x = _x(7)
    with torch.no_grad():
        first, second = g(x), g(x)
        one_by_one = torch.cat([g(x[i : i + 1]) for i in range(7)])
    assert torch.equal(first, second)  # no dropout
    assert torch.allclose(first, one_by_one, atol=1e-12)  # batch norm uses running statistics
    assert torch.equal(a.bn.running_mean, running)  # running statistics not updated
    with torch.no_grad():
        assert torch.allclose(first, a.eval()(x) - b.eval()(x), atol=1e-12)


def test_incompatible_output_shapes_named():
    with pytest.raises(IncompatibleModelsError) as info:
        ComparisonGraph(nn.Linear(4, 3), nn.Linear(4, 2), "linf")
    message = str(info.value)
    assert "(2, 3)" in message and "(2, 2)" in message
    assert message == "model outputs differ in shape: A gives (2, 3), B gives (2, 2)"


@pytest.mark.parametrize("head", [ComparisonGraph, DeltaNet, PairNet, SoftmaxDeltaNet])
def test_every_head_checks_compatibility(head):
    with pytest.raises(IncompatibleModelsError, match=r"A gives \(2, 5\), B gives \(2, 4\)"):
        head(nn.Linear(3, 5), nn.Linear(3, 4))


def test_model_rejecting_input_shape():
    expected = r"^model A does not accept inputs of shape \(5,\): RuntimeError: "
    with pytest.raises(IncompatibleModelsError, match=expected):
        ComparisonGraph(nn.Linear(4, 3), nn.Linear(4, 3), input_shape=(5,))
    # the shape is inferred from A (4 inputs); B wants 6
    with pytest.raises(IncompatibleModelsError, match=r"^model B does not accept inputs of shape \(4,\)") as info:
        ComparisonGraph(nn.Linear(4, 3), nn.Linear(6, 3))
    assert "\n" not in str(info.value)


class _Tuple(nn.Module):
    def forward(self, x):
        return x, x


class _ThreeD(nn.Module):
    def forward(self, x):
        return x.unsqueeze(1)


def test_model_outputs_must_be_one_two_dimensional_tensor():
    with pytest.raises(IncompatibleModelsError, match=r"^model A returns tuple, expected one tensor$"):
        ComparisonGraph(_Tuple(), nn.Linear(3, 3), input_shape=(3,))
    with pytest.raises(IncompatibleModelsError, match=r"^expected model outputs of shape \[N, K\], got \(2, 1, 3\)$"):
        ComparisonGraph(_ThreeD(), _ThreeD(), input_shape=(3,))


def test_not_modules():
    with pytest.raises(TypeError, match="expected model A to be a torch.nn.Module, got function"):
        ComparisonGraph(lambda x: x, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected model B to be a torch.nn.Module, got int"):
        ComparisonGraph(nn.Linear(2, 2), 3)


def test_errors_are_modeldiff_errors():
    with pytest.raises(ModelDiffError):
        ComparisonGraph(nn.Linear(4, 3), nn.Linear(4, 2))


# --- input shapes ---------------------------------------------------------------------------------------------


def test_infer_input_shape():
    assert infer_input_shape(nn.Linear(7, 2)) == (7,)
    assert infer_input_shape(nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(12, 3), nn.ReLU()))) == (12,)
    assert infer_input_shape(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))) is None
    assert infer_input_shape(nn.ReLU()) is None
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    m.input_shape = [1, 4, 4]
    assert infer_input_shape(m) == (1, 4, 4)


def test_graph_input_shape():
    a, b = _pair()
    g = ComparisonGraph(a, b)
    assert g.input_shape == (4,) and g.output_shape == (3,)
    # inferred from B when A does not tell
    g = ComparisonGraph(_Identity3(), nn.Linear(3, 3))
    assert g.input_shape == (3,)
    # not inferable: no check, no output shape, but forward still works
    g = ComparisonGraph(SmallCNN(0), SmallCNN(1))
    assert g.input_shape is None and not hasattr(g, "output_shape")
    assert g(torch.rand(2, 1, 6, 6, dtype=torch.float64)).shape == (2,)
    # an explicit shape wins over inference
    with pytest.raises(IncompatibleModelsError, match=r"inputs of shape \(9,\)"):
        ComparisonGraph(a, b, input_shape=[9])


class _Identity3(nn.Module):
    def forward(self, x):
        return x


# --- prepare_model ----------------------------------------------------------------------------------------------


def test_prepare_model_copies():
    model = TrainOnly(3).float().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_model(model, dtype=torch.float64)
    assert prepared is not model
    assert not any(m.training for m in prepared.modules())
    assert all(p.dtype == torch.float64 and not p.requires_grad for p in prepared.parameters())
    # the caller's model is untouched
    assert model.training and all(m.training for m in model.modules())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(p is q for p in model.parameters() for q in prepared.parameters())
    # changing the copy does not change the original
    with torch.no_grad():
        next(prepared.parameters()).add_(1.0)
    assert torch.equal(next(model.parameters()), before["lin.weight"])


def test_prepare_model_keeps_dtype_by_default():
    model = nn.Linear(3, 2)
    prepared = prepare_model(model)
    assert prepared.weight.dtype == torch.float32 and torch.equal(prepared.weight, model.weight)
    assert model.weight.requires_grad


def test_prepare_model_rejects_non_modules():
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got str"):
        prepare_model("model.pt")


# --- heads ----------------------------------------------------------------------------------------------------


def test_delta_net():
    a, b = _pair(2)
    net = DeltaNet(a, b, (4,))
    x = _x(6)
    with torch.no_grad():
        assert torch.equal(net(x), a(x) - b(x))
    assert net.output_shape == (3,)


def test_pair_net():
    a, b = _pair(3)
    net = PairNet(a, b, (4,))
    x = _x(6)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (6, 6)
        assert torch.equal(out[:, :3], a(x)) and torch.equal(out[:, 3:], b(x))


def test_softmax_delta_net():
    a, b = _pair(4)
    net = SoftmaxDeltaNet(a, b, (4,))
    x = _x(6) * 3
    with torch.no_grad():
        out = net(x)
        expected = torch.softmax(a(x), dim=1) - torch.softmax(b(x), dim=1)
    assert torch.allclose(out, expected, atol=1e-14)
    assert torch.allclose(out.sum(dim=1), torch.zeros(6, dtype=torch.float64), atol=1e-14)
    # the tv divergence is half the L1 norm of this head
    with torch.no_grad():
        tv = ComparisonGraph(a, b, "tv")(x)
    assert torch.allclose(0.5 * out.abs().sum(dim=1), tv, atol=1e-14)
