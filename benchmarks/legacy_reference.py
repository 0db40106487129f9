"""The authors' evaluation procedure, written out independently: the yardstick of the benchmarks and of some tests.

The MSA2Net / TransUNet ``test_single_volume`` segments a volume one axial slice at a time (scipy zoom order 3 to
the model's size, ``(x - 0.5) / 0.5``, softmax, argmax, zoom order 0 back) and scores each foreground class with
MedPy: ``dc`` and ``hd95`` when both masks are non-empty, (1, 0) for a prediction where the ground truth is empty,
(0, 0) otherwise. Nothing here uses msa2net's inference or metrics: it is the reference they are compared with.

MedPy (GPL) is a development dependency, imported only when :func:`legacy_metric_percase` runs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import zoom


def legacy_single_volume_labels(model: torch.nn.Module, volume: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Labels of a (D, H, W) volume in [0, 1], one slice at a time, exactly as the authors' test loop.

    Args:
        model: A segmentation network in eval mode, on the CPU, taking (1, 1, size, size) input.
        volume: (D, H, W) float intensities in [0, 1] (the TransUNet release's test volumes).
        size: The model's input size (an int or (height, width)).

    Returns:
        (D, H, W) int64 labels.
    """
    height, width = (size, size) if isinstance(size, int) else size
    out = np.zeros(volume.shape, dtype=np.int64)
    for z in range(volume.shape[0]):
        image = volume[z]
        x, y = image.shape
        if (x, y) != (height, width):
            image = zoom(image, (height / x, width / y), order=3)
        inputs = torch.from_numpy((image - 0.5) / 0.5).float()[None, None]
        with torch.no_grad():
            pred = torch.argmax(torch.softmax(model(inputs), dim=1), dim=1).squeeze(0).numpy()
        out[z] = zoom(pred, (x / height, y / width), order=0) if (x, y) != (height, width) else pred
    return out


def legacy_metric_percase(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The authors' ``calculate_metric_percase``: (Dice, HD95 in voxels) with MedPy and the legacy empty rules."""
    from medpy.metric import binary

    pred = pred > 0
    gt = gt > 0
    if pred.sum() > 0 and gt.sum() > 0:
        return float(binary.dc(pred, gt)), float(binary.hd95(pred, gt))
    if pred.sum() > 0:
        return 1.0, 0.0
    return 0.0, 0.0


def legacy_case_metrics_medpy(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> list[tuple[float, float]]:
    """(Dice, HD95) per foreground class 1..num_classes-1, as the authors' ``test_single_volume`` returns them."""
    return [legacy_metric_percase(prediction == c, label == c) for c in range(1, num_classes)]
