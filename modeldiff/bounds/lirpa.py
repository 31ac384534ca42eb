"""IBP, CROWN and alpha-CROWN on the composed graph, through auto_LiRPA (via :mod:`modeldiff._lirpa`).

The composed graph relaxes each ReLU of A and of B independently: sound for any pair of models, but loose for
nearly identical pairs (the errors of the two networks do not cancel; see :mod:`modeldiff.bounds.diff`).
"""

from __future__ import annotations

from torch import Tensor, nn

from modeldiff import _lirpa
from modeldiff.bounds.base import SpecBounder, SpecUnavailable
from modeldiff.errors import UnsupportedModelError
from modeldiff.graph import DeltaNet, PairNet, SoftmaxDeltaNet

#: The methods of this module.
METHODS: tuple[str, ...] = tuple(_lirpa.METHODS)

_NETS = {"delta": DeltaNet, "pair": PairNet, "softmax": SoftmaxDeltaNet}


class ComposedBounder(SpecBounder):
    """Bounds on the composed graph with one auto_LiRPA method (``ibp``, ``crown``, ``alpha-crown``).

    Build once per model pair. The traced graphs are made lazily and kept, so a divergence needing only
    ``A - B`` never traces the others.

    Raises:
        IncompatibleModelsError: the models' outputs differ in shape or they reject ``input_shape``.
    """

    def __init__(self, model_a: nn.Module, model_b: nn.Module, input_shape: tuple[int, ...], method: str = "crown",
                 alpha_iterations: int = 20):
        self.method = method
        self.alpha_iterations = alpha_iterations
        self._nets = {"delta": DeltaNet(model_a, model_b, input_shape)}
        self._pair = (model_a, model_b, input_shape)
        self._traced: dict[str, object] = {}
        self.n_outputs = int(self._nets["delta"].output_shape[0])

    def _bm(self, kind: str, example: Tensor):
        if kind not in self._traced:
            net = self._nets.get(kind) or _NETS[kind](*self._pair)
            self._traced[kind] = _lirpa.bounded_module(net, example, device=example.device)
        return self._traced[kind]

    def spec_bounds(self, kind, lower, upper, spec=None):
        try:
            bm = self._bm(kind, (lower + upper) / 2)
            return _lirpa.compute_bounds(bm, lower, upper, self.method, C=spec,
                                         alpha_iterations=self.alpha_iterations)
        except UnsupportedModelError as exc:
            if kind == "softmax":
                raise SpecUnavailable(str(exc)) from exc
            raise
