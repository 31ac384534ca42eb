"""The differential bound: exact zero for identical models, planted differences are certified, structure checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modeldiff
from modeldiff.bounds.diff import (
    DiffBounder, NotApplicable, diff_applicable, diff_relaxation, intersect_bounds, split_bounds, stack_bounds,
)
from modeldiff.linearize import NotLinearizable, linearize
from modeldiff.errors import UnsupportedModelError
from modeldiff.regions import ball
from tests._models import BasicBlockNet, ResMLP, SmallCNN, apply_layers, mlp, perturbed


@pytest.mark.parametrize("divergence", ["delta", "linf", "l1", "l2", "kl", "tv"])
@pytest.mark.parametrize("model", ["mlp", "cnn", "rescnn", "resmlp"])
def test_identical_models_certify_exactly_zero(divergence, model):
    a = {"mlp": lambda: mlp([4, 7, 7, 3], 1), "cnn": lambda: SmallCNN(1, residual=False),
         "rescnn": lambda: SmallCNN(1), "resmlp": lambda: ResMLP(4, 6, 3, 1)}[model]()
    shape = (1, 6, 6) if "cnn" in model else (4,)
    region = ball(torch.rand((3, *shape), dtype=torch.float64), 0.5)
    result = modeldiff.bound(a, copy.deepcopy(a), region, divergence, "diff")
    assert torch.equal(result.upper, torch.zeros(3, dtype=torch.float64))


def test_planted_bump_is_certified():
    a = mlp([3, 6, 6, 2], 2)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[2].bias[1] += 0.25  # a bump in one hidden neuron of B
    region = ball(torch.zeros(1, 3, dtype=torch.float64), 1.0)
    found = modeldiff.search(a, b, region, "linf", restarts=8, steps=50)
    result = modeldiff.bound(a, b, region, "linf", "diff")
    assert float(found.found[0]) > 0
    assert float(result.upper[0]) >= float(found.found[0]) - 1e-12
    shifted = copy.deepcopy(a)
    with torch.no_grad():
        shifted[-1].bias[0] -= 0.3  # A - B = +0.3 on output 0 everywhere
    exact = modeldiff.bound(a, shifted, region, "delta", "diff")
    assert float(exact.delta_lower[0, 0]) == pytest.approx(0.3) and float(exact.delta_upper[0, 0]) == pytest.approx(0.3)


def test_relaxation_planes_bound_f_on_random_domains():
    g = torch.Generator().manual_seed(0)
    n = 2000
    la = torch.randn(n, generator=g, dtype=torch.float64)
    ua = la + torch.rand(n, generator=g, dtype=torch.float64) * 2
    ld = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
    ud = ld + torch.rand(n, generator=g, dtype=torch.float64) * 0.2
    lb, ub = la - ud, ua - ld
    uz, udd, uc, lz, ldd, lc = diff_relaxation(la, ua, lb, ub, ld, ud)
    t = torch.rand(200, n, generator=g, dtype=torch.float64)
    s = torch.rand(200, n, generator=g, dtype=torch.float64)
    z, d = la + (ua - la) * t, ld + (ud - ld) * s
    f = torch.relu(z) - torch.relu(z - d)
    assert (f <= uz * z + udd * d + uc + 1e-12).all()
    assert (f >= lz * z + ldd * d + lc - 1e-12).all()


def test_relaxation_bounds_f_on_degenerate_domains():
    # bounds exactly at 0 or of zero width (a pruned neuron has z == 0, a point region has la == ua): every stable
    # case must be exact, in particular z_B == 0 with A on (once counted B as on as well, giving f = 2 z)
    ends = torch.tensor([-2.0, -1.0, 0.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    pairs = [(lo, hi) for lo in ends for hi in ends if lo <= hi]
    la, ua, lb, ub = (torch.tensor(v, dtype=torch.float64)
                      for v in zip(*[(a0, a1, b0, b1) for a0, a1 in pairs for b0, b1 in pairs]))
    ld, ud = la - ub, ua - lb
    planes = diff_relaxation(la, ua, lb, ub, ld, ud)
    g = torch.Generator().manual_seed(0)
    t, s = (torch.rand(300, la.numel(), generator=g, dtype=torch.float64) for _ in range(2))
    t[:4], s[:4] = torch.tensor([[0.0], [0.0], [1.0], [1.0]]), torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    za, zb = la + (ua - la) * t, lb + (ub - lb) * s
    d = za - zb
    f = torch.relu(za) - torch.relu(zb)
    uz, udd, uc, lz, ldd, lc = planes
    assert (f <= uz * za + udd * d + uc + 1e-12).all() and (f >= lz * za + ldd * d + lc - 1e-12).all()


def test_pruned_neuron_is_bounded_soundly():
    a = mlp([3, 6, 6, 2], 0)
    with torch.no_grad():
        a[0].bias[2] = 5.0  # neuron 2 is on over the whole region in A
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight[2], b[0].bias[2] = 0.0, 0.0  # and pruned in B: z_B == 0 exactly
    x = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for eps in (0.0, 0.1):
        region = ball(x, eps)
        result = modeldiff.bound(a, b, region, "delta", "diff")
        pts = region.sample(500, generator=torch.Generator().manual_seed(2)).flatten(0, 1)
        with torch.no_grad():
            d = (a(pts) - b(pts)).view(500, 4, -1)
        assert (d <= result.delta_upper + 1e-9).all() and (d >= result.delta_lower - 1e-9).all()


def test_linearize_merges_affine_ops_and_refuses_other_graphs():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    layers = linearize(net, (2, 2))
    assert [tuple(layer.weight.shape) for layer in layers] == [(3, 4), (2, 3)]
    x = torch.rand(5, 2, 2, dtype=torch.float64)
    y = layers[1].weight @ torch.relu(layers[0].weight @ x.flatten(1).T + layers[0].bias[:, None]) \
        + layers[1].bias[:, None]
    assert torch.allclose(y.T, net(x))
    assert all(layer.identity is None for layer in layers)  # a chain gets no carried outputs

    class Gate(nn.Module):
        def forward(self, x):
            return torch.relu(x) * x

    with pytest.raises(NotLinearizable, match="mixes two computed values"):
        linearize(Gate(), (3,))

    class BatchMean(nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return x.mean(*self.dims) + x

    for dims in [(0,), (-2,), ((0, 1),), ()]:  # over the batch (also as -2 of 2 dims), or over everything
        with pytest.raises(NotLinearizable, match="reduces over the batch dimension"):
            linearize(BatchMean(dims), (3,))
    assert linearize(BatchMean(((1,), True)), (3,))  # x.mean((1,), keepdim=True) + x
    with pytest.raises(NotLinearizable, match="broadcasts one computed value over another"):
        linearize(BatchMean(((1,),)), (3,))  # [N] + [N, 3]
    with pytest.raises(NotLinearizable, match="Tanh"):
        linearize(mlp([2, 3, 1], 0, act=nn.Tanh), (2,))


@pytest.mark.parametrize("model, shape, carried", [
    (SmallCNN(0), (1, 6, 6), [None, 72]),  # the first ReLU's 2x6x6 outputs skip the second ReLU layer
    (ResMLP(3, 5, 2, 0), (3,), [3, 8]),  # the input x skips both ReLU layers, h1 the second
    (BasicBlockNet(0), (1, 5, 5), [None, 50, None]),  # out += identity, identity a ReLU output
    (BasicBlockNet(0, pool="adaptive"), (1, 5, 5), [None, 50, None]),  # then global average pooling
    (BasicBlockNet(0, pool="mean"), (1, 5, 5), [None, 50, None]),
])  # fmt: skip
def test_residual_connections_are_carried_through_relu_layers(model, shape, carried):
    layers = linearize(model, shape)
    x = torch.randn(20, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        assert torch.allclose(apply_layers(layers, x), model(x), atol=1e-12)
    marks = [None if layer.identity is None else int(layer.identity.sum()) for layer in layers[:-1]]
    assert marks == carried and layers[-1].identity is None
    if isinstance(model, ResMLP):  # layer 2: h2's pre-activation, then h1 and x carried
        assert tuple(layers[1].weight.shape) == (5 + 5 + 3, 5 + 3)
        assert layers[1].identity.tolist() == [False] * 5 + [True] * 8


def test_residual_pair_with_different_carries_is_refused():
    a = ResMLP(3, 5, 2, 0)

    class NoSkip(nn.Module):  # the layer shapes of ResMLP's dense form, without the carried values
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(3, 8), nn.Linear(8, 13), nn.Linear(13, 2)

        def forward(self, x):
            return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))

    b = NoSkip().double().eval()
    assert [tuple(la.weight.shape) for la in linearize(a, (3,))] == [tuple(lb.weight.shape)
                                                                     for lb in linearize(b, (3,))]
    assert "residual connections differ" in diff_applicable(a, b, (3,))


def test_diff_method_needs_equal_architectures():
    a, b = mlp([3, 5, 2], 0), mlp([3, 6, 2], 1)
    assert "architecture" in diff_applicable(a, b, (3,))
    with pytest.raises(NotApplicable):
        DiffBounder(a, b, (3,))
    region = ball(torch.zeros(1, 3, dtype=torch.float64), 0.1)
    with pytest.raises(UnsupportedModelError, match="differential bound does not apply: the models differ"):
        modeldiff.bound(a, b, region, "linf", "diff")
    assert modeldiff.bound(a, b, region, "linf", "auto").method == "crown"


def test_child_bounds_with_a_parent_contain_every_sampled_activation():
    """Children of a branch-and-bound split re-bound only the neurons unstable in their parent; every layer's
    bounds must still contain the activations of points of the child box, and neurons stable in the parent keep
    the parent's bounds."""
    from tests._models import perturbed

    a = mlp([3, 12, 12, 12, 2], 11, scale=1.5)
    b = perturbed(a, 0.05, 12)
    bounder = DiffBounder(a, b, (3,))
    lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    parent = bounder.intermediate_bounds(lo, hi)
    c_lo, c_hi = lo.clone(), hi.clone()
    c_hi[0, 0] = 0.0  # the left half along input 0
    child = bounder.intermediate_bounds(c_lo, c_hi, mode="backward", parent=parent)
    x = c_lo + (c_hi - c_lo) * torch.rand(4000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ha, hb = x, x
    for k, (la, lb) in enumerate(zip(bounder.layers_a[:-1], bounder.layers_b[:-1])):
        z1, z2 = ha @ la.weight.T + la.bias, hb @ lb.weight.T + lb.bias
        ha, hb = z1.relu(), z2.relu()
        cb, pb = child[k], parent[k]
        tol = 1e-9
        assert (z1 >= cb.la - tol).all() and (z1 <= cb.ua + tol).all()
        assert (z2 >= cb.lb - tol).all() and (z2 <= cb.ub + tol).all()
        assert (z1 - z2 >= cb.ld - tol).all() and (z1 - z2 <= cb.ud + tol).all()
        stable = ~(((pb.la < 0) & (pb.ua > 0)) | ((pb.lb < 0) & (pb.ub > 0)))
        assert torch.equal(cb.la[stable], pb.la[stable]) and torch.equal(cb.ua[stable], pb.ua[stable])
        assert (cb.ua <= pb.ua).all() and (cb.la >= pb.la).all()


def test_packed_bounds_round_trip_and_intersect():
    a = mlp([3, 5, 4, 2], 13)
    b = perturbed(a, 0.05, 14)
    bounder = DiffBounder(a, b, (3,))
    lo, hi = -torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    lo[1] = 0.0
    bounds = bounder.intermediate_bounds(lo, hi)
    packed = split_bounds(bounds)
    assert packed.shape == (2, 6, sum(bounder.hidden_sizes)) and bounder.hidden_sizes == [5, 4]
    back = stack_bounds(packed, bounder.hidden_sizes, relax=True)
    for x, y in zip(bounds, back):
        for f in ("la", "ua", "lb", "ub", "ld", "ud"):
            assert torch.equal(getattr(x, f), getattr(y, f))
        assert all(torch.equal(p, q) for p, q in zip(x.relax_d, y.relax_d))
    both = intersect_bounds(packed[0], packed[1])
    assert torch.equal(both[0::2], torch.maximum(packed[0, 0::2], packed[1, 0::2]))  # lower bounds: the larger
    assert torch.equal(both[1::2], torch.minimum(packed[0, 1::2], packed[1, 1::2]))  # upper bounds: the smaller


@pytest.mark.parametrize("groups, max_elements", [(1, 2**24), (3, 2**24), (8, 2**24), (3, 1000)])
def test_children_bounded_in_groups_match_each_box_bounded_alone(monkeypatch, groups, max_elements):
    """A batch of children is bounded in groups of boxes with similar counts of unstable neurons, each group
    padded to its own count (and cut into chunks by memory): every box must get exactly what it gets bounded
    alone, whatever the grouping, and its bounds must contain the activations of points of the box."""
    from modeldiff.bounds import diff as diff_module

    monkeypatch.setattr(diff_module, "BOX_GROUPS", groups)
    monkeypatch.setattr(diff_module, "MAX_ELEMENTS", max_elements)  # 1000: one box at a time
    a = mlp([3, 12, 12, 12, 2], 21, scale=1.5)
    b = perturbed(a, 0.05, 22)
    bounder = DiffBounder(a, b, (3,))
    lo, hi = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    root = split_bounds(bounder.intermediate_bounds(lo, hi))
    g = torch.Generator().manual_seed(3)
    centre = -1 + 2 * torch.rand(11, 3, dtype=torch.float64, generator=g)
    half = torch.tensor([1.0, 0.5, 0.2, 0.05, 0.0, 1.0, 0.3, 0.1, 0.6, 0.02, 0.4], dtype=torch.float64)
    c_lo, c_hi = (centre - half.view(-1, 1)).clamp(-1, 1), (centre + half.view(-1, 1)).clamp(-1, 1)
    parents = stack_bounds(root.expand(11, -1, -1).contiguous(), bounder.hidden_sizes)
    together = split_bounds(bounder.intermediate_bounds(c_lo, c_hi, mode="backward", parent=parents))
    for i in range(11):
        alone = split_bounds(bounder.intermediate_bounds(c_lo[i:i + 1], c_hi[i:i + 1], mode="backward",
                                                         parent=stack_bounds(root, bounder.hidden_sizes)))
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-12, atol=1e-12)
    x = c_lo + (c_hi - c_lo) * torch.rand(500, 11, 3, dtype=torch.float64, generator=g)  # [500, 11, 3]
    ha = hb = x
    bounds = stack_bounds(together, bounder.hidden_sizes)
    for k, (la, lb) in enumerate(zip(bounder.layers_a[:-1], bounder.layers_b[:-1])):
        z1, z2 = ha @ la.weight.T + la.bias, hb @ lb.weight.T + lb.bias
        ha, hb = z1.relu(), z2.relu()
        cb, tol = bounds[k], 1e-9
        assert (z1 >= cb.la - tol).all() and (z1 <= cb.ua + tol).all()
        assert (z2 >= cb.lb - tol).all() and (z2 <= cb.ub + tol).all()
        assert (z1 - z2 >= cb.ld - tol).all() and (z1 - z2 <= cb.ud + tol).all()


def test_folded_weight_products_match_the_dw_products_and_float32_tracks_float64():
    """In float64 the dW products are folded into the W_A and W_B products ((lam_z + lam_d) @ W_A - lam_d @ W_B);
    that must give what the explicit dW products give. Float32 keeps the explicit products and must stay close to
    float64 on a pair whose difference is float16 rounding."""
    a = mlp([6, 40, 40, 40, 3], 5, scale=1.0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for prm in b.parameters():
            prm.copy_(prm.half().double())
    lo, hi = -0.3 * torch.ones(4, 6, dtype=torch.float64), 0.3 * torch.ones(4, 6, dtype=torch.float64)
    lo[1:, 0] = 0.0
    folded = DiffBounder(a, b, (6,))
    assert folded._fold
    explicit = DiffBounder(a, b, (6,))
    explicit._fold = False
    l64, u64 = folded.delta_bounds(lo, hi)
    le, ue = explicit.delta_bounds(lo, hi)
    torch.testing.assert_close(u64, ue, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(l64, le, rtol=1e-9, atol=1e-15)
    b32 = DiffBounder(copy.deepcopy(a).float(), copy.deepcopy(b).float(), (6,))
    assert not b32._fold
    l32, u32 = b32.delta_bounds(lo.float(), hi.float())
    torch.testing.assert_close(u32.double(), u64, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(l32.double(), l64, rtol=1e-3, atol=1e-7)


def test_residual_pair_uses_diff_and_its_search_stays_below_it():
    # a residual CNN against its float16 copy, three free pixels: auto picks diff; the search (its reduced forward
    # folds the fixed pixels into the dense layers, carried neurons included) finds values below the certificate
    a = SmallCNN(3)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.copy_(p.half().double())
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 1, 6, 6, generator=g, dtype=torch.float64)
    lo, hi = x.clone(), x.clone()
    for k in range(4):
        for p in torch.randperm(36, generator=g)[:3]:
            lo[k, 0, p // 6, p % 6], hi[k, 0, p // 6, p % 6] = 0.0, 1.0
    region = modeldiff.regions.box(lo, hi)
    certified = modeldiff.bound(a, b, region, "linf", "auto")
    found = modeldiff.search(a, b, region, "linf", restarts=4, steps=30, seed=0)
    assert certified.method == "diff"
    assert (found.found > 0).all() and (found.found <= certified.upper + 1e-12).all()
    assert float((certified.upper / found.found).max()) < 2  # 1.0-1.23; crown on the composed graph: 67-385


def test_in_place_relu_on_a_value_used_again_is_refused():
    class Overwrite(nn.Module):  # eager mode adds relu(h) to relu(h): the graph alone would read h + relu(h)
        def __init__(self):
            super().__init__()
            self.fc, self.relu = nn.Linear(3, 3), nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.fc(x)
            return self.relu(h) + h

    with pytest.raises(NotLinearizable, match="in-place op relu overwrites a value that is used again"):
        linearize(Overwrite().double(), (3,))
    assert linearize(BasicBlockNet(0), (1, 5, 5))  # an in-place ReLU on a value used once is fine

    class SkipDropout(nn.Module):  # in eval mode an in-place Dropout leaves its input as it is
        def __init__(self):
            super().__init__()
            self.fc, self.drop = nn.Linear(3, 3), nn.Dropout(0.5, inplace=True)

        def forward(self, x):
            h = torch.relu(self.fc(x))
            return self.drop(h) + h

    assert linearize(SkipDropout().double().eval(), (3,))


@pytest.mark.parametrize("pool", ["flatten", "adaptive"])
def test_onnx_residual_cnn_gets_the_differential_bound(tmp_path, pool):
    # the ONNX converter's Flatten and GlobalAveragePool modules branch on the input's rank: read as affine leaves
    import warnings

    model = BasicBlockNet(0, pool=pool)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model).float(), (torch.randn(2, 1, 5, 5),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    loaded = modeldiff.load_model(path)
    x = torch.randn(6, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(apply_layers(linearize(loaded, (1, 5, 5)), x), loaded(x), atol=1e-12)
    region = ball(x[:2], 0.05)
    assert modeldiff.bound(loaded, copy.deepcopy(loaded), region, "linf", "auto").method == "diff"


@pytest.mark.parametrize("model", ["mlp", "resmlp"])
def test_interval_step_bounds_contain_sampled_activations(model):
    # the cheap bounds that decide which neurons the first pass back-substitutes (the others keep them)
    a = mlp([3, 8, 8, 8, 2], 5, scale=2.0) if model == "mlp" else ResMLP(3, 6, 2, 5)
    b = perturbed(a, 0.05, 6)
    bounder = DiffBounder(a, b, (3,))
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(4, 3, generator=g, dtype=torch.float64) * 2 - 1
    hi = lo + 0.4
    bounds = bounder.intermediate_bounds(lo, hi)
    x = (lo + (hi - lo) * torch.rand(2000, 4, 3, generator=g, dtype=torch.float64)).flatten(0, 1)
    ha = hb = x
    for k in range(len(bounds)):
        za = ha @ bounder.layers_a[k].weight.T + bounder.layers_a[k].bias
        zb = hb @ bounder.layers_b[k].weight.T + bounder.layers_b[k].bias
        if k > 0:
            step = bounder._interval_step(k, bounds[k - 1])
            for z, lower, upper in ((za, step.la, step.ua), (zb, step.lb, step.ub), (za - zb, step.ld, step.ud)):
                z = z.view(2000, 4, -1)
                assert (z >= lower - 1e-9).all() and (z <= upper + 1e-9).all()
        ident = bounder.identity[k]
        ha = za.relu() if ident is None else torch.where(ident, za, za.relu())
        hb = zb.relu() if ident is None else torch.where(ident, zb, zb.relu())


class _AffineReuse(nn.Module):
    """An affine value (z) read again after the ReLUs of two later layers, and a ReLU applied twice."""

    def __init__(self):
        super().__init__()
        self.f0, self.f1, self.f2 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        z = self.f1(torch.relu(self.f0(x)))
        h = torch.relu(z)
        return self.f2(torch.relu(h) - 0.5 * z) + self.f2(z)


class _DenseSums(nn.Module):
    """DenseNet-like: each layer reads the sum of the input and every earlier ReLU output."""

    def __init__(self):
        super().__init__()
        self.f = nn.ModuleList([nn.Linear(3, 3) for _ in range(4)])
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        hs = [x]
        for f in self.f:
            t = hs[0]
            for h in hs[1:]:
                t = t + h
            hs.append(torch.relu(f(t)))
        return self.out(hs[-1] + hs[1])


@pytest.mark.parametrize("model", [_AffineReuse, _DenseSums])
def test_values_read_across_several_relu_layers_compute_the_model(model):
    torch.manual_seed(0)
    net = model().double().eval()
    layers = linearize(net, (3,))
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        assert torch.allclose(apply_layers(layers, x), net(x), atol=1e-12)
    b = perturbed(net, 0.05, 2)
    region = ball(x[:4], 0.2)
    certified = modeldiff.bound(net, b, region, "linf", "auto")
    found = modeldiff.search(net, b, region, "linf", restarts=4, steps=30, seed=0)
    assert certified.method == "diff" and (found.found <= certified.upper + 1e-12).all()
