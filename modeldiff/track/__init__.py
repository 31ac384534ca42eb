"""Track many models at once: drift along a chain of versions, stability across a retrained ensemble.

Both verbs run, for every pair of models they compare, the disagreement search (:func:`modeldiff.search`: a
*found* divergence, reachable, a lower bound of each region's worst case) and the bound
(:func:`modeldiff.bound`: a *certified* divergence, a sound upper bound over each whole region), plus the clean
top-1 disagreement rate at the regions' seed points.

* :func:`drift` follows versions ``m0, m1, ..., m_{K-1}`` (e.g. self-training rounds, nightly retrains): for each
  version ``k >= 1`` how far it is from the first version ``m0`` and from its predecessor ``m_{k-1}``.
* :func:`stability` compares every pair of ``K`` models meant to be interchangeable (seeds, bootstrap
  resamples): the ``K x K`` matrices, their spread, the medoid model, and the regions where they differ most.

Medians over regions are ``torch.median`` (the lower of the two middle values for an even count).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from modeldiff import regions
    >>> from modeldiff.track import drift, stability
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> versions = [nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(3)]
    >>> region = regions.ball(torch.rand(5, 4), eps=0.05)
    >>> res = drift(versions, region, restarts=1, steps=5)
    >>> res.certified_vs_first.shape   # [K - 1, N]
    torch.Size([2, 5])
    >>> bool((res.found_vs_first <= res.certified_vs_first).all())
    True
    >>> stability(versions, region, restarts=1, steps=5).certified.shape   # [K, K, N]
    torch.Size([3, 3, 5])
"""

from modeldiff.track.compute import ASYMMETRIC, drift, stability
from modeldiff.track.results import DriftResult, StabilityResult

__all__ = ["ASYMMETRIC", "DriftResult", "StabilityResult", "drift", "stability"]
