"""Slice-wise inference on volumes: the legacy Synapse procedure, batched; agreement of mixed precision with float32."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._progress import progress_enabled
from ..data.preprocessing import SYNAPSE_PREPROCESSING, Preprocessing
from ..data.transforms import resize_image, resize_label
from ..metrics import label_agreement
from ..models import MSA2Net


class RuntimeModel(torch.nn.Module):
    """A converted graph behind the eager model's interface: ``forward((N, C, H, W) float32) -> logits``, on the
    CPU."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], model: MSA2Net, name: str) -> None:
        super().__init__()
        self.config, self.img_size, self.num_classes = model.config, model.img_size, model.num_classes
        self.run, self.name = run, name
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # where the inputs go: the CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.run(x.detach().cpu().float().numpy())))


def model_input(unit: np.ndarray, prep: Preprocessing, size: tuple[int, int]) -> np.ndarray:
    """One unit-range slice ``(H, W[, C])`` as the model takes it: ``(C, h, w)`` float32, C-contiguous, resized
    (cubic) and normalised as :func:`predict_volume` does."""
    x = prep.normalize(resize_image(unit, size, order=3))
    return np.ascontiguousarray(x[None] if x.ndim == 2 else x.transpose(2, 0, 1), dtype=np.float32)  # no copy for grey


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers())).device  # a RuntimeModel holds buffers only


def _autocast_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of ``amp``: None (or ``"none"``: float32), ``"bf16"`` or ``"fp16"``."""
    if amp not in (None, "none", "bf16", "fp16"):
        raise ValueError(f"amp must be None, 'none', 'bf16' or 'fp16', got {amp!r}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")


def _probabilities(model: MSA2Net, x: torch.Tensor, tta: bool, amp: str | None) -> torch.Tensor:
    """Softmax of the model (float32), averaged over flips with ``tta``; ``x`` already on the model's device."""
    dtype = _autocast_dtype(amp)
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        probs = torch.softmax(model(x).float(), dim=1)
        for dims in ((3,), (2,)) if tta else ():
            probs = probs + torch.flip(torch.softmax(model(torch.flip(x, dims)).float(), dim=1), dims)
    return probs / 3 if tta else probs  # the mean over the image and its two flips


@torch.inference_mode()
def _predict_labels(
    model: MSA2Net, slices: np.ndarray, chunk: int, tta: bool, amp: str | None, keep: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """argmax of the class probabilities of model-ready slices (N, C, H, W) (first maximum on ties, as
    ``torch.argmax`` and ``np.argmax``), computed on the device in forward passes of at most ``chunk`` slices:
    (N, H, W) int64, and with ``keep`` the probabilities (N, C, H, W) float32."""
    device = _device_of(model)
    x = torch.from_numpy(np.ascontiguousarray(slices))
    probs = [_probabilities(model, part.to(device), tta, amp) for part in x.split(chunk)]
    labels = torch.cat([p.argmax(dim=1).cpu() for p in probs]).numpy()
    return labels, torch.cat([p.cpu() for p in probs]).numpy() if keep else None


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
    probabilities: bool = False,
) -> Any:
    """Segment a volume slice by slice, the legacy Synapse way.

    Each axial slice ``volume[z]`` is mapped to [0, 1] by ``preprocessing.to_unit`` (for the whole volume at
    once, so per-case statistics are per case), resized to the model's size with a cubic spline (order 3),
    normalised, segmented (softmax, argmax), and the label map is resized back with nearest neighbour
    (order 0). Each slice is processed independently.

    On a CPU each forward pass takes one slice, so the labels are bit for bit those of the one-slice-at-a-time
    procedure on the same machine: a batched pass would change the arithmetic (oneDNN picks other kernels for other
    batch sizes; labels then differed at 12 of 5.2 million voxels for an untrained model) and gained nothing
    measurable. On a GPU a forward pass takes ``batch_size`` slices (faster; the labels may then differ from one
    slice at a time at voxels where two classes tie to within float rounding).

    Args:
        model: an :class:`MSA2Net` (eval mode is set), on any device.
        volume: (D, H, W) or channels-last (D, H, W, C) raw intensities as ``preprocessing`` expects; the
            default preprocessing takes the TransUNet release's [0, 1] data.
        preprocessing: intensity mapping; default :data:`SYNAPSE_PREPROCESSING`.
        batch_size: slices resized and segmented per step (and per forward pass on a GPU).
        tta: flip test-time augmentation.
        amp: ``None``, ``"bf16"`` or ``"fp16"``.
        progress: show a progress bar.
        desc: progress bar label.
        probabilities: also return the class probabilities in the volume's grid.

    Returns:
        (D, H, W) uint8 label map (int16 when more than 256 classes); with ``probabilities`` the pair ``(labels,
        (C, D, H, W) float16 probabilities)``, resized back with the labels' nearest-neighbour mapping so that their
        argmax is the labels (where float16 rounding makes the label's class tie with another, the label's class is
        raised by one float16 step).
    """
    model.eval()
    _autocast_dtype(amp)
    prep = preprocessing or SYNAPSE_PREPROCESSING
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4):
        raise ValueError(f"predict_volume expects (D, H, W) or (D, H, W, C), got shape {volume.shape}")
    unit = prep.to_unit(volume)
    depth, h, w = unit.shape[:3]
    size = model.img_size
    step = max(1, int(batch_size))
    chunk = 1 if _device_of(model).type == "cpu" else step
    out = np.zeros((depth, h, w), dtype=np.uint8 if model.num_classes <= 256 else np.int16)
    probs = np.zeros((model.num_classes, depth, h, w), dtype=np.float16) if probabilities else None
    bar = tqdm(total=depth, desc=desc, unit="slice", disable=not progress_enabled(progress), leave=False)
    for start in range(0, depth, step):
        zs = range(start, min(depth, start + step))
        batch = np.stack([model_input(unit[z], prep, size) for z in zs])  # (N, C, H, W)
        labels, p = _predict_labels(model, batch, chunk, tta, amp, keep=probs is not None)
        for i, z in enumerate(zs):
            out[z] = resize_label(labels[i].astype(out.dtype), (h, w))
            if probs is not None and p is not None:
                probs[:, z] = [resize_label(channel, (h, w)) for channel in p[i]]
        bar.update(len(zs))
    bar.close()
    if probs is None:
        return out
    return out, _argmax_safe(probs, out)


def _argmax_safe(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``probs`` (float16) with the labels' class raised by one float16 step where rounding made it lose the argmax
    (a tie, first maximum wins) to another class."""
    lost = np.argmax(probs, axis=0) != labels
    if lost.any():
        index = (labels[lost].astype(np.intp), *np.nonzero(lost))
        probs[index] = np.nextafter(probs[index], np.float16(np.inf))
    return probs


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


def amp_agreement(
    model: MSA2Net,
    volume: np.ndarray,
    *,
    amp: str = "bf16",
    label: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    tta: bool = False,
) -> tuple[np.ndarray, dict[str, object]]:
    """Segment ``volume`` under ``amp`` autocast and in float32, and say how far apart the two label maps are.

    Both runs are :func:`predict_volume` with the same settings but ``amp``. Use it to decide whether mixed
    precision is good enough for a model and data before relying on it (see the README's CPU and GPU notes).

    Args:
        model: The model, on the device to check (CPU bf16, CUDA bf16 or fp16).
        volume: As :func:`predict_volume`.
        amp: ``"bf16"`` or ``"fp16"``.
        label: Optional ground truth of the volume's shape: adds the legacy Dice change per class.
        class_names: Names of the foreground classes (default ``class_1``, ...).
        preprocessing, batch_size, tta: As :func:`predict_volume`.

    Returns:
        ``(labels under amp, agreement)``, the agreement as :func:`msa2net.metrics.label_agreement` with the
        float32 labels as the reference, plus ``"amp"``.
    """
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be 'bf16' or 'fp16' to compare with float32, got {amp!r}")
    kwargs: dict[str, Any] = {"preprocessing": preprocessing, "batch_size": batch_size, "tta": tta}
    mixed = predict_volume(model, volume, amp=amp, **kwargs)
    full = predict_volume(model, volume, amp=None, **kwargs)
    agreement = label_agreement(mixed, full, model.num_classes, gt_labels=label, class_names=class_names)
    return mixed, {"amp": amp, **agreement}


class AmpCheck:
    """Agreement of mixed-precision predictions with float32 ones, accumulated over the cases of an evaluation.

    :meth:`predict` segments a case under ``amp`` and in float32, records their agreement and returns the
    mixed-precision labels. :attr:`record` is updated in place after every case: ``{"amp", "reference": "fp32",
    "n_cases", "identical_fraction"`` (voxels pooled over the cases), ``"per_class_dice_change"`` (mean over cases
    of legacy Dice under amp minus legacy Dice in float32, against the ground truth), ``"mean_dice_change"`` (mean
    over classes), ``"per_class_agreement_dice"`` (mean over cases of the Dice between the two masks, cases where
    both are empty left out; ``None`` when none is left), ``"per_case": [{"case_id", "identical_fraction",
    "dice_change": {class: value}}]}``.
    """

    def __init__(
        self, class_names: Sequence[str], amp: str | None, reference: torch.nn.Module | None = None, name: str = ""
    ) -> None:
        if amp not in ("bf16", "fp16") and reference is None:
            raise ValueError(
                "comparing with float32 checks a mixed-precision evaluation: give amp='bf16' (or 'fp16' on CUDA), "
                f"got amp={amp!r}"
            )
        self.amp, self.reference = amp, reference  # reference: torch float32 when the checked model is a runtime
        self.class_names = [str(c) for c in class_names]
        self.record: dict[str, Any] = {"amp": amp, "reference": "fp32", "n_cases": 0}
        if reference is not None:
            self.record.update(backend=name, reference="torch-fp32")
        self._voxels = self._different = 0
        self._changes: dict[str, list[float]] = {c: [] for c in self.class_names[1:]}
        self._agreements: dict[str, list[float]] = {c: [] for c in self.class_names[1:]}

    def predict(self, model: MSA2Net, case_id: str, image: np.ndarray, label: np.ndarray, **kwargs: Any) -> np.ndarray:
        """:func:`predict_volume` of ``image`` under ``amp`` (returned) and in float32 (compared); with a
        ``reference``, ``model`` is the runtime checked and ``reference`` gives the float32 labels."""
        mixed = predict_volume(model, image, amp=self.amp, **kwargs)
        full = predict_volume(self.reference or model, image, amp=None, **kwargs)
        self.add(case_id, mixed, full, label)
        return mixed

    def add(self, case_id: str, mixed: np.ndarray, full: np.ndarray, label: np.ndarray) -> None:
        """Record one case: ``mixed`` (amp) and ``full`` (float32) labels against the ground truth ``label``."""
        agreement = label_agreement(
            mixed, full, len(self.class_names), gt_labels=label, class_names=self.class_names[1:]
        )
        per_class: dict[str, dict[str, float]] = agreement["per_class"]  # type: ignore[assignment]
        self._voxels += int(agreement["n_voxels"])  # type: ignore[call-overload]
        self._different += int(agreement["n_different"])  # type: ignore[call-overload]
        for name, row in per_class.items():
            self._changes[name].append(row["dice_change"])
            if not math.isnan(row["agreement_dice"]):
                self._agreements[name].append(row["agreement_dice"])
        changes = {name: float(np.mean(values)) for name, values in self._changes.items()}
        self.record.update(
            n_cases=self.record["n_cases"] + 1,
            identical_fraction=1.0 - self._different / self._voxels if self._voxels else 1.0,
            per_class_dice_change=changes,
            mean_dice_change=float(np.mean(list(changes.values()))) if changes else 0.0,
            per_class_agreement_dice={
                name: float(np.mean(values)) if values else None for name, values in self._agreements.items()
            },
        )
        self.record.setdefault("per_case", []).append(
            {
                "case_id": case_id,
                "identical_fraction": agreement["identical_fraction"],
                "dice_change": {name: row["dice_change"] for name, row in per_class.items()},
            }
        )
