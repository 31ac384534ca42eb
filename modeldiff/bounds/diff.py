"""Differential bound propagation: bounds on ``A(x) - B(x)`` that carry the *difference* through the network.

For two networks of the same shape (a fine-tuned, quantised or pruned copy), written as dense chains
(:func:`~modeldiff.linearize.linearize`; a residual connection becomes extra neurons carried through the ReLU
layers it skips), with pre-activations ``z_A``, ``z_B``, their difference ``delta = z_A - z_B``, post-activations
``h_A = relu(z_A)`` and ``d = h_A - h_B``:

* a linear layer maps ``(h_A, d)`` to ``z_A = W_A h_A + b_A`` and
  ``delta = W_B d + (W_A - W_B) h_A + (b_A - b_B)``;
* a ReLU maps ``(z_A, delta)`` to ``h_A = relu(z_A)`` (the usual triangle relaxation) and
  ``d = f(z_A, delta) = relu(z_A) - relu(z_A - delta)``, relaxed by two planes in ``(z_A, delta)``.

Back-substitution (CROWN) through this pair of paths gives linear bounds of any ``Lz . z_A^L + Ld . delta^L``
in the input, concretised over the box. Identical models give exactly 0, and the errors of two nearly identical
networks cancel instead of adding up as they do on the composed graph.

**The planes for f.** Over the neuron's domain ``D = {z in [lA, uA], delta in [ld, ud], z - delta in [lB, uB]}``
(a polygon), ``f`` is continuous and linear on each piece cut by ``z = 0`` and ``z - delta = 0``. For any slopes
``(a_z, a_d)``, ``max_D (f - a_z z - a_d delta)`` is therefore attained at a vertex of a piece: an intersection of
two of the eight lines bounding ``D`` or the pieces. The offset is that maximum taken over all such intersections
that lie in ``D`` (up to a tiny outward tolerance, which only loosens the bound), so the upper plane is sound for
*any* slopes; likewise the lower plane with the minimum. The slopes are chosen per neuron among candidates
``(a_A - a_B, a_B)`` with ``a_A in {0, 1, lambda_A}``, ``a_B in {0, 1, lambda_B}`` (the independent relaxations,
which are exact for every stable case) and ``(0, lambda_A)``, ``(0, lambda_B)``, picking the plane lowest (highest
for the lower plane) at the centre of the box. Where the polygon is empty through rounding, the box without the
``z - delta`` constraint is used, which is a superset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from modeldiff.bounds.base import SpecBounder, SpecUnavailable
from modeldiff.linearize import NotLinearizable, linearize, mismatch

__all__ = ["DiffBounder", "NotApplicable", "diff_applicable"]

logger = logging.getLogger(__name__)


class NotApplicable(Exception):
    """The differential bound does not apply to this pair (the message says why)."""


def diff_applicable(model_a: nn.Module, model_b: nn.Module, input_shape) -> str | None:
    """None when the differential bound applies to the pair, else the reason it does not."""
    try:
        _pair_layers(model_a, model_b, tuple(input_shape))
    except NotApplicable as exc:
        return str(exc)
    return None


def _pair_layers(model_a, model_b, input_shape):
    try:
        la = linearize(model_a, input_shape)
        lb = linearize(model_b, input_shape)
    except NotLinearizable as exc:
        raise NotApplicable(str(exc)) from exc
    reason = mismatch(la, lb)
    if reason is not None:
        raise NotApplicable(f"the models differ in architecture: {reason}")
    return la, lb


# --- relaxations -----------------------------------------------------------------------------------------------


def relu_relaxation(lower: Tensor, upper: Tensor):
    """Triangle relaxation of ``relu`` on ``[lower, upper]``.

    Returns ``(up_slope, up_bias, lo_slope)``: ``lo_slope * z <= relu(z) <= up_slope * z + up_bias``. The lower
    slope is 1 where ``upper >= -lower`` else 0 (CROWN's adaptive choice); stable neurons are exact.
    """
    active = lower >= 0
    inactive = upper <= 0
    unstable = ~(active | inactive)
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    slope = torch.where(unstable, upper / width, active.to(upper.dtype))
    bias = torch.where(unstable, -slope * lower, torch.zeros_like(lower))
    lo_slope = torch.where(unstable, (upper >= -lower).to(upper.dtype), active.to(upper.dtype))
    return slope, bias, lo_slope


def _f(z: Tensor, d: Tensor) -> Tensor:
    return torch.relu(z) - torch.relu(z - d)


def _vertices(la, ua, lb, ub, ld, ud):
    """Candidate vertices ``[..., V]`` (z, delta) and a feasibility mask, for the pieces of ``f`` on ``D``."""
    # lines p z + q d = r: z = la, z = ua, z = 0, d = ld, d = ud, z - d = lb, z - d = ub, z - d = 0
    zero = torch.zeros_like(la)
    lines = [
        (1.0, 0.0, la), (1.0, 0.0, ua), (1.0, 0.0, zero),
        (0.0, 1.0, ld), (0.0, 1.0, ud),
        (1.0, -1.0, lb), (1.0, -1.0, ub), (1.0, -1.0, zero),
    ]
    zs, ds = [], []
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            p1, q1, r1 = lines[i]
            p2, q2, r2 = lines[j]
            det = p1 * q2 - p2 * q1
            if det == 0:
                continue
            zs.append((r1 * q2 - r2 * q1) / det)
            ds.append((p1 * r2 - p2 * r1) / det)
    z = torch.stack(zs, dim=-1)
    d = torch.stack(ds, dim=-1)
    scale = 1.0 + torch.stack([la.abs(), ua.abs(), ld.abs(), ud.abs()], -1).amax(-1, keepdim=True)
    tol = 1e-9 * scale
    in_box = (z >= la.unsqueeze(-1) - tol) & (z <= ua.unsqueeze(-1) + tol)
    in_box &= (d >= ld.unsqueeze(-1) - tol) & (d <= ud.unsqueeze(-1) + tol)
    zb = z - d
    in_d = in_box & (zb >= lb.unsqueeze(-1) - tol) & (zb <= ub.unsqueeze(-1) + tol)
    empty = ~in_d.any(dim=-1, keepdim=True)
    mask = torch.where(empty, in_box, in_d)
    return z, d, mask


def diff_relaxation(la: Tensor, ua: Tensor, lb: Tensor, ub: Tensor, ld: Tensor, ud: Tensor):
    """Planes bounding ``f(z, delta) = relu(z) - relu(z - delta)`` over the neuron's domain (see module doc).

    All arguments are ``[...]`` bounds of ``z_A``, ``z_B`` and ``delta``. Returns
    ``(up_z, up_d, up_c, lo_z, lo_d, lo_c)`` with ``lo_z z + lo_d delta + lo_c <= f <= up_z z + up_d delta + up_c``.
    Neurons stable in both networks get their exact linear form (``f = delta``, ``0``, ``z`` or ``delta - z``);
    the planes are searched for the others only.
    """
    a_on, a_off, b_on, b_off = la >= 0, ua <= 0, lb >= 0, ub <= 0
    stable = (a_on | a_off) & (b_on | b_off)
    one, zero = torch.ones_like(la), torch.zeros_like(la)
    # exact: both on -> delta; both off -> 0; A on, B off -> z; A off, B on -> delta - z. A z_B that is exactly 0
    # (a pruned neuron: on and off) counts as off; on would add relu(z_B) = z - delta a second time.
    b_on = b_on & ~b_off
    ez = torch.where(a_on & b_off, one, torch.where(a_off & b_on, -one, zero))
    ed = torch.where(b_on, one, zero)
    out = [ez, ed, zero.clone(), ez.clone(), ed.clone(), zero.clone()]
    if stable.all():
        return tuple(out)
    idx = ~stable
    planes = _planes(la[idx], ua[idx], lb[idx], ub[idx], ld[idx], ud[idx])
    for t, v in zip(out, planes):
        t[idx] = v
    return tuple(out)


def _planes(la: Tensor, ua: Tensor, lb: Tensor, ub: Tensor, ld: Tensor, ud: Tensor):
    """The plane search of :func:`diff_relaxation` for 1-D tensors of neurons."""
    lam_a = relu_relaxation(la, ua)[0]
    lam_b = relu_relaxation(lb, ub)[0]
    one, zero = torch.ones_like(la), torch.zeros_like(la)
    cand = []
    for a_a in (zero, one, lam_a):
        for a_b in (zero, one, lam_b):
            cand.append((a_a - a_b, a_b))  # the first is the zero plane
    cand += [(zero, lam_a), (zero, lam_b)]
    # secant planes of f over the (z, delta) box: slopes along z at either delta edge, along delta at either z edge
    # (f is 1-Lipschitz in z and in delta, so exact secant slopes lie in [-1, 1]; degenerate widths give 0)
    def secant(num: Tensor, width: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        ok = width > 1e-12 * (1 + torch.maximum(lo.abs(), hi.abs()))
        return torch.where(ok, num / torch.where(ok, width, one), zero).clamp(-1, 1)

    sz = [secant(_f(ua, e) - _f(la, e), ua - la, la, ua) for e in (ld, ud)]
    sd = [secant(_f(e, ud) - _f(e, ld), ud - ld, ld, ud) for e in (la, ua)]
    cand += [(x, y) for x in sz for y in sd]
    az = torch.stack([c[0] for c in cand], dim=-1)  # [..., C]
    ad = torch.stack([c[1] for c in cand], dim=-1)
    vz, vd, mask = _vertices(la, ua, lb, ub, ld, ud)  # [..., V]
    # vertices outside the domain are replaced by a vertex inside it (every neuron has one), so that the extremes
    # over all vertices are the extremes over the feasible ones; the residuals f - az z - ad delta at every
    # (candidate, vertex) pair are then one batched product [C, 3] x [3, V]
    first = mask.to(torch.int8).argmax(dim=-1, keepdim=True)
    vz = torch.where(mask, vz, vz.gather(-1, first))
    vd = torch.where(mask, vd, vd.gather(-1, first))
    verts = torch.stack([vz, vd, _f(vz, vd)], dim=-2).flatten(0, -3)  # [U, 3, V]
    slopes = torch.stack([-az, -ad, torch.ones_like(az)], dim=-1).flatten(0, -3)  # [U, C, 3]
    resid = torch.bmm(slopes, verts).view(*az.shape, vz.shape[-1])  # [..., C, V]
    up_c = resid.amax(dim=-1)  # [..., C]
    lo_c = resid.amin(dim=-1)
    zc, dc = ((la + ua) / 2).unsqueeze(-1), ((ld + ud) / 2).unsqueeze(-1)
    up_val = az * zc + ad * dc + up_c
    lo_val = az * zc + ad * dc + lo_c
    iu = up_val.argmin(dim=-1, keepdim=True)
    il = lo_val.argmax(dim=-1, keepdim=True)

    def pick(t, i):
        return t.gather(-1, i).squeeze(-1)

    return pick(az, iu), pick(ad, iu), pick(up_c, iu), pick(az, il), pick(ad, il), pick(lo_c, il)


# --- back-substitution -----------------------------------------------------------------------------------------


@dataclass
class _LayerBounds:
    la: Tensor
    ua: Tensor
    lb: Tensor
    ub: Tensor
    ld: Tensor
    ud: Tensor
    relax_a: tuple = field(default=())
    relax_b: tuple = field(default=())
    relax_d: tuple = field(default=())


_FIELDS = ("la", "ua", "lb", "ub", "ld", "ud")

#: branch and bound's boxes are bounded in this many groups of similar counts of unstable neurons
BOX_GROUPS = 8
#: a group's boxes are back-substituted in chunks of at most this many coefficients (memory: 8 bytes each)
MAX_ELEMENTS = 2**24


def split_bounds(bounds: list[_LayerBounds]) -> Tensor:
    """The boxes' bounds packed for branch and bound: ``[N, 6, T]``, rows ``la, ua, lb, ub, ld, ud``, the hidden
    layers' neurons side by side (``T`` neurons in all)."""
    return torch.cat([torch.stack([getattr(b, f) for f in _FIELDS], dim=1) for b in bounds], dim=2)


#: rows of a packed state that hold lower bounds (the others hold upper bounds)
LOWER_ROWS = torch.tensor([True, False, True, False, True, False]).view(6, 1)


def intersect_bounds(x: Tensor, y: Tensor) -> Tensor:
    """Packed bounds (``[..., 6, T]``) valid on the intersection of two boxes, from bounds valid on each."""
    return torch.where(LOWER_ROWS.to(x.device), torch.maximum(x, y), torch.minimum(x, y))


def stack_bounds(packed: Tensor, sizes: list[int], relax: bool = False,
                 identity: list[Tensor | None] | None = None) -> list[_LayerBounds]:
    """Inverse of :func:`split_bounds` (``sizes``: the hidden layers' widths); the relaxations are restored only
    with ``relax`` (to back-substitute through the layers; otherwise only the bounds are used), ``identity`` as for
    :func:`_relax`."""
    out = [_LayerBounds(*part.unbind(dim=1)) for part in packed.split(sizes, dim=2)]
    if relax:
        for k, b in enumerate(out):
            _relax(b, None if identity is None else identity[k])
    return out


def _relax(b: _LayerBounds, identity: Tensor | None = None) -> None:
    """The layer's relaxations from its bounds; ``identity`` (``[n]`` mask): neurons the ReLU leaves as they are
    (values carried by a residual connection), whose relaxations are exact: ``h = z``, ``d = delta``."""
    b.relax_a = relu_relaxation(b.la, b.ua)
    b.relax_b = relu_relaxation(b.lb, b.ub)
    b.relax_d = diff_relaxation(b.la, b.ua, b.lb, b.ub, b.ld, b.ud)
    if identity is not None:
        one, zero = torch.ones_like(b.la), torch.zeros_like(b.la)

        def exact(relax: tuple, values: tuple) -> tuple:
            return tuple(torch.where(identity, v, t) for t, v in zip(relax, values))

        b.relax_a = exact(b.relax_a, (one, zero, one))
        b.relax_b = exact(b.relax_b, (one, zero, one))
        b.relax_d = exact(b.relax_d, (zero, one, zero, zero, one, zero))


def _rdot(lam: Tensor, v: Tensor) -> Tensor:
    """``[S, N, n] . [N, n] -> [S, N]`` (rows first)."""
    return (lam * v).sum(dim=-1)


def _concretize_rows(coef: Tensor, const: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``max_x coef @ x + const`` over each box, rows first: ``coef`` ``[S, N, n]``, ``const`` ``[S, N]``, box
    ``[N, n]`` -> ``[S, N]``."""
    center = (upper + lower) / 2
    radius = (upper - lower) / 2
    return _rdot(coef, center) + _rdot(coef.abs(), radius) + const


def _interval_affine(w: Tensor, lower: Tensor, upper: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact bounds ``(low, high)`` ``[N, out]`` of ``x @ w.T (+ bias)`` over boxes ``[N, in]`` (centre and
    radius)."""
    mid, rad = (upper + lower) / 2 @ w.T, (upper - lower) / 2 @ w.abs().T
    if bias is not None:
        mid = mid + bias
    return mid - rad, mid + rad


def _pos_neg(w: Tensor) -> tuple[Tensor, Tensor]:
    return w.clamp_min(0), w.clamp_max(0)


class _Forward:
    """Linear upper/lower functions of the input for z_A, z_B and delta, carried forward layer by layer."""

    def __init__(self, lower: Tensor, upper: Tensor):
        self.lower, self.upper = lower, upper
        self.prev: tuple[Tensor, ...] = ()  # the previous layer's linear bounds of z_A, z_B and delta

    @staticmethod
    def _affine(w: Tensor, b: Tensor | None, up: tuple[Tensor, Tensor], lo: tuple[Tensor, Tensor]):
        """``w @ y + b`` for ``lo <= y <= up`` given as linear functions ``(coef [N,n,d], const [N,n])``."""
        wp, wn = _pos_neg(w)

        def mm(m: Tensor, coef: Tensor) -> Tensor:  # [n_out, n] x [N, n, d] as one GEMM
            return (coef.transpose(1, 2) @ m.T).transpose(1, 2)

        u_coef = mm(wp, up[0]) + mm(wn, lo[0])
        l_coef = mm(wp, lo[0]) + mm(wn, up[0])
        u_const = up[1] @ wp.T + lo[1] @ wn.T
        l_const = lo[1] @ wp.T + up[1] @ wn.T
        if b is not None:
            u_const, l_const = u_const + b, l_const + b
        return (u_coef, u_const), (l_coef, l_const)

    @staticmethod
    def _add(x: tuple[Tensor, Tensor], y: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return x[0] + y[0], x[1] + y[1]

    @staticmethod
    def _relu(relax: tuple, up: tuple[Tensor, Tensor], lo: tuple[Tensor, Tensor]):
        slope, bias, lo_slope = relax
        return (up[0] * slope.unsqueeze(-1), up[1] * slope + bias), (lo[0] * lo_slope.unsqueeze(-1), lo[1] * lo_slope)

    @staticmethod
    def _plane(az: Tensor, ad: Tensor, c: Tensor, z: tuple, dl: tuple, upper_side: bool):
        """``az z + ad delta + c`` bounded above (or below) with the linear bounds of z and delta."""
        (zu, zl), (du, dl_) = z, dl
        azp, azn = _pos_neg(az)
        adp, adn = _pos_neg(ad)
        if not upper_side:
            zu, zl, du, dl_ = zl, zu, dl_, du
        coef = (zu[0] * azp.unsqueeze(-1) + zl[0] * azn.unsqueeze(-1)
                + du[0] * adp.unsqueeze(-1) + dl_[0] * adn.unsqueeze(-1))
        const = zu[1] * azp + zl[1] * azn + du[1] * adp + dl_[1] * adn + c
        return coef, const

    def layer(self, bounder: "DiffBounder", k: int, bounds: list) -> tuple[Tensor, ...]:
        """Concrete ``(ua, la, ub, lb, ud, ld)`` of layer ``k`` (after updating the linear functions)."""
        la_, lb_ = bounder.layers_a[k], bounder.layers_b[k]
        n_batch = self.lower.shape[0]
        if k == 0:
            def exact(w, b):
                coef = w.unsqueeze(0).expand(n_batch, *w.shape)
                const = b.unsqueeze(0).expand(n_batch, -1)
                return (coef, const), (coef, const)

            za, zb, dd = exact(la_.weight, la_.bias), exact(lb_.weight, lb_.bias), exact(bounder.dw[0], bounder.db[0])
        else:
            prev = bounds[k - 1]
            za_u, za_l, zb_u, zb_l, dd_u, dd_l = self.prev
            ha = self._relu(prev.relax_a, za_u, za_l)
            hb = self._relu(prev.relax_b, zb_u, zb_l)
            uz, ud_, uc, lz, ld_, lc = prev.relax_d
            d_up = self._plane(uz, ud_, uc, (za_u, za_l), (dd_u, dd_l), True)
            d_lo = self._plane(lz, ld_, lc, (za_u, za_l), (dd_u, dd_l), False)
            za = self._affine(la_.weight, la_.bias, *ha)
            zb = self._affine(lb_.weight, lb_.bias, *hb)
            t1 = self._affine(lb_.weight, None, d_up, d_lo)
            t2 = self._affine(bounder.dw[k], bounder.db[k], *ha)
            dd = (self._add(t1[0], t2[0]), self._add(t1[1], t2[1]))
        self.prev = (za[0], za[1], zb[0], zb[1], dd[0], dd[1])
        lo, hi = self.lower, self.upper

        def conc(up, low):  # linear functions [N, n_out, d] -> their extremes over the boxes, [N, n_out]
            upper = _concretize_rows(up[0].transpose(0, 1), up[1].T, lo, hi).T
            lower = -_concretize_rows(-low[0].transpose(0, 1), -low[1].T, lo, hi).T
            return upper, lower

        ua, la = conc(*za)
        ub, lb = conc(*zb)
        ud, ld = conc(*dd)
        return ua, la, ub, lb, ud, ld


class DiffBounder(SpecBounder):
    """Differential CROWN for a pair of same-architecture ReLU networks.

    Args:
        model_a, model_b: the models (eval mode, float64 recommended).
        input_shape: one input's shape.

    Raises:
        NotApplicable: the pair does not read as two dense ReLU networks of equal shapes (and equal residual
            connections).

    Example:
        >>> from torch import nn
        >>> a = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
        >>> bounder = DiffBounder(a, a, (2,))
        >>> lo, hi = bounder.delta_bounds(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))
        >>> float(lo.abs().max()), float(hi.abs().max())
        (0.0, 0.0)
    """

    def __init__(self, model_a: nn.Module, model_b: nn.Module, input_shape, intermediate: str | None = None):
        self.layers_a, self.layers_b = _pair_layers(model_a, model_b, tuple(input_shape))
        self.intermediate = intermediate or "backward"
        self.n_outputs = int(self.layers_a[-1].weight.shape[0])
        #: widths of the hidden layers (the layers whose bounds branch and bound keeps per box)
        self.hidden_sizes = [int(layer.weight.shape[0]) for layer in self.layers_a[:-1]]
        self.dw = [a.weight - b.weight for a, b in zip(self.layers_a, self.layers_b)]
        #: fold the dW products into the W_A and W_B products (see :meth:`_backsub`): float64 only
        self._fold = self.layers_a[0].weight.dtype == torch.float64
        self.db = [a.bias - b.bias for a, b in zip(self.layers_a, self.layers_b)]
        #: per hidden layer: the neurons the ReLU leaves as they are (residual connections), or None
        self.identity = [layer.identity for layer in self.layers_a[:-1]]
        self._cache: tuple[Tensor, Tensor, list] | None = None

    def use_intermediate(self, lower: Tensor, upper: Tensor, bounds: list[_LayerBounds]) -> None:
        """Make the next :meth:`spec_bounds` calls on exactly these box tensors use ``bounds``."""
        self._cache = (lower, upper, bounds)

    def _bounds_for(self, lower: Tensor, upper: Tensor) -> list[_LayerBounds]:
        """Intermediate bounds of the boxes, reused while the same boxes are asked about again."""
        c = self._cache
        if c is not None and c[0] is lower and c[1] is upper:
            return c[2]
        bounds = self.intermediate_bounds(lower.flatten(1), upper.flatten(1))
        self._cache = (lower, upper, bounds)
        return bounds

    def spec_bounds(self, kind, lower, upper, spec=None):
        k, n = self.n_outputs, lower.shape[0]
        if spec is None:
            spec = self._eye(n, k if kind == "delta" else 2 * k, lower)
        s = spec.shape[1]
        both = torch.cat([spec, -spec], dim=1)
        if kind == "delta":
            spec_z, spec_d = None, both
        elif kind == "pair":
            # C_A A + C_B B = (C_A + C_B) A - C_B (A - B)
            c_a, c_b = both[..., :k], both[..., k:]
            spec_z, spec_d = c_a + c_b, -c_b
        else:
            raise SpecUnavailable(f"the differential bound has no {kind} relaxation")
        out = self.bound_spec(lower, upper, spec_d, spec_z, bounds=self._bounds_for(lower, upper))
        ub, neg_lb = out.split(s, dim=1)
        return -neg_lb, ub

    # back-substitution ---------------------------------------------------------------------------------------

    def _backsub(self, k: int, p: Tensor, q: Tensor, const: Tensor, bounds: list[_LayerBounds],
                 singles: tuple = (), extra: list | None = None, coefs: list | None = None):
        """Back-substitute linear functions of layer ``k``'s inputs down to the network's input.

        Rows first: ``(p, q, const)`` are coefficients ``[S, N, n]`` on ``(h_A^{k-1}, d^{k-1})`` and the constant
        ``[S, N]`` of the differential chain, ``S`` functions for each of ``N`` boxes; ``singles``: up to one
        ``(lam, const)`` per network (``(A, B)``, None to skip) of a single-network chain on ``h^{k-1}``, ``S``
        rows each. Returns the same tuples on the input: ``(p, const)`` and the singles.

        Each ReLU is crossed in sign-split form, ``lam -> lam * lo + lam^+ * (up - lo)`` (upper slopes where the
        coefficient is positive, lower ones elsewhere). The weight products are shared: ``z_A``'s coefficient
        ``lam_z @ W_A + lam_d @ (W_A - W_B)`` is computed as ``(lam_z + lam_d) @ W_A - lam_d @ W_B``, and the single
        chains ride along in the same two products (one with each network's weights), as do the biases
        (``lam_z . b_A + lam_d . db = (lam_z + lam_d) . b_A - lam_d . b_B``); this folding is used in float64 only,
        where the rounding of the two products is far below the dW terms (in float32 it is not). With rows first,
        every per-box relaxation broadcasts over the leading dimension and every slice written is contiguous.

        Without singles the chain is computed without preallocated buffers, so that autograd can run through it
        (ReLU-split branch and bound optimises its Lagrange multipliers so). ``extra``: per hidden layer ``j``,
        None or ``(ez, ed)`` ``[S, N, n_j]`` added to the coefficients on ``(z_A^j, delta^j)`` after its ReLU is
        crossed (the split constraints' multiplier terms). ``coefs``: a list that receives, per hidden layer from
        the first, the coefficients ``(p, q)`` ``[S, N, n_j]`` on ``(h_A^j, d^j)`` with which the layer's
        relaxations are crossed (so that a caller can tell how much of the bound each neuron's relaxation costs).
        """
        la, lb = self.layers_a, self.layers_b
        singles = list(singles) + [None] * (2 - len(singles))
        n_rows, n_batch = p.shape[0], p.shape[1]
        rows_a = n_rows * (2 if singles[0] is not None else 1)
        rows_b = n_rows * (2 if singles[1] is not None else 1)
        plain = singles[0] is None and singles[1] is None
        if extra is not None and not plain:
            raise ValueError("extra coefficients apply to the differential chain alone (no singles)")
        crossed = []
        for j in range(k - 1, -1, -1):
            up_s, up_b, lo_s = bounds[j].relax_a
            uz, ud_, uc, lz, ld_, lc = bounds[j].relax_d
            n = p.shape[-1]
            # differential chain: (p, q) on (h_A, d) -> (lam_z, lam_d) on (z_A, delta) through the planes of f
            p_pos, q_pos = p.clamp_min(0), q.clamp_min(0)
            if coefs is not None:
                crossed.append((p, q))
            const = const + _rdot(p_pos, up_b) + _rdot(q_pos, uc - lc) + _rdot(q, lc)
            if plain:
                lam_d = torch.addcmul(q * ld_, q_pos, ud_ - ld_)
            else:
                buf_a = p.new_empty(rows_a, n_batch, n)  # rows: lam_z + lam_d, then A's single chain
                buf_b = p.new_empty(rows_b, n_batch, n)  # rows: lam_d, then B's single chain
                lam_d = torch.addcmul(q * ld_, q_pos, ud_ - ld_, out=buf_b[:n_rows])
            lam_z = torch.addcmul(p * lo_s, p_pos, up_s - lo_s)
            lam_z.addcmul_(q, lz).addcmul_(q_pos, uz - lz)
            if extra is not None and extra[j] is not None:  # (only on the plain chain: see the docstring)
                lam_z, lam_d = lam_z + extra[j][0], lam_d + extra[j][1]
            if plain:
                buf_a, buf_b = lam_z + lam_d, lam_d
            else:
                torch.add(lam_z, lam_d, out=buf_a[:n_rows])
            del p_pos, q_pos, lam_z
            for net, item in enumerate(singles):
                if item is None:
                    continue
                lam, c = item
                up_s, up_b, lo_s = bounds[j].relax_a if net == 0 else bounds[j].relax_b
                pos = lam.clamp_min(0)
                out = (buf_a if net == 0 else buf_b)[n_rows:]
                torch.addcmul(lam * lo_s, pos, up_s - lo_s, out=out)  # on z^j
                singles[net] = (out, c + _rdot(pos, up_b))
            # linear layer j: z_A^j = W_A h_A + b_A ; delta^j = W_B d + dW h_A + db ; z_B^j = W_B h_B + b_B
            bias_a, bias_b = buf_a @ la[j].bias, buf_b @ lb[j].bias
            prod_a, prod_b = buf_a @ la[j].weight, buf_b @ lb[j].weight
            q = prod_b[:n_rows]
            if self._fold:
                const = const + bias_a[:n_rows] - bias_b[:n_rows]
                p = prod_a[:n_rows] - q
            else:  # below float64 the difference of two products would drown the small dW terms: use dW itself
                lam_z = buf_a[:n_rows] - lam_d
                const = const + lam_z @ la[j].bias + lam_d @ self.db[j]
                p = lam_z @ la[j].weight + lam_d @ self.dw[j]
            for net, prod, bias in ((0, prod_a, bias_a), (1, prod_b, bias_b)):
                if singles[net] is not None:
                    singles[net] = (prod[n_rows:], singles[net][1] + bias[n_rows:])
        if coefs is not None:
            coefs.extend(reversed(crossed))
        # at the input d^{-1} = 0 (both models see the same x): q drops out
        return (p, const), tuple(singles)

    def _backsub_diff(self, k: int, spec_z: Tensor | None, spec_d: Tensor, bounds: list[_LayerBounds],
                      lower: Tensor, upper: Tensor, linear: bool = False, extra: list | None = None,
                      coefs: list | None = None):
        """Upper bound of ``spec_z @ z_A^k + spec_d @ delta^k`` over the box, ``[N, S]`` (with ``linear``: the
        linear upper bound in the input instead, ``(coef [N, S, n_in], const [N, S])``); ``extra``, ``coefs`` as
        for :meth:`_backsub`."""
        la, lb = self.layers_a, self.layers_b
        spec_d = spec_d.transpose(0, 1)  # rows first
        const = (spec_d @ self.db[k])
        p = (spec_d @ self.dw[k])  # on h_A^{k-1}
        q = (spec_d @ lb[k].weight)  # on d^{k-1}
        if spec_z is not None:
            spec_z = spec_z.transpose(0, 1)
            const = const + (spec_z @ la[k].bias)
            p = p + (spec_z @ la[k].weight)
        (p, const), _ = self._backsub(k, p.contiguous(), q.contiguous(), const, bounds, extra=extra, coefs=coefs)
        if linear:
            return p.transpose(0, 1), const.T
        return _concretize_rows(p, const, lower, upper).T

    def _eye(self, n_batch: int, n: int, like: Tensor) -> Tensor:
        return torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(0).expand(n_batch, n, n)

    def intermediate_bounds(self, lower: Tensor, upper: Tensor, mode: str | None = None,
                            parent: list[_LayerBounds] | None = None) -> list[_LayerBounds]:
        """Bounds and relaxations of every hidden layer for the boxes ``[N, n_in]``.

        ``mode``: ``backward`` (CROWN back-substitution for every neuron: tightest, cost grows with depth squared
        times width), ``forward`` (linear bounds in the input carried forward: cost grows with the input
        dimension, so cheap for low-dimensional inputs, but looser), or None for :attr:`intermediate` (set at
        construction, ``backward`` by default). ``parent``: bounds valid on boxes containing
        these (branch and bound's parent boxes, one per box); each layer's bounds are intersected with them.
        """
        mode = mode or self.intermediate
        bounds: list[_LayerBounds] = []
        fwd = _Forward(lower, upper) if mode == "forward" else None
        for k in range(len(self.layers_a) - 1):
            n = self.layers_a[k].weight.shape[0]
            p = None if parent is None else parent[k]
            if fwd is not None:
                ua, la_, ub, lb_, ud, ld = fwd.layer(self, k, bounds)
            else:
                # without a parent, interval bounds from the layer below (loose but sound) play its part: where they
                # leave a neuron stable in both networks its relaxation is exact already, and only the others are
                # back-substituted. Their bounds are not intersected with the interval ones: that would move the
                # centres at which their planes are chosen, and measured on ACAS Xu, not always for the better.
                cheap = self._interval_step(k, bounds[k - 1]) if p is None and k > 0 else p
                ua, la_, ub, lb_, ud, ld = self._backward_layer(k, n, bounds, lower, upper, cheap)
            if p is not None:
                ua, la_, ub, lb_ = torch.minimum(ua, p.ua), torch.maximum(la_, p.la), torch.minimum(ub, p.ub), \
                    torch.maximum(lb_, p.lb)
                ud, ld = torch.minimum(ud, p.ud), torch.maximum(ld, p.ld)
            # the three quantities constrain each other: z_B = z_A - delta
            ud = torch.minimum(ud, ua - lb_)
            ld = torch.maximum(ld, la_ - ub)
            ub = torch.minimum(ub, ua - ld)
            lb_ = torch.maximum(lb_, la_ - ud)
            ua = torch.minimum(ua, ub + ud)
            la_ = torch.maximum(la_, lb_ + ld)
            b = _LayerBounds(la_, ua, lb_, ub, ld, ud)
            _relax(b, self.identity[k])
            bounds.append(b)
        return bounds

    def _interval_step(self, k: int, prev: _LayerBounds) -> _LayerBounds:
        """Bounds of layer ``k``'s ``z_A``, ``z_B`` and ``delta`` by interval arithmetic from layer ``k - 1``'s
        bounds (``h = relu(z)``, and ``d = relu(z_A) - relu(z_B)`` lies between 0 and ``delta``)."""
        ha_lo, ha_hi, hb_lo, hb_hi = prev.la.relu(), prev.ua.relu(), prev.lb.relu(), prev.ub.relu()
        d_lo = torch.maximum(ha_lo - hb_hi, prev.ld.clamp_max(0))
        d_hi = torch.minimum(ha_hi - hb_lo, prev.ud.clamp_min(0))
        ident = self.identity[k - 1]
        if ident is not None:  # carried values: h = z, d = delta
            ha_lo, ha_hi = torch.where(ident, prev.la, ha_lo), torch.where(ident, prev.ua, ha_hi)
            hb_lo, hb_hi = torch.where(ident, prev.lb, hb_lo), torch.where(ident, prev.ub, hb_hi)
            d_lo, d_hi = torch.where(ident, prev.ld, d_lo), torch.where(ident, prev.ud, d_hi)

        la, ua = _interval_affine(self.layers_a[k].weight, ha_lo, ha_hi)
        lb, ub = _interval_affine(self.layers_b[k].weight, hb_lo, hb_hi)
        l1, u1 = _interval_affine(self.layers_b[k].weight, d_lo, d_hi)
        l2, u2 = _interval_affine(self.dw[k], ha_lo, ha_hi)
        ba, bb, db = self.layers_a[k].bias, self.layers_b[k].bias, self.db[k]
        return _LayerBounds(la + ba, ua + ba, lb + bb, ub + bb, l1 + l2 + db, u1 + u2 + db)

    def _backward_layer(self, k: int, n: int, bounds: list[_LayerBounds], lower: Tensor, upper: Tensor,
                        parent: _LayerBounds | None) -> tuple[Tensor, ...]:
        """Back-substituted ``(ua, la, ub, lb, ud, ld)`` of layer ``k``. With ``parent`` (bounds valid on boxes
        containing these, or cheaper bounds of the same boxes), each box bounds anew only the neurons unstable in A
        or B in its parent; the others keep their parent's bounds: a neuron stable in both networks (or carried by
        a residual connection) has an exact relaxation whatever its bounds (see :func:`diff_relaxation`), so
        tighter bounds would change nothing downstream. The boxes are then taken in :data:`BOX_GROUPS` groups of
        similar counts of such neurons, each group padded to its own largest count, and in chunks of at most
        :data:`MAX_ELEMENTS` coefficients."""
        names = ("ua", "la", "ub", "lb", "ud", "ld")
        if parent is None:
            n_batch = lower.shape[0]
            return self._neuron_bounds(k, torch.arange(n, device=lower.device).expand(n_batch, n), bounds,
                                       lower, upper)
        need = ((parent.la < 0) & (parent.ua > 0)) | ((parent.lb < 0) & (parent.ub > 0))  # [N, n]
        if self.identity[k] is not None:  # carried values: exact relaxations whatever their bounds
            need &= ~self.identity[k]
        counts = need.sum(dim=1)
        full = [getattr(parent, f).clone() for f in names]
        width = max(int(layer.weight.shape[1]) for layer in self.layers_a[: k + 1])
        for sorted_group in torch.argsort(counts).tensor_split(BOX_GROUPS):
            m = int(counts[sorted_group].max()) if len(sorted_group) else 0
            if m == 0:
                continue
            # at most MAX_ELEMENTS coefficients at a time (4 m rows per box: both sides, both chains)
            for group in sorted_group.split(max(1, MAX_ELEMENTS // (4 * m * width))):
                # per box: its unstable neurons first, padded with stable ones (their bounds are discarded)
                idx = torch.argsort((~need[group]).to(torch.int8), dim=1, stable=True)[:, :m]  # [G, m]
                valid = need[group].gather(1, idx)
                sub = [_LayerBounds(*([None] * 6), relax_a=tuple(t[group] for t in b.relax_a),
                                    relax_b=tuple(t[group] for t in b.relax_b),
                                    relax_d=tuple(t[group] for t in b.relax_d)) for b in bounds[:k]]
                out = self._neuron_bounds(k, idx, sub, lower[group], upper[group])
                rows = group.unsqueeze(1)
                for t, v in zip(full, out):
                    t[rows, idx] = torch.where(valid, v, t[rows, idx])
        return tuple(full)

    def _neuron_bounds(self, k: int, idx: Tensor, bounds: list[_LayerBounds], lower: Tensor, upper: Tensor):
        """Back-substituted ``(ua, la, ub, lb, ud, ld)``, each ``[N, m]``, of the neurons ``idx`` ``[N, m]`` of
        layer ``k`` in each box."""
        la, lb = self.layers_a[k], self.layers_b[k]
        if k == 0:  # linear in the input: interval arithmetic on the whole layer, no rows per box
            def exact(w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
                low, high = _interval_affine(w, lower, upper, b)
                return high.gather(1, idx), low.gather(1, idx)

            return (*exact(la.weight, la.bias), *exact(lb.weight, lb.bias), *exact(self.dw[0], self.db[0]))

        def rows(t: Tensor) -> Tensor:  # the neurons' rows of a weight or bias, rows first: [m, N, ...]
            return t[idx.T]

        def both(t: Tensor) -> Tensor:  # upper and lower bounds in one pass: rows for +z and -z
            return torch.cat([t, -t], dim=0)

        w_b = both(rows(lb.weight))
        singles = ((both(rows(la.weight)), both(rows(la.bias))), (w_b, both(rows(lb.bias))))
        (p, c_d), ((p_a, c_a), (p_b, c_b)) = self._backsub(k, both(rows(self.dw[k])), w_b, both(rows(self.db[k])),
                                                           bounds, singles)
        m = idx.shape[1]
        ua, la_ = _concretize_rows(p_a, c_a, lower, upper).T.split(m, dim=1)
        ub, lb_ = _concretize_rows(p_b, c_b, lower, upper).T.split(m, dim=1)
        ud, ld = _concretize_rows(p, c_d, lower, upper).T.split(m, dim=1)
        return ua, -la_, ub, -lb_, ud, -ld

    def bound_spec(self, lower: Tensor, upper: Tensor, spec_d: Tensor, spec_z: Tensor | None = None,
                   bounds: list[_LayerBounds] | None = None) -> Tensor:
        """Upper bounds ``[N, S]`` of ``spec_z @ A(x) + spec_d @ (A(x) - B(x))`` over each box.

        ``lower``/``upper`` are ``[N, *input_shape]``; ``spec_d``/``spec_z`` are ``[N, S, K]``.
        """
        lower, upper = lower.flatten(1), upper.flatten(1)
        if bounds is None:
            bounds = self.intermediate_bounds(lower, upper)
        return self._backsub_diff(len(self.layers_a) - 1, spec_z, spec_d, bounds, lower, upper)

    def linear_bound(self, lower: Tensor, upper: Tensor, spec_d: Tensor, bounds: list[_LayerBounds],
                     extra: list | None = None, coefs: list | None = None):
        """The linear upper bound ``coef @ x + const`` of ``spec_d @ (A(x) - B(x))`` over each box (as
        :meth:`bound_spec` concretizes it): ``(coef [N, S, n_in], const [N, S])``. ``extra``: multiplier terms
        per hidden layer, ``coefs``: a list to receive the coefficients each layer's relaxations are crossed with
        (both as for :meth:`_backsub`; ReLU-split branch and bound uses them)."""
        lower, upper = lower.flatten(1), upper.flatten(1)
        return self._backsub_diff(len(self.layers_a) - 1, None, spec_d, bounds, lower, upper, linear=True,
                                  extra=extra, coefs=coefs)

    def delta_bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise bounds ``([N, K], [N, K])`` of ``A(x) - B(x)`` over each box."""
        lo, up = lower.flatten(1), upper.flatten(1)
        bounds = self.intermediate_bounds(lo, up)
        eye = self._eye(lo.shape[0], self.n_outputs, lo)
        ub, lb = self.bound_spec(lo, up, torch.cat([eye, -eye], dim=1), bounds=bounds).split(self.n_outputs, dim=1)
        return -lb, ub
