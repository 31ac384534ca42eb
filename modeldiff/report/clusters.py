"""Groups of disagreements: k-means (scikit-learn) on the perturbations ``witness - seed`` of label-flip witnesses.

Perturbations rather than the inputs themselves: two witnesses of the same kind of flip (e.g. a stroke added at
the same place) cluster together even when their seed digits differ. The cluster count is capped by the number
of distinct perturbations, so fewer witnesses than clusters is fine (and no witness gives no cluster).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch
from torch import Tensor

from modeldiff.report.records import Cluster

__all__ = ["FEATURES", "cluster_witnesses"]

logger = logging.getLogger(__name__)

#: what the clusters are computed on (shown in the report)
FEATURES = "perturbations witness - seed point of the label-flip witnesses (k-means, Euclidean)"


def cluster_witnesses(centers: Tensor, witnesses: Tensor, indices: Tensor, label_a: Tensor, label_b: Tensor, k: int,
                      seed: int = 0) -> tuple[Cluster, ...]:
    """Cluster witnesses by their perturbation ``witness - center`` with k-means; largest cluster first.

    Args:
        centers, witnesses: ``[M, *input_shape]`` the seed point and the witness of each region.
        indices: ``[M]`` the region index of each witness.
        label_a, label_b: ``[M]`` A's and B's labels at the witnesses.
        k: the most clusters wanted (fewer when there are fewer distinct perturbations).
        seed: k-means' random state.

    Example:
        >>> p = torch.tensor([[0.0, 1.0], [0.0, 0.9], [1.0, 0.0]])
        >>> la, lb = torch.tensor([1, 1, 2]), torch.tensor([7, 7, 3])
        >>> cs = cluster_witnesses(torch.zeros(3, 2), p, torch.arange(3), la, lb, k=2)
        >>> [(c.size, c.flip) for c in cs]
        [(2, (1, 7)), (1, (2, 3))]
    """
    perturbations = witnesses - centers
    m = int(perturbations.shape[0])
    if m == 0 or k < 1:
        return ()
    x = perturbations.reshape(m, -1).double().cpu().numpy()
    k_eff = min(k, m, len(np.unique(x, axis=0)))
    if k_eff == 1:
        assign = np.zeros(m, dtype=np.int64)
        means = x.mean(axis=0, keepdims=True)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k_eff, n_init=10, random_state=seed).fit(x)
        assign, means = km.labels_, km.cluster_centers_
    la, lb = label_a.cpu().tolist(), label_b.cpu().tolist()
    clusters = []
    for c in range(k_eff):
        rows = np.flatnonzero(assign == c)
        if rows.size == 0:
            continue
        dist = np.linalg.norm(x[rows] - means[c], axis=1)
        rows = rows[np.argsort(dist, kind="stable")]
        (flip, count), = Counter((la[r], lb[r]) for r in rows).most_common(1)
        clusters.append((rows, flip, count, means[c]))
    clusters.sort(key=lambda t: (-t[0].size, int(indices[t[0][0]])))
    shape = tuple(perturbations.shape[1:])
    out = tuple(
        Cluster(id=i, members=indices[torch.as_tensor(rows)].cpu().long(), flip=(int(flip[0]), int(flip[1])),
                flip_count=int(count), representative=int(indices[int(rows[0])]),
                representative_center=centers[int(rows[0])].cpu(),
                representative_witness=witnesses[int(rows[0])].cpu(),
                centroid=torch.as_tensor(mean).reshape(shape),
                mean_abs_perturbation=float(np.abs(x[rows]).mean()))
        for i, (rows, flip, count, mean) in enumerate(clusters)
    )
    logger.debug("clustered %d witnesses into %d clusters", m, len(out))
    return out
