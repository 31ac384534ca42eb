"""Which input features drive a disagreement: integrated gradients (captum) of a difference head.

The head is a scalar function of the input that measures how far apart A and B are,
``h(x) = D(A(x), B(x))`` for a continuous divergence ``D`` (see :func:`head_divergence`: the chosen divergence,
``tv`` of the softmax outputs for ``top1``, ``linf`` for ``delta``). Integrated gradients from the seed point
(baseline) to the witness (input) split ``h(witness) - h(seed)`` over the input entries; captum's convergence
delta says how well the split adds up.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from modeldiff.divergences import get_divergence
from modeldiff.report.records import Attribution

__all__ = ["DifferenceHead", "head_divergence", "integrated_gradients"]

logger = logging.getLogger(__name__)

_HEAD_TEXT = {
    "linf": "linf: max_i |A_i(x) - B_i(x)|",
    "l1": "l1: sum_i |A_i(x) - B_i(x)|",
    "l2": "l2: ||A(x) - B(x)||_2",
    "kl": "kl: KL(softmax A(x) || softmax B(x))",
    "tv": "tv: total variation of softmax A(x) and softmax B(x)",
}


def head_divergence(divergence: str) -> str:
    """The continuous divergence used as the difference head (and to rank witnesses) for ``divergence``:
    itself, except ``tv`` for ``top1`` (piecewise constant) and ``linf`` for ``delta`` (vector-valued).

    Example:
        >>> head_divergence("top1"), head_divergence("kl")
        ('tv', 'kl')
    """
    return {"top1": "tv", "delta": "linf"}.get(divergence, divergence)


class DifferenceHead(nn.Module):
    """``x -> D(A(x), B(x))``, shape ``[N]``, for a scalar continuous divergence ``D``.

    Example:
        >>> a, b = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
        >>> DifferenceHead(a, b, "linf")(torch.zeros(4, 3, dtype=torch.float64)).shape
        torch.Size([4])
    """

    def __init__(self, model_a: nn.Module, model_b: nn.Module, divergence: str = "linf") -> None:
        super().__init__()
        self.a, self.b = model_a, model_b
        self.divergence = get_divergence(head_divergence(divergence))
        self.text = _HEAD_TEXT[self.divergence.name]

    def forward(self, x: Tensor) -> Tensor:
        return self.divergence(self.a(x), self.b(x))


def integrated_gradients(head: DifferenceHead, seeds: Tensor, witnesses: Tensor, n_steps: int = 32
                         ) -> list[Attribution]:
    """Integrated gradients of ``head`` from each seed (baseline) to its witness.

    Args:
        head: the difference head (models already in eval mode, in the dtype of the inputs).
        seeds: ``[G, *input_shape]`` baselines (the regions' seed points).
        witnesses: ``[G, *input_shape]`` inputs (the witnesses of the search).
        n_steps: integration steps (captum's Gauss-Legendre rule).

    Returns:
        One :class:`~modeldiff.report.records.Attribution` per row, ``values`` ``[*input_shape]``.

    Example:
        >>> a, b = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
        >>> z = torch.zeros(1, 3, dtype=torch.float64)
        >>> att = integrated_gradients(DifferenceHead(a, b, "l2"), z, z + 0.1, n_steps=8)
        >>> att[0].values.shape
        torch.Size([3])
    """
    from captum.attr import IntegratedGradients

    if seeds.shape[0] == 0:
        return []
    ig = IntegratedGradients(head)
    attributions, delta = ig.attribute(witnesses, baselines=seeds, n_steps=n_steps, return_convergence_delta=True)
    with torch.no_grad():
        h_seed, h_wit = head(seeds), head(witnesses)
    logger.debug("integrated gradients over %d witnesses, max |delta| %.3g", seeds.shape[0],
                 float(delta.abs().max()))
    return [Attribution(head=head.text, values=attributions[i].detach().cpu(), convergence_delta=float(delta[i]),
                        head_at_seed=float(h_seed[i]), head_at_witness=float(h_wit[i]), n_steps=n_steps)
            for i in range(seeds.shape[0])]
