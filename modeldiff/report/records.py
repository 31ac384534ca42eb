"""The typed result of :func:`modeldiff.report.review`: frozen dataclasses with ``to_dict()`` (strict-JSON-able).

:class:`Review` holds the raw results (:class:`~modeldiff.results.BoundResult`,
:class:`~modeldiff.results.SearchResult`) and every derived number the review page shows; ``Review.to_dict()``
is what ``report.json`` holds, and the page is rendered from that dictionary only, so the JSON carries every
number the page shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modeldiff.results import BoundResult, SearchResult, tensor_to_list

__all__ = ["Attribution", "ClassRow", "Cluster", "GalleryItem", "Histogram", "Review", "SearchDiagnostics",
           "Summary"]


def _num(v: float | None) -> Any:
    """A float for strict JSON (nan/inf as strings, like :func:`tensor_to_list`)."""
    if v is None:
        return None
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


@dataclass(frozen=True)
class Summary:
    """Distribution of one value over the regions (finite values only; ``n_infinite`` counts the others)."""

    median: float
    mean: float
    min: float
    max: float
    n_infinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"median": _num(self.median), "mean": _num(self.mean), "min": _num(self.min), "max": _num(self.max),
                "n_infinite": self.n_infinite}


@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts of found and certified values in shared bins ``edges`` ``[B + 1]`` (``found``, ``certified``:
    ``[B]``); ``log_bins`` when the edges are spaced logarithmically. Zero and non-finite values are not binned:
    ``n_zero_*`` and ``n_infinite_certified`` count them."""

    edges: Tensor
    found: Tensor
    certified: Tensor
    log_bins: bool
    n_zero_found: int
    n_zero_certified: int
    n_infinite_certified: int

    def to_dict(self) -> dict[str, Any]:
        return {"edges": tensor_to_list(self.edges), "found": tensor_to_list(self.found),
                "certified": tensor_to_list(self.certified), "log_bins": self.log_bins,
                "n_zero_found": self.n_zero_found, "n_zero_certified": self.n_zero_certified,
                "n_infinite_certified": self.n_infinite_certified}


@dataclass(frozen=True)
class ClassRow:
    """Rates over the regions of one class (by true label, or by A's label at the seed point)."""

    label: int
    n: int
    clean_disagreement_rate: float
    search_disagreement_rate: float
    certified_agreement_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "n": self.n, "clean_disagreement_rate": self.clean_disagreement_rate,
                "search_disagreement_rate": self.search_disagreement_rate,
                "certified_agreement_rate": self.certified_agreement_rate}


@dataclass(frozen=True, eq=False)
class Attribution:
    """Integrated gradients (captum) of a difference head from the seed point (baseline) to the witness.

    Attributes:
        head: the scalar function of the input attributed, e.g. ``"tv(softmax A(x), softmax B(x))"``.
        values: ``[*input_shape]`` attribution per input entry; they sum to about ``head_at_witness -
            head_at_seed``.
        convergence_delta: captum's convergence delta (sum of attributions minus that difference).
        head_at_seed, head_at_witness: the head's value at the baseline and at the input.
        n_steps: integration steps.
    """

    head: str
    values: Tensor
    convergence_delta: float
    head_at_seed: float
    head_at_witness: float
    n_steps: int

    def to_dict(self) -> dict[str, Any]:
        flat = self.values.reshape(-1).abs()
        top = flat.argsort(descending=True)[: min(5, flat.numel())]
        return {"head": self.head, "convergence_delta": _num(self.convergence_delta),
                "head_at_seed": _num(self.head_at_seed), "head_at_witness": _num(self.head_at_witness),
                "sum": _num(float(self.values.sum())), "n_steps": self.n_steps,
                "top_features": [int(i) for i in top], "values": tensor_to_list(self.values)}


@dataclass(frozen=True, eq=False)
class GalleryItem:
    """One of the top disagreements: a region's seed point, its witness and both models' views of it.

    Attributes:
        index: the region's index.
        source: ``"label flip"`` (a witness of the top1 search, where the labels differ) or ``"largest D"`` (a
            witness of the divergence search, shown when fewer label flips than gallery slots were found; ``D`` is
            the ranking divergence).
        center, witness: ``[*input_shape]``; ``perturbation_scale`` is ``max |witness - center|``.
        value: the ranking value at the witness (the divergence; ``tv`` for ``top1``, ``linf`` for ``delta``).
        certified: the certified upper bound of the divergence over the region.
        prob_a, prob_b: ``[K]`` softmax of A's and B's outputs at the witness.
        attribution: integrated gradients from the center to the witness.
    """

    index: int
    source: str
    center: Tensor
    witness: Tensor
    true_label: int | None
    label_a_seed: int
    label_b_seed: int
    label_a_witness: int
    label_b_witness: int
    prob_a: Tensor
    prob_b: Tensor
    value: float
    certified: float
    perturbation_scale: float
    attribution: Attribution | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "source": self.source, "true_label": self.true_label,
            "label_a_seed": self.label_a_seed, "label_b_seed": self.label_b_seed,
            "label_a_witness": self.label_a_witness, "label_b_witness": self.label_b_witness,
            "value": _num(self.value), "certified": _num(self.certified),
            "perturbation_scale": _num(self.perturbation_scale),
            "center": tensor_to_list(self.center), "witness": tensor_to_list(self.witness),
            "prob_a": tensor_to_list(self.prob_a), "prob_b": tensor_to_list(self.prob_b),
            "attribution": None if self.attribution is None else self.attribution.to_dict(),
        }


@dataclass(frozen=True, eq=False)
class Cluster:
    """A group of label-flip witnesses (k-means on their perturbations ``witness - center``).

    Attributes:
        members: ``[M]`` region indices, nearest to the centroid first.
        flip: the most common ``(A label, B label)`` pair at the members' witnesses; ``flip_count`` members
            have it.
        representative: the region whose perturbation is nearest to the centroid; ``representative_center``,
            ``representative_witness`` ``[*input_shape]`` its seed point and witness.
        centroid: ``[*input_shape]`` the mean perturbation.
        mean_abs_perturbation: mean of ``|witness - center|`` over the members and input entries.
    """

    id: int
    members: Tensor
    flip: tuple[int, int]
    flip_count: int
    representative: int
    representative_center: Tensor
    representative_witness: Tensor
    centroid: Tensor
    mean_abs_perturbation: float

    @property
    def size(self) -> int:
        return int(self.members.numel())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "flip": list(self.flip), "flip_count": self.flip_count,
                "representative": self.representative, "mean_abs_perturbation": _num(self.mean_abs_perturbation),
                "members": tensor_to_list(self.members), "centroid": tensor_to_list(self.centroid),
                "representative_center": tensor_to_list(self.representative_center),
                "representative_witness": tensor_to_list(self.representative_witness)}


@dataclass(frozen=True, eq=False)
class SearchDiagnostics:
    """Whether a search saturated.

    Attributes:
        search: which search (``"top1"`` or the divergence's name).
        steps: ``[T]`` logged step numbers.
        mean_best: ``[T]`` mean over regions of the best value so far (for ``top1``: the fraction of regions
            with a label flip found so far).
        restart_mean: ``[R, T]`` the same per restart (each restart's own best so far), or None.
        restart_wins: ``[R]`` for how many regions each restart reached the final best (ties go to the lower
            restart), or None.
        late_improvement_rate: fraction of regions whose best value still rose in the second half of the steps.
    """

    search: str
    steps: Tensor
    mean_best: Tensor
    restart_mean: Tensor | None
    restart_wins: Tensor | None
    late_improvement_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {"search": self.search, "steps": tensor_to_list(self.steps),
                "mean_best": tensor_to_list(self.mean_best), "restart_mean": tensor_to_list(self.restart_mean),
                "restart_wins": tensor_to_list(self.restart_wins),
                "late_improvement_rate": _num(self.late_improvement_rate)}


@dataclass(frozen=True, eq=False)
class Review:
    """Everything a disagreement review found about models A and B over a batch of N regions.

    Attributes:
        provenance: the reproducibility header (model hashes, versions, settings, date).
        region: ``Region.to_dict()`` of the regions reviewed.
        divergence: the chosen divergence; ``method``: the bound method used (``auto`` resolved).
        n_classes: K, the models' number of outputs.
        image_layout: ``(H, W, C)`` when inputs are drawn as images, else None (see :mod:`._layout`).
        labels: ``[N]`` true labels, or None.
        clean_a, clean_b: ``[N]`` A's and B's labels at the seed points.
        witness_a, witness_b: ``[N]`` their labels at the top1 search's witnesses.
        clean_disagreement_rate: fraction of seed points where the labels differ.
        search_disagreement_rate: fraction of regions where the top1 search found a point with different labels.
        certified_agreement_rate: fraction of regions where label agreement is proven (top1 bound is 0).
        top1_search, top1_bound: the label-flip search and the label-agreement certificate.
        search_result, bound_result: search and certified bound of the chosen divergence (the same objects as
            the top1 ones when the divergence is ``top1``).
        found_summary, certified_summary, histogram: distribution of found and certified values.
        gap_ratio_median: median of certified / found over regions with found > 0 (None if there are none).
        n_found_exceeds_certified: regions where found > certified (a soundness failure; expected 0).
        flip_clean, flip_witness: ``[K, K]`` counts of (A label, B label) at the seed points and the witnesses.
        per_class_by: ``"true label"`` or ``"A's label at the seed"``; ``per_class``: one row per class present.
        gallery, clusters, cluster_features, diagnostics: see :class:`GalleryItem`, :class:`Cluster`,
            :class:`SearchDiagnostics`.
        settings: the review's arguments; ``time_s``: wall time per stage.
    """

    provenance: dict
    region: dict
    divergence: str
    method: str
    n_classes: int
    image_layout: tuple[int, int, int] | None
    labels: Tensor | None
    clean_a: Tensor
    clean_b: Tensor
    witness_a: Tensor
    witness_b: Tensor
    clean_disagreement_rate: float
    search_disagreement_rate: float
    certified_agreement_rate: float
    top1_search: SearchResult
    top1_bound: BoundResult
    search_result: SearchResult
    bound_result: BoundResult
    found_summary: Summary
    certified_summary: Summary
    histogram: Histogram
    gap_ratio_median: float | None
    n_found_exceeds_certified: int
    flip_clean: Tensor
    flip_witness: Tensor
    per_class_by: str
    per_class: tuple[ClassRow, ...]
    gallery: tuple[GalleryItem, ...]
    clusters: tuple[Cluster, ...]
    cluster_features: str
    diagnostics: tuple[SearchDiagnostics, ...]
    settings: dict = field(default_factory=dict)
    time_s: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.clean_a.shape[0])

    @property
    def flips_found(self) -> Tensor:
        """``[N]`` bool: regions where the top1 search found different labels."""
        return self.top1_search.found > 0.5

    @property
    def attribution_mean_abs(self) -> Tensor | None:
        """``[*input_shape]`` mean over the gallery of each input entry's share of the total |attribution|
        (which input entries drive the disagreements shown), or None without a gallery."""
        shares = [g.attribution.values.abs() / g.attribution.values.abs().sum().clamp_min(1e-300)
                  for g in self.gallery if g.attribution is not None]
        return torch.stack(shares).mean(0) if shares else None

    @property
    def agreement_certified(self) -> Tensor:
        """``[N]`` bool: regions where label agreement is proven."""
        return self.top1_bound.upper == 0

    def regions_table(self) -> list[dict[str, Any]]:
        """One record per region: labels, flip found, agreement certified, found and certified divergence."""
        flips, cert = self.flips_found, self.agreement_certified
        found, upper = self.search_result.found, self.bound_result.upper
        return [{
            "index": i, "true_label": None if self.labels is None else int(self.labels[i]),
            "label_a": int(self.clean_a[i]), "label_b": int(self.clean_b[i]),
            "label_a_witness": int(self.witness_a[i]), "label_b_witness": int(self.witness_b[i]),
            "flip_found": bool(flips[i]), "agreement_certified": bool(cert[i]),
            "found": _num(float(found[i])), "certified": _num(float(upper[i])),
        } for i in range(len(self))]

    def to_dict(self) -> dict[str, Any]:
        """The whole review as strict-JSON-able data (what ``report.json`` holds)."""
        n = len(self)
        flips, cert = int(self.flips_found.sum()), int(self.agreement_certified.sum())
        clean = int((self.clean_a != self.clean_b).sum())
        return {
            "provenance": self.provenance,
            "region": self.region,
            "n": n,
            "n_classes": self.n_classes,
            "divergence": self.divergence,
            "method": self.method,
            "image_layout": None if self.image_layout is None else list(self.image_layout),
            "headline": {
                "clean_disagreement_rate": self.clean_disagreement_rate, "clean_disagreements": clean,
                "search_disagreement_rate": self.search_disagreement_rate, "search_disagreements": flips,
                "certified_agreement_rate": self.certified_agreement_rate, "certified_agreements": cert,
                "undecided": n - flips - cert,
                "found": self.found_summary.to_dict(), "certified": self.certified_summary.to_dict(),
                "gap_ratio_median": _num(self.gap_ratio_median),
                "found_exceeds_certified": self.n_found_exceeds_certified,
            },
            "histogram": self.histogram.to_dict(),
            "flip_matrix": {"clean": tensor_to_list(self.flip_clean), "witness": tensor_to_list(self.flip_witness)},
            "per_class_by": self.per_class_by,
            "per_class": [r.to_dict() for r in self.per_class],
            "gallery": [g.to_dict() for g in self.gallery],
            "attribution_mean_abs": tensor_to_list(self.attribution_mean_abs),
            "cluster_features": self.cluster_features,
            "clusters": [c.to_dict() for c in self.clusters],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "top1_search": self.top1_search.to_dict(),
            "top1_bound": {k: v for k, v in self.top1_bound.to_dict().items() if k != "regions"},
            "search": self.search_result.to_dict(),
            "bound": {k: v for k, v in self.bound_result.to_dict().items() if k != "regions"},
            "regions": self.regions_table(),
            "settings": self.settings,
            "time_s": self.time_s,
        }
