"""Result types: frozen dataclasses with ``to_dict()`` (JSON-able: tensors become lists of floats)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["BoundResult", "SearchResult", "tensor_to_list"]


def tensor_to_list(t: Tensor | None) -> Any:
    """A tensor as nested lists of Python numbers (inf and nan as strings, so that the JSON stays strict)."""
    if t is None:
        return None

    def fix(v: Any) -> Any:
        if isinstance(v, list):
            return [fix(u) for u in v]
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return v

    return fix(t.detach().cpu().tolist())


@dataclass(frozen=True, eq=False)
class BoundResult:
    """Certified bounds of a divergence over each region of a batch.

    Attributes:
        divergence: the divergence's name.
        method: the bound method used (``ibp``, ``crown``, ``alpha-crown``, ...).
        upper: ``[N]`` sound upper bound of the divergence over each region. For ``top1`` it is 0.0 where
            A and B provably agree on the label over the whole region and 1.0 otherwise. For ``delta`` it bounds
            ``max |A(x)_i - B(x)_i|`` over the selected outputs.
        delta_lower, delta_upper: ``[N, K]`` sound bounds of ``A(x) - B(x)`` per output where they were computed
            (always for ``delta``, ``linf``, ``l1``, ``l2``, ``kl`` and ``tv``; None for ``top1``).
        output_index: ``[N]`` the output index each region's ``delta`` bound is about, or None for all outputs.
        agree_label: ``[N]`` for ``top1``, the label on which agreement was attempted (A's label at the region's
            midpoint); None otherwise.
        time_s: wall time of the bound computation in seconds.
        dtype: the floating type the bounds were computed in.
    """

    divergence: str
    method: str
    upper: Tensor
    delta_lower: Tensor | None = None
    delta_upper: Tensor | None = None
    output_index: Tensor | None = None
    agree_label: Tensor | None = None
    time_s: float = 0.0
    dtype: str = "float64"
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.upper.shape[0])

    @property
    def certified_agreement(self) -> Tensor:
        """``[N]`` bool: regions where top-1 agreement is proven (only meaningful for ``top1``)."""
        return self.upper == 0

    def region_dict(self, i: int) -> dict[str, Any]:
        """The JSON-able record of region ``i``."""
        out: dict[str, Any] = {"index": i, "certified": tensor_to_list(self.upper[i])}
        if self.output_index is not None:
            t = int(self.output_index[i])
            out["output_index"] = t
            if self.delta_lower is not None:
                out["delta_interval"] = [
                    tensor_to_list(self.delta_lower[i, t]),
                    tensor_to_list(self.delta_upper[i, t]),
                ]
        elif self.divergence == "delta" and self.delta_lower is not None:
            out["delta_lower"] = tensor_to_list(self.delta_lower[i])
            out["delta_upper"] = tensor_to_list(self.delta_upper[i])
        if self.agree_label is not None:
            out["agree_label"] = int(self.agree_label[i])
            out["agreement_certified"] = bool(self.upper[i] == 0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "divergence": self.divergence,
            "method": self.method,
            "dtype": self.dtype,
            "time_s": self.time_s,
            "settings": dict(self.settings),
            "regions": [self.region_dict(i) for i in range(len(self))],
        }


@dataclass(frozen=True, eq=False)
class SearchResult:
    """What the disagreement search found in each region.

    Attributes:
        divergence: the divergence's name.
        found: ``[N]`` the best divergence value found per region, recomputed on the witness by a plain
            forward pass of A and B (a sound lower bound of the region's maximum).
        witnesses: ``[N, *input_shape]`` the inputs that reach ``found``; each lies in its region.
        history: ``[T, N]`` best-so-far value per region after each logged step (for plotting).
        history_steps: ``[T]`` the step numbers of ``history``'s rows.
        optimizer: the optimiser used (``apgd``, ``random``, ...).
        restarts, steps: the budget used.
        time_s: wall time in seconds.
        output_index: ``[N]`` the output index for ``delta``, or None.
        interrupted: True if the run stopped early (time budget or Ctrl-C); ``found`` is still valid.
        settings: the search's other settings (global mode, fallback to a gradient-free optimiser, ...).
        restart_history: ``[T, R, N]`` best-so-far value per restart and region at ``history_steps`` (NaN where
            a restart did not run), or None.
    """

    divergence: str
    found: Tensor
    witnesses: Tensor
    history: Tensor
    history_steps: Tensor
    optimizer: str = "apgd"
    restarts: int = 0
    steps: int = 0
    time_s: float = 0.0
    seed: int | None = None
    output_index: Tensor | None = None
    interrupted: bool = False
    settings: dict = field(default_factory=dict)
    restart_history: Tensor | None = None

    def __len__(self) -> int:
        return int(self.found.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "divergence": self.divergence,
            "optimizer": self.optimizer,
            "restarts": self.restarts,
            "steps": self.steps,
            "seed": self.seed,
            "time_s": self.time_s,
            "interrupted": self.interrupted,
            "settings": dict(self.settings),
            "found": tensor_to_list(self.found),
            "output_index": tensor_to_list(self.output_index),
        }
