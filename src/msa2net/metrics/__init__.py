"""Segmentation metrics: pure functions of numpy arrays.

Overlap (:func:`dice`), surface distances (:func:`hd95`, :func:`surface_dice`), the legacy (paper) protocol
(:func:`legacy_case_metrics`, :func:`legacy_case_scores`) and the pooled pixel scores of the ISIC protocol
(:func:`binary_confusion`, :func:`pooled_binary_metrics`, :func:`isic_postprocess`). Nothing here writes files,
formats tables or accumulates state: aggregation over cases and every report live in :mod:`msa2net.reporting`.

Conventions shared by all functions:

* Masks are arrays of any dimension; anything non-zero counts as foreground. Label maps are
  integer arrays where class ``c`` is ``labels == c``.
* ``spacing`` is the physical size of a voxel along each array axis, in millimetres, in the array's
  axis order (for a Synapse test volume of shape (D, H, W) that is (slice spacing, row, column)).
  ``None`` means unit spacing, so distances are in voxels: this is what the legacy protocol uses.
* The surface of a mask is the mask minus its binary erosion by the connectivity-1 structuring
  element (6-neighbourhood in 3D, 4-neighbourhood in 2D), with everything outside the array counted
  as background, so a mask touching the array border has a surface there.
* NaN means "undefined for this case" (for instance a distance to an empty mask under the ``"nan"``
  policy); :class:`msa2net.reporting.aggregate.MetricAggregator` counts NaN values as failures instead of averaging
  them away silently.

The Dice and HD95 definitions reproduce the legacy evaluation of the MSA2Net / TransUNet code (which
calls MedPy) to within floating point; MedPy is only used as an oracle in the tests, never here.

Speed: surface distances cost far less than full distance transforms: each class is cropped to the joint
bounding box of its two masks, and inside it distances are bounded cheaply and computed exactly only for
the surface voxels that can decide the 95th percentile or the NSD count (see "Surface distances with
bounded work" below), so a noisy prediction (every class everywhere) costs a few seconds per class of a
CT volume instead of two full transforms per metric.
"""

from __future__ import annotations

from ._masks import EmptyPolicy, diagonal_mm
from .overlap import dice, hd95, label_agreement, legacy_case_metrics, legacy_case_scores, surface_dice
from .pooled import binary_confusion, isic_postprocess, pooled_binary_metrics

__all__ = [
    "EmptyPolicy",
    "binary_confusion",
    "diagonal_mm",
    "dice",
    "hd95",
    "isic_postprocess",
    "label_agreement",
    "legacy_case_metrics",
    "legacy_case_scores",
    "pooled_binary_metrics",
    "surface_dice",
]
