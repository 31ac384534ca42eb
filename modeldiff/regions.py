"""Input regions: batches of axis-aligned boxes, and the ways to build them.

A :class:`Region` holds N boxes ``lower[i] <= x <= upper[i]`` over one input shape. Build one with
:func:`ball` (an L-inf ball around seed points, optionally intersected with a domain such as the
pixel range), :func:`box` (explicit bounds) or :func:`from_vnnlib` (the input part of a VNN-LIB
property). :func:`load_points` and :func:`load_labels` read seed points and labels from ``.pt``,
``.npy`` or ``.npz`` files.

Conventions: the batch dimension is always first. A 1-D tensor given to :func:`ball` or :func:`box`
(or read by :func:`load_points`) is ONE input, and gets a batch dimension of 1. Every error is a
:class:`~modeldiff.errors.RegionError` with a one-line message.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from modeldiff.errors import RegionError

__all__ = [
    "Region",
    "ball",
    "box",
    "load_points",
    "load_labels",
    "from_vnnlib",
]

_SMALL_NUMEL = 64  # to_dict writes the bounds out when the region has at most this many numbers


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _one_line(text: Any, limit: int = 300) -> str:
    """First non-empty line of ``text``, shortened: error messages must be one line."""
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return type(text).__name__ if isinstance(text, BaseException) else ""


def _fmt(v: float) -> str:
    return f"{v:g}"


def _as_float_tensor(x: Any, what: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Tensor of a floating dtype from a tensor / array / number; integers go to the default float dtype."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x) if not isinstance(x, (int, float)) else x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise RegionError(f"{what} is not numeric: {_one_line(exc)}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise RegionError(f"{what} must be real numbers, got dtype {t.dtype}")
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum().item())


def _check_finite(t: torch.Tensor, what: str) -> None:
    if torch.isnan(t).any():
        raise RegionError(f"{what} contain NaN")
    if torch.isinf(t).any():
        raise RegionError(f"{what} contain inf")


def _first_box_index(mask: torch.Tensor) -> int:
    """Index of the first box (batch entry) where ``mask`` [N, ...] is true anywhere."""
    per_box = mask.reshape(mask.shape[0], -1).any(dim=1)
    return int(torch.nonzero(per_box)[0, 0].item())


# --------------------------------------------------------------------------------------------
# Region
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Region:
    """A batch of N axis-aligned input boxes.

    lower / upper: tensors ``[N, *input_shape]`` of one floating dtype, finite, ``lower <= upper``.
    centers: optional ``[N, *input_shape]``, the seed points of an eps-ball (they may lie outside the
    box when the ball was clipped to a domain); for explicit boxes :attr:`midpoints` is the box middle.
    eps: the ball radius, or None. A float, or for a per-feature radius a tensor of the input shape.
    description: free text, for reports.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    centers: torch.Tensor | None = None
    eps: float | torch.Tensor | None = None
    description: str = ""

    def __post_init__(self) -> None:
        lower = self.lower
        upper = self.upper
        if not isinstance(lower, torch.Tensor) or not isinstance(upper, torch.Tensor):
            raise RegionError(
                f"lower and upper must be torch tensors, got {type(lower).__name__} and {type(upper).__name__}"
            )
        if not lower.is_floating_point() or not upper.is_floating_point():
            raise RegionError(f"lower and upper must have a floating dtype, got {lower.dtype} and {upper.dtype}")
        if lower.dtype != upper.dtype:
            raise RegionError(f"lower and upper dtypes differ: {lower.dtype} vs {upper.dtype}")
        if lower.device != upper.device:
            raise RegionError(f"lower and upper are on different devices: {lower.device} vs {upper.device}")
        if lower.shape != upper.shape:
            raise RegionError(f"lower shape {tuple(lower.shape)} != upper shape {tuple(upper.shape)}")
        if lower.dim() < 1:
            raise RegionError("lower and upper need a batch dimension, got 0-d tensors")
        if lower.shape[0] < 1:
            raise RegionError("region has no boxes (batch size 0)")
        _check_finite(lower, "lower bounds")
        _check_finite(upper, "upper bounds")
        bad = lower > upper
        if bad.any():
            raise RegionError(
                f"lower > upper at {_count(bad)} entries (first in box {_first_box_index(bad)})"
            )

        centers = self.centers
        if centers is not None:
            if not isinstance(centers, torch.Tensor):
                raise RegionError(f"centers must be a torch tensor, got {type(centers).__name__}")
            if not centers.is_floating_point():
                raise RegionError(f"centers must have a floating dtype, got {centers.dtype}")
            if centers.shape != lower.shape:
                raise RegionError(f"centers shape {tuple(centers.shape)} != bounds shape {tuple(lower.shape)}")
            if centers.device != lower.device:
                raise RegionError(f"centers are on {centers.device} but bounds on {lower.device}")
            _check_finite(centers, "centers")

        eps = self.eps
        if eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, (int, float, torch.Tensor)):
                raise RegionError(f"eps must be a float, a tensor or None, got {type(eps).__name__}")
            if isinstance(eps, torch.Tensor):
                if eps.dtype == torch.bool or eps.is_complex():
                    raise RegionError(f"eps must be real, got dtype {eps.dtype}")
                if torch.isnan(eps).any():
                    raise RegionError("eps is NaN")
                if (eps < 0).any():
                    raise RegionError(f"eps must be >= 0, got min {float(eps.min()):g}")
                if eps.numel() == 1:
                    object.__setattr__(self, "eps", float(eps.reshape(()).item()))
                else:
                    try:
                        torch.broadcast_shapes(eps.shape, tuple(lower.shape[1:]))
                    except RuntimeError:
                        raise RegionError(
                            f"eps of shape {tuple(eps.shape)} does not broadcast to input shape {tuple(lower.shape[1:])}"
                        ) from None
            else:
                eps = float(eps)
                if math.isnan(eps):
                    raise RegionError("eps is NaN")
                if eps < 0:
                    raise RegionError(f"eps must be >= 0, got {eps:g}")
                object.__setattr__(self, "eps", eps)

        if not isinstance(self.description, str):
            raise RegionError(f"description must be a str, got {type(self.description).__name__}")

    # -- basic properties ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.lower.shape[0])

    def __repr__(self) -> str:
        eps = self.eps
        if isinstance(eps, torch.Tensor):
            eps_s = f"per-feature[{float(eps.min()):g}..{float(eps.max()):g}]"
        else:
            eps_s = repr(eps)
        return (
            f"Region(n={len(self)}, input_shape={self.input_shape}, eps={eps_s}, "
            f"dtype={self.dtype}, device={self.device}, description={self.description!r})"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.lower.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.lower.dtype

    @property
    def device(self) -> torch.device:
        return self.lower.device

    @property
    def midpoints(self) -> torch.Tensor:
        """The seed points when given, else the box midpoints; ``[N, *input_shape]``."""
        if self.centers is not None:
            return self.centers
        return self.lower + (self.upper - self.lower) / 2

    @property
    def width(self) -> torch.Tensor:
        """``upper - lower``, ``[N, *input_shape]``."""
        return self.upper - self.lower

    # -- conversion / indexing ----------------------------------------------------------------

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "Region":
        """A copy on ``device`` and/or with floating ``dtype`` (bounds rounded to nearest)."""
        if dtype is not None:
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise RegionError(f"Region dtype must be a floating torch dtype, got {dtype}")

        def conv(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype)

        eps = self.eps
        if isinstance(eps, torch.Tensor):
            eps = eps.to(device=device, dtype=dtype)
        return Region(
            lower=conv(self.lower),
            upper=conv(self.upper),
            centers=conv(self.centers),
            eps=eps,
            description=self.description,
        )

    def __getitem__(self, idx: Any) -> "Region":
        """Sub-region of the selected boxes; the batch dimension is kept (an int gives one box)."""
        n = len(self)
        if isinstance(idx, torch.Tensor) and idx.dim() == 0 and not idx.dtype == torch.bool:
            idx = int(idx.item())
        if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
            i = int(idx)
            if i < -n or i >= n:
                raise IndexError(f"box index {i} out of range for a region of {n} boxes")
            i = i % n
            sel: Any = slice(i, i + 1)
        elif isinstance(idx, slice):
            sel = idx
        else:
            try:
                sel = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
            except (TypeError, ValueError, RuntimeError):
                raise RegionError(f"cannot index a Region with {type(idx).__name__}") from None
            if sel.dim() != 1 or not (sel.dtype == torch.bool or not sel.is_floating_point()):
                raise RegionError(
                    f"Region index must be an int, a slice, or a 1-D integer/bool index, got shape "
                    f"{tuple(sel.shape)} dtype {sel.dtype}"
                )
            if sel.dtype == torch.bool:
                if sel.numel() != n:
                    raise RegionError(f"bool mask has {sel.numel()} entries for a region of {n} boxes")
            else:
                sel = sel.long()
                if sel.numel() and (sel.min() < -n or sel.max() >= n):
                    raise IndexError(f"box index out of range for a region of {n} boxes")
            sel = sel.to(self.lower.device)
        lower = self.lower[sel]
        if lower.shape[0] == 0:
            raise RegionError("index selects no boxes")
        return Region(
            lower=lower,
            upper=self.upper[sel],
            centers=None if self.centers is None else self.centers[sel],
            eps=self.eps,
            description=self.description,
        )

    # -- geometry -----------------------------------------------------------------------------

    def _check_points(self, x: Any, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = _as_float_tensor(x, what)
        shape = tuple(self.lower.shape)
        if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
            raise RegionError(
                f"{what} of shape {tuple(x.shape)} does not end in the region's shape {shape} ([N, *input_shape])"
            )
        return x

    def contains(self, x: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
        """Bool ``[..., N]``: whether ``x[..., i]`` lies in box i (within ``atol``). ``x`` is ``[..., N, *shape]``.

        NaN entries are never contained.
        """
        x = self._check_points(x, "points")
        atol = float(atol)
        if math.isnan(atol) or atol < 0:
            raise RegionError(f"atol must be >= 0, got {atol:g}")
        lo = self.lower.to(x.device)
        hi = self.upper.to(x.device)
        inside = (x >= lo - atol) & (x <= hi + atol)
        k = len(self.input_shape)
        if k == 0:
            return inside
        return inside.flatten(start_dim=inside.dim() - k).all(dim=-1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp ``x`` (``[N, *shape]`` or ``[R, N, *shape]``, any leading dims) into the boxes.

        The result has ``x``'s dtype (integer ``x`` gets the region's) and device; NaN stays NaN.
        """
        x = self._check_points(x, "points")
        if not x.is_floating_point():
            x = x.to(self.dtype)
        lo = self.lower.to(device=x.device, dtype=x.dtype)
        hi = self.upper.to(device=x.device, dtype=x.dtype)
        return torch.minimum(torch.maximum(x, lo), hi)

    def _rand(self, shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(tuple(shape), generator=generator, dtype=work, device=gen_device)
        return u.to(self.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points drawn uniformly from each box: ``[n, N, *input_shape]``, always inside."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise RegionError(f"sample count must be an int >= 0, got {n!r}")
        u = self._rand((int(n), *self.lower.shape), generator)
        lo = self.lower.to(u.dtype)
        hi = self.upper.to(u.dtype)
        pts = (lo + (hi - lo) * u).to(self.dtype)
        # rounding may step one ulp outside; clamp back
        return torch.minimum(torch.maximum(pts, self.lower), self.upper)

    def num_varying(self) -> torch.Tensor:
        """Long ``[N]``: how many input entries of each box have ``lower < upper``."""
        return (self.lower < self.upper).reshape(len(self), -1).sum(dim=1)

    def corners(self, max_corners: int = 1024, generator: torch.Generator | None = None) -> torch.Tensor:
        """Box corners, ``[k, N, *input_shape]``.

        Only varying entries (``lower < upper``) count; fixed entries keep their value. With d the
        largest number of varying entries over the boxes, all ``2^d`` corners are returned (in binary
        order; boxes with fewer varying entries repeat corners) when ``2^d <= max_corners``, else
        ``max_corners`` corners drawn at random (each varying entry at lower or upper with prob. 1/2).
        """
        if isinstance(max_corners, bool) or not isinstance(max_corners, (int, np.integer)) or max_corners < 1:
            raise RegionError(f"max_corners must be an int >= 1, got {max_corners!r}")
        n = len(self)
        lo = self.lower.reshape(n, -1)
        hi = self.upper.reshape(n, -1)
        varying = lo < hi
        d = int(varying.sum(dim=1).max().item()) if lo.shape[1] else 0
        if d < 63 and (1 << d) <= max_corners:
            k = 1 << d
            # rank[i, j] = position of entry j among box i's varying entries
            rank = torch.cumsum(varying.long(), dim=1) - 1
            rank = torch.where(varying, rank, torch.zeros_like(rank))
            patterns = torch.arange(k, device=lo.device).unsqueeze(1)
            table = ((patterns >> torch.arange(max(d, 1), device=lo.device).unsqueeze(0)) & 1).bool()  # [k, d]
            pick_hi = table[:, rank] & varying.unsqueeze(0)  # [k, n, D]
        else:
            k = int(max_corners)
            pick_hi = self._rand((k, n, lo.shape[1]), generator) < 0.5
            pick_hi = pick_hi & varying.unsqueeze(0)
        out = torch.where(pick_hi, hi.unsqueeze(0), lo.unsqueeze(0))
        return out.reshape(k, *self.lower.shape)

    # -- reporting ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-able summary: n, input_shape, eps, description, dtype, and for small regions the bounds."""
        eps: Any = self.eps
        if isinstance(eps, torch.Tensor):
            if eps.numel() <= _SMALL_NUMEL:
                eps = eps.detach().cpu().double().tolist()
            else:
                eps = {"min": float(eps.min()), "max": float(eps.max()), "per_feature": True}
        out: dict[str, Any] = {
            "n": len(self),
            "input_shape": list(self.input_shape),
            "eps": eps,
            "description": self.description,
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        if self.lower.numel() <= _SMALL_NUMEL:
            out["lower"] = self.lower.detach().cpu().double().tolist()
            out["upper"] = self.upper.detach().cpu().double().tolist()
            if self.centers is not None:
                out["centers"] = self.centers.detach().cpu().double().tolist()
        return out


# --------------------------------------------------------------------------------------------
# constructors
# --------------------------------------------------------------------------------------------


def _batched(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() == 0:
        raise RegionError(f"{what} must have at least 1 dimension, got a scalar")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.shape[0] == 0:
        raise RegionError(f"{what} hold no inputs (batch size 0)")
    return t


def _domain_bounds(domain: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of ``domain`` broadcast to ``like``'s shape, dtype and device."""
    if not isinstance(domain, (tuple, list)) or len(domain) != 2:
        raise RegionError(f"domain must be a (lo, hi) pair, got {type(domain).__name__}")
    out = []
    for name, v in zip(("lo", "hi"), domain):
        t = _as_float_tensor(v, f"domain {name}").to(device=like.device, dtype=like.dtype)
        if torch.isnan(t).any():
            raise RegionError(f"domain {name} contains NaN")
        try:
            t = torch.broadcast_to(t, like.shape)
        except RuntimeError:
            raise RegionError(
                f"domain {name} of shape {tuple(t.shape)} does not broadcast to input shape {tuple(like.shape[1:])}"
            ) from None
        out.append(t)
    lo, hi = out
    bad = lo > hi
    if bad.any():
        raise RegionError(f"domain lo > hi at {_count(bad.reshape(bad.shape[0], -1).any(dim=0))} input entries")
    return lo, hi


def _intersect(lower: torch.Tensor, upper: torch.Tensor, domain: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = _domain_bounds(domain, lower)
    lower = torch.maximum(lower, lo)
    upper = torch.minimum(upper, hi)
    empty = lower > upper
    if empty.any():
        i = _first_box_index(empty)
        raise RegionError(
            f"{what} {i} does not intersect the domain (empty at {_count(empty[i])} entries; "
            f"{_count(empty.reshape(empty.shape[0], -1).any(dim=1))} empty boxes)"
        )
    return lower, upper


def ball(
    centers: Any,
    eps: float | torch.Tensor,
    *,
    domain: tuple[Any, Any] | None = None,
    description: str | None = None,
) -> Region:
    """L-inf balls of radius ``eps`` around ``centers`` ``[N, *input_shape]`` (1-D: one point).

    eps: a float >= 0, or a tensor broadcastable to the input shape (per-feature radius).
    domain: optional (lo, hi), floats or tensors broadcastable to one input (e.g. ``(0.0, 1.0)``);
    each ball is intersected with it. A center may lie outside the domain; a ball that misses the
    domain entirely is an error.
    """
    c = _batched(_as_float_tensor(centers, "centers"), "centers")
    _check_finite(c, "centers")
    input_shape = tuple(c.shape[1:])

    if isinstance(eps, bool):
        raise RegionError("eps must be a number, got bool")
    if isinstance(eps, (torch.Tensor, np.ndarray)) and np.size(eps) != 1:
        e = _as_float_tensor(eps, "eps").to(device=c.device, dtype=c.dtype)
        if torch.isnan(e).any():
            raise RegionError("eps is NaN")
        if torch.isinf(e).any():
            raise RegionError("eps must be finite, got inf")
        if (e < 0).any():
            raise RegionError(f"eps must be >= 0, got {float(e.min()):g}")
        try:
            e = torch.broadcast_to(e, input_shape).clone()
        except RuntimeError:
            raise RegionError(
                f"eps of shape {tuple(e.shape)} does not broadcast to input shape {input_shape}"
            ) from None
        eps_value: float | torch.Tensor = e
        eps_text = f"per-feature eps [{float(e.min()):g}, {float(e.max()):g}]"
    else:
        try:
            ev = float(eps.reshape(()).item()) if isinstance(eps, (torch.Tensor, np.ndarray)) else float(eps)
        except (TypeError, ValueError):
            raise RegionError(f"eps must be a number, got {type(eps).__name__}") from None
        if math.isnan(ev):
            raise RegionError("eps is NaN")
        if ev < 0:
            raise RegionError(f"eps must be >= 0, got {ev:g}")
        if math.isinf(ev):
            raise RegionError("eps must be finite, got inf")
        e = torch.tensor(ev, dtype=c.dtype, device=c.device)
        eps_value = ev
        eps_text = f"eps={ev:g}"

    lower = c - e
    upper = c + e
    if torch.isinf(lower).any() or torch.isinf(upper).any():
        raise RegionError(f"centers +- eps overflow {c.dtype}")
    if domain is not None:
        lower, upper = _intersect(lower, upper, domain, "ball around center")
    if description is None:
        description = f"L-inf ball {eps_text} around {c.shape[0]} point{'s' if c.shape[0] != 1 else ''}"
        if domain is not None:
            description += f", domain {_domain_text(domain)}"
    return Region(lower=lower, upper=upper, centers=c, eps=eps_value, description=description)


def _domain_text(domain: Any) -> str:
    parts = []
    for v in domain:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(_fmt(float(v)))
        else:
            parts.append("tensor")
    return "[" + ", ".join(parts) + "]"


def box(
    lower: Any,
    upper: Any,
    *,
    domain: tuple[Any, Any] | None = None,
    description: str | None = None,
) -> Region:
    """Explicit boxes ``[N, *input_shape]`` (1-D tensors: one box), optionally intersected with ``domain``."""
    lo = _as_float_tensor(lower, "lower")
    hi = _as_float_tensor(upper, "upper")
    if lo.dtype != hi.dtype:
        common = torch.promote_types(lo.dtype, hi.dtype)
        lo, hi = lo.to(common), hi.to(common)
    if hi.device != lo.device:
        hi = hi.to(lo.device)
    lo = _batched(lo, "lower")
    hi = _batched(hi, "upper")
    if lo.shape != hi.shape:
        raise RegionError(f"lower shape {tuple(lo.shape)} != upper shape {tuple(hi.shape)}")
    _check_finite(lo, "lower bounds")
    _check_finite(hi, "upper bounds")
    bad = lo > hi
    if bad.any():
        raise RegionError(f"lower > upper at {_count(bad)} entries (first in box {_first_box_index(bad)})")
    if domain is not None:
        lo, hi = _intersect(lo, hi, domain, "box")
    if description is None:
        description = f"{lo.shape[0]} explicit box{'es' if lo.shape[0] != 1 else ''}"
        if domain is not None:
            description += f", domain {_domain_text(domain)}"
    return Region(lower=lo, upper=hi, description=description)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

_POINT_KEYS = ("x", "data", "inputs", "points")
_LABEL_KEYS = ("y", "labels")


def _read_array(path: Any, keys: Sequence[str], what: str) -> tuple[Any, Path]:
    p = Path(path)
    if not p.exists():
        raise RegionError(f"{what} file not found: {p}")
    if not p.is_file():
        raise RegionError(f"{what} path is not a file: {p}")
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
            raise RegionError(f"cannot read {what} file {p}: {_one_line(exc)}") from None
    elif suffix == ".npy":
        try:
            obj = np.load(p, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise RegionError(f"cannot read {what} file {p}: {_one_line(exc)}") from None
    elif suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001
            raise RegionError(f"cannot read {what} file {p}: {_one_line(exc)}") from None
    else:
        raise RegionError(f"unknown {what} file suffix {p.suffix!r} in {p.name} (expected .pt, .pth, .npy or .npz)")

    if isinstance(obj, dict):
        for k in keys:
            if k in obj:
                obj = obj[k]
                break
        else:
            found = ", ".join(repr(str(k)) for k in list(obj)[:10]) or "none"
            wanted = "/".join(repr(k) for k in keys)
            raise RegionError(f"{what} file {p.name} has no {wanted} key (keys: {found})")
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(o, torch.Tensor) for o in obj):
        try:
            obj = torch.stack(list(obj))
        except RuntimeError as exc:
            raise RegionError(f"{what} in {p.name} are tensors of different shapes: {_one_line(exc)}") from None
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "iuf":
            raise RegionError(f"{what} in {p.name} are not numeric (dtype {obj.dtype})")
        # native byte order, C order; keeps 0-d arrays 0-d (np.ascontiguousarray would not)
        obj = torch.from_numpy(np.array(obj, dtype=obj.dtype.newbyteorder("="), order="C", copy=True))
    elif isinstance(obj, torch.Tensor):
        if obj.dtype == torch.bool or obj.is_complex():
            raise RegionError(f"{what} in {p.name} are not numeric (dtype {obj.dtype})")
    else:
        raise RegionError(f"{what} in {p.name} are not numeric (got {type(obj).__name__})")
    return obj, p


def load_points(path: str | Path) -> torch.Tensor:
    """Seed points from ``.pt``/``.pth`` (a tensor, or a dict with key x/data/inputs/points; loaded with
    ``weights_only=True``), ``.npy`` or ``.npz`` (no pickles).

    Returns a floating tensor with the batch dimension first: floating data keep their dtype, integer
    data (e.g. uint8 pixels, not rescaled) become the default float dtype; a 1-D array is one point.
    """
    t, p = _read_array(path, _POINT_KEYS, "points")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.dim() == 0:
        raise RegionError(f"points file {p.name} holds a scalar, expected [N, *input_shape]")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.shape[0] == 0:
        raise RegionError(f"points file {p.name} holds no points")
    if torch.isnan(t).any():
        raise RegionError(f"points in {p.name} contain NaN")
    if torch.isinf(t).any():
        raise RegionError(f"points in {p.name} contain inf")
    return t


def load_labels(path: str | Path) -> torch.Tensor:
    """Integer class labels ``[N]`` (int64) from ``.pt``/``.pth`` (a tensor or the y/labels key of a dict),
    ``.npy`` or ``.npz``. Floats are accepted when integral; ``[N, 1]`` is flattened."""
    t, p = _read_array(path, _LABEL_KEYS, "labels")
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise RegionError(f"labels in {p.name} contain NaN or inf")
        if (t != torch.round(t)).any():
            raise RegionError(f"labels in {p.name} are not integers (dtype {t.dtype})")
    if t.dim() == 0:
        t = t.reshape(1)
    elif t.dim() == 2 and t.shape[1] == 1:
        t = t.reshape(-1)
    elif t.dim() != 1:
        raise RegionError(f"labels in {p.name} must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise RegionError(f"labels file {p.name} holds no labels")
    t = t.to(torch.int64)
    if (t < 0).any():
        raise RegionError(f"labels in {p.name} contain negative values")
    return t


# --------------------------------------------------------------------------------------------
# VNN-LIB
# --------------------------------------------------------------------------------------------

_XVAR = re.compile(r"^X_(\d+)$")
_YVAR = re.compile(r"^Y_(\d+)$")
_COMPARISONS = ("<=", ">=", "<", ">", "=")


class _Sym(str):
    """A symbol token (as opposed to a parenthesised list)."""


def _tokenize(text: str, name: str) -> list[tuple[str, int]]:
    """Tokens ``(``, ``)`` and atoms with their line numbers; ``;`` starts a comment, ``|..|`` quotes a symbol."""
    tokens: list[tuple[str, int]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == ";":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif ch in "()":
            tokens.append((ch, line))
            i += 1
        elif ch == "|":
            j = text.find("|", i + 1)
            if j < 0:
                raise RegionError(f"{name}:{line}: parse error: unclosed '|' quoted symbol")
            tokens.append((text[i + 1 : j], line))
            line += text.count("\n", i, j)
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "();|":
                j += 1
            tokens.append((text[i:j], line))
            i = j
    return tokens


def _parse_sexprs(text: str, name: str) -> list[tuple[Any, int]]:
    """Top-level s-expressions with their line numbers. Lists are Python lists, atoms ``_Sym``."""
    tokens = _tokenize(text, name)
    out: list[tuple[Any, int]] = []
    stack: list[tuple[list, int]] = []
    for tok, line in tokens:
        if tok == "(":
            stack.append(([], line))
        elif tok == ")":
            if not stack:
                raise RegionError(f"{name}:{line}: parse error: unexpected ')'")
            done, start = stack.pop()
            if stack:
                stack[-1][0].append(done)
            else:
                out.append((done, start))
        else:
            if not stack:
                raise RegionError(f"{name}:{line}: parse error: atom {tok!r} outside parentheses")
            stack[-1][0].append(_Sym(tok))
    if stack:
        raise RegionError(f"{name}:{stack[-1][1]}: parse error: unclosed '(' (missing {len(stack)} ')')")
    return out


def _show(expr: Any, limit: int = 80) -> str:
    if isinstance(expr, list):
        s = "(" + " ".join(_show(e, limit) for e in expr) + ")"
    else:
        s = str(expr)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _symbols(expr: Any) -> set[str]:
    if isinstance(expr, list):
        out: set[str] = set()
        for e in expr:
            out |= _symbols(e)
        return out
    return {str(expr)}


def _mentions_y(expr: Any) -> bool:
    return any(_YVAR.match(s) for s in _symbols(expr))


def _mentions_x(expr: Any) -> bool:
    return any(_XVAR.match(s) for s in _symbols(expr))


def _constant(expr: Any) -> float | None:
    """Value of a numeric constant expression (number, (- c), (+ c), (/ a b)), or None."""
    if isinstance(expr, list):
        if not expr or isinstance(expr[0], list):
            return None
        op = str(expr[0])
        args = [_constant(e) for e in expr[1:]]
        if any(a is None for a in args) or not args:
            return None
        if op == "-":
            return -args[0] if len(args) == 1 else args[0] - sum(args[1:])
        if op == "+":
            return sum(args)
        if op == "*":
            return math.prod(args)
        if op == "/" and len(args) == 2:
            if args[1] == 0:
                return None
            return args[0] / args[1]
        return None
    s = str(expr)
    try:
        v = float(s)
    except ValueError:
        return None
    if s.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return None
    return v


class _VnnlibParser:
    def __init__(self, name: str) -> None:
        self.name = name
        self.x_decl: dict[int, int] = {}  # index -> line
        self.y_decl: set[int] = set()
        self.other_decl: set[str] = set()

    def err(self, line: int, msg: str) -> RegionError:
        return RegionError(f"{self.name}:{line}: {msg}")

    def declare(self, expr: list, line: int) -> None:
        if len(expr) < 3 or isinstance(expr[1], list):
            raise self.err(line, f"malformed declaration {_show(expr)}")
        var = str(expr[1])
        m = _XVAR.match(var)
        if m:
            i = int(m.group(1))
            if i in self.x_decl:
                raise self.err(line, f"{var} declared twice")
            self.x_decl[i] = line
        elif _YVAR.match(var):
            self.y_decl.add(int(_YVAR.match(var).group(1)))
        else:
            self.other_decl.add(var)

    def x_index(self, sym: Any, line: int) -> int | None:
        if isinstance(sym, list):
            return None
        m = _XVAR.match(str(sym))
        if not m:
            return None
        i = int(m.group(1))
        if i not in self.x_decl:
            raise self.err(line, f"X_{i} is used but not declared")
        return i

    def bound(self, expr: Any, line: int) -> list[tuple[int, str, float]]:
        """One comparison over an X variable and a constant -> [(index, 'lo'|'hi', value)]."""
        if not isinstance(expr, list) or len(expr) != 3 or isinstance(expr[0], list) or str(expr[0]) not in _COMPARISONS:
            raise self.err(line, f"unsupported input constraint {_show(expr)}")
        op, a, b = str(expr[0]), expr[1], expr[2]
        ia, ib = self.x_index(a, line), self.x_index(b, line)
        if ia is not None and ib is None:
            var, c, flip = ia, _constant(b), False
        elif ib is not None and ia is None:
            var, c, flip = ib, _constant(a), True
        else:
            raise self.err(line, f"unsupported input constraint {_show(expr)} (need one X variable and a constant)")
        if c is None:
            raise self.err(line, f"unsupported input constraint {_show(expr)} (bound is not a numeric constant)")
        if not math.isfinite(c):
            raise self.err(line, f"bound in {_show(expr)} is not finite")
        if op == "=":
            return [(var, "lo", c), (var, "hi", c)]
        upper = op in ("<=", "<")
        if flip:
            upper = not upper
        return [(var, "hi" if upper else "lo", c)]

    def conjunction(self, expr: Any, line: int) -> list[tuple[int, str, float]]:
        """Bounds of a comparison or an (and ...) of them; comparisons over Y are dropped."""
        if isinstance(expr, list) and expr and not isinstance(expr[0], list) and str(expr[0]) == "and":
            out: list[tuple[int, str, float]] = []
            for sub in expr[1:]:
                out += self.conjunction(sub, line)
            return out
        if _mentions_y(expr):
            if _mentions_x(expr):
                raise self.err(line, f"unsupported constraint mixing X and Y variables {_show(expr)}")
            return []
        self.check_symbols(expr, line)
        return self.bound(expr, line)

    def check_symbols(self, expr: Any, line: int) -> None:
        for s in _symbols(expr):
            if s in _COMPARISONS or s in ("and", "or", "not", "-", "+", "*", "/"):
                continue
            if _XVAR.match(s) or _YVAR.match(s) or _constant(_Sym(s)) is not None:
                continue
            raise self.err(line, f"unknown symbol {s!r} in constraint")


def from_vnnlib(
    path: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
) -> Region:
    """The input boxes of a VNN-LIB property file.

    Reads ``(declare-const X_i Real)``, bounds ``(assert (<= X_i c))`` / ``(>= X_i c)`` (also reversed,
    ``<``/``>``/``=``, ``(and ...)``), and one top-level ``(assert (or (and ...) ...))`` over X, which
    gives one box per disjunct. Constraints over Y (the output property) are ignored. Bounds on the
    same variable are intersected. ``input_shape`` reshapes each box; ``dtype`` defaults to torch's
    default float dtype.
    """
    p = Path(path)
    if not p.exists():
        raise RegionError(f"vnnlib file not found: {p}")
    if not p.is_file():
        raise RegionError(f"vnnlib path is not a file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegionError(f"cannot read vnnlib file {p}: {_one_line(exc)}") from None
    name = p.name
    exprs = _parse_sexprs(text, name)
    P = _VnnlibParser(name)

    asserts: list[tuple[Any, int]] = []
    for expr, line in exprs:
        if not expr or isinstance(expr[0], list):
            raise P.err(line, f"parse error: expected a command, got {_show(expr)}")
        head = str(expr[0])
        if head in ("declare-const", "declare-fun"):
            P.declare(expr, line)
        elif head == "assert":
            if len(expr) != 2:
                raise P.err(line, f"parse error: assert takes one expression, got {len(expr) - 1}")
            asserts.append((expr[1], line))
        # other commands (set-logic, check-sat, set-info, ...) carry no input bounds

    if not P.x_decl:
        raise RegionError(f"{name}: no input variables (X_i) declared")
    n = max(P.x_decl) + 1
    missing = [i for i in range(n) if i not in P.x_decl]
    if missing:
        shown = ", ".join(f"X_{i}" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise RegionError(f"{name}: X indices are not contiguous: missing {shown}")

    base: list[tuple[int, str, float]] = []
    disjunctions: list[tuple[list[list[tuple[int, str, float]]], int]] = []
    for expr, line in asserts:
        is_or = isinstance(expr, list) and expr and not isinstance(expr[0], list) and str(expr[0]) == "or"
        if is_or:
            if not _mentions_x(expr):
                continue  # output property
            cases = []
            for sub in expr[1:]:
                if isinstance(sub, list) and sub and str(sub[0]) in ("or", "not"):
                    raise P.err(line, f"unsupported nested {str(sub[0])!r} inside 'or' over input variables")
                cases.append(P.conjunction(sub, line))
            if not cases:
                raise P.err(line, "empty 'or'")
            disjunctions.append((cases, line))
            continue
        if not _mentions_x(expr):
            if _mentions_y(expr):
                continue  # output property
            P.check_symbols(expr, line)
            raise P.err(line, f"unsupported constraint {_show(expr)} (no X or Y variable)")
        if isinstance(expr, list) and expr and str(expr[0]) == "not":
            raise P.err(line, f"unsupported negated input constraint {_show(expr)}")
        base += P.conjunction(expr, line)

    if len(disjunctions) > 1:
        raise RegionError(
            f"{name}:{disjunctions[1][1]}: more than one 'or' over input variables is not supported"
        )
    cases = disjunctions[0][0] if disjunctions else [[]]

    lowers, uppers = [], []
    for k, case in enumerate(cases):
        lo = [-math.inf] * n
        hi = [math.inf] * n
        for i, kind, v in base + case:
            if kind == "lo":
                lo[i] = max(lo[i], v)
            else:
                hi[i] = min(hi[i], v)
        where = f" in disjunct {k}" if disjunctions else ""
        for i in range(n):
            if lo[i] == -math.inf:
                raise RegionError(f"{name}: X_{i} has no lower bound{where}")
            if hi[i] == math.inf:
                raise RegionError(f"{name}: X_{i} has no upper bound{where}")
            if lo[i] > hi[i]:
                raise RegionError(f"{name}: X_{i} has lower bound {lo[i]!r} > upper bound {hi[i]!r}{where}")
        lowers.append(lo)
        uppers.append(hi)

    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise RegionError(f"dtype must be a floating torch dtype, got {dtype}")
    lower = torch.tensor(lowers, dtype=torch.float64)
    upper = torch.tensor(uppers, dtype=torch.float64)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if math.prod(shape) != n:
            raise RegionError(f"input_shape {shape} has {math.prod(shape)} elements but {name} declares {n} inputs")
        lower = lower.reshape(len(cases), *shape)
        upper = upper.reshape(len(cases), *shape)
    lower = lower.to(dtype)
    upper = upper.to(dtype)
    _check_finite(lower, f"{name}: lower bounds (after conversion to {dtype})")
    _check_finite(upper, f"{name}: upper bounds (after conversion to {dtype})")
    desc = f"vnnlib {name}: {len(cases)} box{'es' if len(cases) != 1 else ''} over {n} inputs"
    return Region(lower=lower, upper=upper, description=desc)
