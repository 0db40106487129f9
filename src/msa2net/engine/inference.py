"""Slice-wise inference on volumes: the legacy Synapse procedure, batched."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .._progress import progress_enabled
from ..data.preprocessing import SYNAPSE_PREPROCESSING, Preprocessing
from ..data.transforms import resize_image, resize_label
from ..models import MSA2Net


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_slices(
    model: MSA2Net,
    slices: np.ndarray,
    *,
    tta: bool = False,
    amp: str | None = None,
) -> np.ndarray:
    """Class probabilities of a batch of model-ready slices.

    Args:
        slices: (N, C, H, W) float32 in model space, H x W the model's size.
        tta: average the softmax over the identity and horizontal/vertical flips.
        amp: None or ``"bf16"``/``"fp16"`` autocast on the model's device.

    Returns:
        (N, num_classes, H, W) float32 probabilities.
    """
    device = _device_of(model)
    x = torch.from_numpy(np.ascontiguousarray(slices)).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "", None)
    flips: list[tuple[int, ...]] = [()] + ([(3,), (2,)] if tta else [])
    probs = None
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            p = torch.softmax(model(xi).float(), dim=1)
            p = torch.flip(p, dims) if dims else p
            probs = p if probs is None else probs + p
    return (probs / len(flips)).cpu().numpy()


def predict_volume(
    model: MSA2Net,
    volume: np.ndarray,
    *,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    tta: bool = False,
    amp: str | None = None,
    progress: bool = False,
    desc: str = "slices",
) -> np.ndarray:
    """Segment a volume slice by slice, the legacy Synapse way, in batches.

    Each axial slice ``volume[z]`` is mapped to [0, 1] by ``preprocessing.to_unit`` (for the whole volume at
    once, so per-case statistics are per case), resized to the model's size with a cubic spline (order 3),
    normalised, segmented (softmax, argmax), and the label map is resized back with nearest neighbour
    (order 0). Batching changes nothing but speed: each slice is processed independently.

    Args:
        model: an :class:`MSA2Net` (eval mode is set), on any device.
        volume: (D, H, W) or channels-last (D, H, W, C) raw intensities as ``preprocessing`` expects; the
            default preprocessing takes the TransUNet release's [0, 1] data.
        preprocessing: intensity mapping; default :data:`SYNAPSE_PREPROCESSING`.
        batch_size: slices per forward pass.
        tta: flip test-time augmentation.
        amp: ``None``, ``"bf16"`` or ``"fp16"``.
        progress: show a progress bar.

    Returns:
        (D, H, W) uint8 label map (int16 when more than 256 classes).
    """
    model.eval()
    prep = preprocessing or SYNAPSE_PREPROCESSING
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"predict_volume expects (D, H, W) or (D, H, W, C), got shape {volume.shape}")
    unit = prep.to_unit(volume)
    depth, h, w = unit.shape[:3]
    size = model.img_size
    out = np.zeros((depth, h, w), dtype=np.uint8 if model.num_classes <= 256 else np.int16)
    bar = tqdm(total=depth, desc=desc, unit="slice", disable=not progress_enabled(progress), leave=False)
    for sl in _batches(depth, max(1, batch_size)):
        batch = np.stack([prep.normalize(resize_image(unit[z], size, order=3)) for z in range(sl.start, sl.stop)])
        batch = batch[:, None] if batch.ndim == 3 else batch.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
        labels = predict_slices(model, batch, tta=tta, amp=amp).argmax(axis=1)
        for i, z in enumerate(range(sl.start, sl.stop)):
            out[z] = resize_label(labels[i].astype(out.dtype), (h, w))
        bar.update(sl.stop - sl.start)
    bar.close()
    return out


def predict_image(
    model: MSA2Net,
    image: np.ndarray,
    *,
    preprocessing: Preprocessing,
    tta: bool = False,
    amp: str | None = None,
) -> np.ndarray:
    """Segment one 2D image ((H, W) or (H, W, C) raw values) -> (H, W) labels in the image's size.

    The preprocessing sees the 2D image itself, so its channel rules apply (grey repeated for an RGB model,
    alpha dropped, a colour image refused by a grey model) before the image becomes a one-slice volume.
    """
    unit = preprocessing.to_unit(np.asarray(image))
    return predict_volume(model, unit[None], preprocessing=preprocessing.unit_input(), tta=tta, amp=amp)[0]
