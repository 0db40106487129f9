"""A MONAI bundle of a model: the folder that MONAI's bundle runner, MONAI Label's ``monaibundle`` app and, through
MONAI Label, 3D Slicer and OHIF read, segmenting NIfTI volumes with the labels ``msa2net predict`` gives.

:func:`write_monai_bundle` writes the layout of MONAI's bundle specification::

    DIR/configs/metadata.json   what the network takes and gives (MONAI's metadata schema, every mandatory key)
    DIR/configs/inference.json  load -> re-index to the training plane -> intensity mapping -> slice-wise inference
                                -> argmax -> back to the input's grid -> NIfTI writer
    DIR/models/model.ts         TorchScript: the network with msa2net's per-slice resizing around it
    DIR/docs/README.md          how to run it, then the model card
    DIR/LICENSE                 the weights' licence

and runs with MONAI alone (no msa2net): ``python -m monai.bundle run --config_file configs/inference.json
--bundle_root DIR --dataset_dir IN --output_dir OUT`` segments every ``IN/*.nii*`` into ``OUT/<name>_seg.nii.gz``.

How it reproduces ``msa2net predict`` (:func:`msa2net.engine.inference.predict_volume`):

* the slices are the same planes: MONAI's ``Orientationd`` re-indexes the volume to the checkpoint's
  ``slice_orientation`` (its axis codes name the direction each index axis points toward, like SimpleITK's
  ``DICOMOrientImageFilter`` codes msa2net uses, so the code is passed as it is), and the ``SliceInferer`` cuts
  along MONAI's last spatial axis, which is the first axis of SimpleITK's (Z, Y, X) arrays msa2net slices;
* the intensity mapping is the checkpoint's ``to_unit`` as a MONAI transform (``ct_window``:
  ``ScaleIntensityRanged`` with clipping; ``zscore``: ``ScaleIntensityRangePercentilesd`` per channel; ``unit``:
  none);
* MONAI's resizing transforms (``Resized``, ``Zoomd``) interpolate with ``torch.nn.functional.interpolate``, whose
  "bicubic" is Keys' cubic convolution, not the cubic B-spline of ``scipy.ndimage.zoom`` (order 3) that msa2net
  uses, and its nearest neighbour picks other source pixels than ``zoom`` order 0. So the bundle does not resize
  with MONAI transforms: ``models/model.ts`` (:class:`SliceResizeModel`) takes each whole slice at its own size and
  applies ``zoom``'s two resamplings itself, as exact linear maps computed in float64 (the mirror-boundary spline
  prefilter and the cubic B-spline weights at ``zoom``'s sample positions ``i * (n_in - 1) / (n_out - 1)``; a
  position past the last input sample by rounding gives 0, as ``zoom``'s ``mode="constant"`` does), then
  ``(x - mean) / std``, the network and softmax, and picks the model-size probabilities back at ``zoom`` order 0's
  source pixels. Its resized slices equal ``zoom``'s bit for bit on every size tested (1 to 699 pixels onto 64 to
  512); the labels then agree with ``msa2net predict`` up to float rounding in the matrix products.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_folder
from ..data.preprocessing import Preprocessing
from ..data.transforms import resize_label
from ..models import MSA2Net
from ..models.pretrained import PretrainedError, build_pretrained_config
from ..models.weights_io import error_line
from ..reporting.card import build_model_card
from .checkpoint import load_model_source, model_from_checkpoint
from .export import ExportError, _quiet_tracing
from .inference import model_input
from .postprocess import parse_keep_largest
from .publish import provenance_of

__all__ = [
    "METADATA_SCHEMA_FILE",
    "METADATA_SCHEMA_URL",
    "MonaiBundleError",
    "MonaiBundleResult",
    "SliceResizeModel",
    "write_monai_bundle",
]

#: The schema of MONAI's bundle metadata that ``metadata.json`` names (what the model zoo's bundles name).
METADATA_SCHEMA_URL: str = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
#: A copy of that schema shipped with msa2net (Apache-2.0, from MONAI; see monai_schema/README.md), so that
#: ``python -m monai.bundle verify_metadata --filepath METADATA_SCHEMA_FILE`` verifies offline: MONAI downloads the
#: schema only when ``--filepath`` does not exist yet.
METADATA_SCHEMA_FILE: Path = Path(__file__).with_name("monai_schema") / "meta_schema_20240725.json"
#: The bundle's own version (of its layout, as msa2net writes it).
BUNDLE_VERSION: str = "0.1.0"
#: Oldest MONAI the configs are written for (``SliceInferer``, ``Invertd``, ``Orientationd`` with labels).
MIN_MONAI_VERSION: str = "1.3.0"
#: Sizes of the parity check's slices (x, y): neither the model's size nor square, so both resamplings run.
_CHECK_SLICE: tuple[int, int] = (37, 53)


class MonaiBundleError(ValueError):
    """The model or the output folder cannot make a bundle; the message names the path and the fix."""


@dataclass
class MonaiBundleResult:
    """What :func:`write_monai_bundle` wrote.

    Attributes:
        folder: The bundle folder.
        files: Its files, relative to ``folder``.
        check: The parity check of ``models/model.ts`` against msa2net's per-slice procedure on a random slice:
            ``{"slice": [x, y], "max_abs_prob_diff", "labels_identical", "labels_total"}``.
    """

    folder: Path
    files: list[str]
    check: dict[str, Any]


# ------------------------------------------------------------------------------------------ the TorchScript model


def _mirror(index: torch.Tensor, n: int) -> torch.Tensor:
    """Indices reflected into ``0..n-1`` about the first and last sample (``-1 -> 1``, ``n -> n - 2``)."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * n - 2
    index = torch.remainder(torch.abs(index), period)
    return torch.where(index >= n, period - index, index)


def _positions(n_in: int, n_out: int) -> torch.Tensor:
    """``scipy.ndimage.zoom``'s sample positions (``grid_mode=False``): ``i * (n_in - 1) / (n_out - 1)``, float64."""
    step = float(n_in - 1) / float(n_out - 1) if n_out > 1 else 1.0
    return torch.arange(n_out, dtype=torch.float64) * step


def _spline_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The (n_out, n_in) float64 matrix of ``zoom`` order 3 along one axis (prefilter and interpolation)."""
    rows = torch.arange(n_in)
    prefilter = torch.zeros(n_in, n_in, dtype=torch.float64)
    for offset, weight in ((-1, 1.0 / 6.0), (0, 4.0 / 6.0), (1, 1.0 / 6.0)):
        prefilter.index_put_(
            (rows, _mirror(rows + offset, n_in)), torch.full((n_in,), weight, dtype=torch.float64), accumulate=True
        )
    position = _positions(n_in, n_out)
    floor = torch.floor(position)
    t = position - floor
    weights = [
        (1.0 - t) ** 3 / 6.0,
        (3.0 * t**3 - 6.0 * t**2 + 4.0) / 6.0,
        (-3.0 * t**3 + 3.0 * t**2 + 3.0 * t + 1.0) / 6.0,
        t**3 / 6.0,
    ]
    out_rows = torch.arange(n_out)
    interpolation = torch.zeros(n_out, n_in, dtype=torch.float64)
    start = floor.to(torch.int64) - 1
    for k in range(4):
        interpolation.index_put_((out_rows, _mirror(start + k, n_in)), weights[k], accumulate=True)
    interpolation[position > float(n_in - 1)] = 0.0  # past the last sample: zoom's mode="constant" gives cval 0
    return torch.matmul(interpolation, torch.linalg.inv(prefilter))


def _nearest(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``zoom`` order 0 along one axis: the source index of every output sample and whether it lies inside."""
    position = _positions(n_in, n_out)
    index = torch.clamp(torch.floor(position + 0.5).to(torch.int64), 0, n_in - 1)
    return index, position <= float(n_in - 1)


class SliceResizeModel(torch.nn.Module):
    """The bundle's network: whole slices at their own size in, class probabilities at that size out.

    Input: (B, C, X, Y) float32, intensities already mapped to [0, 1] (``to_unit``), in MONAI's index order (x
    before y). Each slice is transposed to msa2net's (rows = y, columns = x), resized to the model's size like
    ``scipy.ndimage.zoom`` order 3 (unless it has that size), normalised ``(x - mean) / std``, segmented, softmaxed,
    and the probabilities are taken back to the slice's size at ``zoom`` order 0's source pixels (where that order
    gives background, the probabilities are those of a certain background). Output: (B, K, X, Y) float32.
    """

    def __init__(self, network: torch.nn.Module, img_size: Sequence[int], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        self.height, self.width = int(img_size[0]), int(img_size[1])
        self.register_buffer("mean", torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).transpose(2, 3)  # (B, C, rows=y, cols=x), the layout msa2net's slices have
        h, w = int(x.shape[2]), int(x.shape[3])
        resize = h != self.height or w != self.width  # msa2net leaves a slice of the model's size as it is
        if resize:
            rows = _spline_matrix(h, self.height).to(x.device)
            cols = _spline_matrix(w, self.width).to(x.device)
            x = torch.matmul(torch.matmul(rows, x.to(torch.float64)), cols.t()).to(torch.float32)
        x = (x - self.mean) / self.std
        probs = torch.softmax(self.network(x).to(torch.float32), dim=1)
        if resize:
            row_index, row_inside = _nearest(self.height, h)
            col_index, col_inside = _nearest(self.width, w)
            probs = probs.index_select(2, row_index.to(x.device)).index_select(3, col_index.to(x.device))
            outside = ~(row_inside[:, None] & col_inside[None, :]).to(x.device)
            if bool(outside.any()):
                certain = torch.zeros_like(probs)
                certain[:, 0] = 1.0
                probs = torch.where(outside[None, None], certain, probs)
        return probs.transpose(2, 3).contiguous()


def _script_model(model: MSA2Net, mean: Sequence[float], std: Sequence[float]) -> torch.jit.ScriptModule:
    example = torch.zeros(1, model.config.in_channels, *model.img_size)
    with _quiet_tracing():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        return torch.jit.script(SliceResizeModel(traced, model.img_size, mean, std).eval())


def _legacy_slice(model: MSA2Net, prep: Preprocessing, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """msa2net's procedure on one (rows, cols[, C]) slice already in [0, 1]: probabilities (K, rows, cols) at the
    labels' source pixels and the labels, as :func:`~msa2net.engine.inference.predict_volume` computes them."""
    h, w = unit.shape[:2]
    x = model_input(unit, prep, model.img_size)[None]
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x))).float(), dim=1)[0].numpy()
    labels = resize_label(probs.argmax(axis=0).astype(np.uint8), (h, w))
    return np.stack([resize_label(p, (h, w)) for p in probs]), labels


def _check_scripted(path: Path, model: MSA2Net, prep: Preprocessing) -> dict[str, Any]:
    """Run ``model.ts`` and msa2net's per-slice procedure on a random [0, 1] slice; raise when they disagree."""
    x_size, y_size = _CHECK_SLICE
    rng = np.random.default_rng(0)
    unit = rng.random((y_size, x_size, prep.in_channels), dtype=np.float32)  # (rows, cols, C)
    unit = unit[..., 0] if prep.in_channels == 1 else unit
    legacy_probs, legacy_labels = _legacy_slice(model, prep, unit)
    with _quiet_tracing():
        scripted = torch.jit.load(str(path), map_location="cpu")
    monai_layout = unit[None, None] if unit.ndim == 2 else unit.transpose(2, 0, 1)[None]  # (1, C, rows, cols)
    with torch.inference_mode():
        probs = scripted(torch.from_numpy(np.ascontiguousarray(monai_layout.transpose(0, 1, 3, 2))))[0].numpy()
    probs = probs.transpose(0, 2, 1)  # back to (K, rows, cols)
    labels = probs.argmax(axis=0)
    # where zoom order 0 gives background (0) msa2net has no probabilities and the bundle a certain background
    inside = legacy_probs.sum(axis=0) > 0
    diff = float(np.abs(probs - legacy_probs)[:, inside].max(initial=0.0))
    if not diff <= 1e-5:
        raise ExportError(
            f"models/model.ts differs from msa2net's per-slice procedure: max |probability difference| {diff:.3g} > "
            f"1e-5 on a random {x_size} x {y_size} slice; the bundle would not reproduce msa2net predict"
        )
    return {
        "slice": [x_size, y_size],
        "max_abs_prob_diff": diff,
        "labels_identical": int((labels == legacy_labels).sum()),
        "labels_total": int(labels.size),
    }


# ------------------------------------------------------------------------------------------ configs


def _version(package: str, default: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return default


def _intensity_transforms(prep: Preprocessing) -> list[dict[str, Any]]:
    """The checkpoint's ``to_unit`` as MONAI dictionary transforms on ``image``."""
    if prep.kind == "ct_window":
        lo, hi = prep.window  # type: ignore[misc]
        head = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": lo, "a_max": hi}
    elif prep.kind == "zscore":
        lower, upper = prep.clip_percentiles
        head = {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": lower, "upper": upper}
    else:
        return []  # unit: the values are already in [0, 1]
    tail = {"channel_wise": True} if prep.kind == "zscore" else {}
    return [{**head, "b_min": 0.0, "b_max": 1.0, "clip": True, **tail}]


def _inference_config(prep: Preprocessing, orientation: str | None, keep: Sequence[int], num_classes: int) -> dict:
    """``configs/inference.json``: the model zoo's keys (``dataset_dir``, ``output_dir``, ``preprocessing``,
    ``inferer``, ``postprocessing``, ``network_def``, ``evaluator``, ``run``)."""
    preprocessing: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader", "dtype": "$numpy.float32"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if orientation:
        preprocessing.append({"_target_": "Orientationd", "keys": "image", "axcodes": orientation})
    preprocessing += _intensity_transforms(prep)
    postprocessing: list[dict[str, Any]] = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    if keep:
        postprocessing.append(
            {
                "_target_": "KeepLargestConnectedComponentd",
                "keys": "pred",
                "applied_labels": list(keep),
                "is_onehot": False,
                "independent": True,
                "connectivity": 1,
            }
        )
    postprocessing += [
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": True,
            "to_tensor": True,
        },
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_ext": ".nii.gz",
            "output_dtype": "$numpy.uint8" if num_classes <= 256 else "$numpy.int16",
            "resample": False,
            "separate_folder": False,
            "writer": "NibabelWriter",
            "print_log": False,
        },
    ]
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$os.path.join(@bundle_root, 'data')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii')) + "
        "glob.glob(os.path.join(@dataset_dir, '*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location='cpu')",
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @datalist]", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        # whole slices (roi -1: the slice's own size) along MONAI's last spatial axis, one per forward pass
        "inferer": {
            "_target_": "SliceInferer",
            "spatial_dim": 2,
            "roi_size": [-1, -1],
            "sw_batch_size": 1,
            "overlap": 0.0,
        },
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "amp": False,
        },
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', False)"],
        "run": ["$@evaluator.run()"],
    }


def _modality(prep: Preprocessing, channels: Sequence[str]) -> str:
    if prep.kind in ("ct_window", "unit"):
        return "CT"
    names = {str(c).strip().upper() for c in channels}
    if names and names <= {"CT"}:
        return "CT"
    if names and all(n.startswith(("T1", "T2", "FLAIR", "MR", "DWI", "ADC", "PD")) for n in names):
        return "MR"
    return "CT/MR"


def _metadata(config: Mapping[str, Any], prep: Preprocessing, orientation: str | None, model: MSA2Net) -> dict:
    """``configs/metadata.json`` (MONAI's metadata schema; every mandatory key)."""
    names = [str(c) for c in config["class_names"]]
    dataset = config.get("dataset") or {}
    channels = [str(c) for c in dataset.get("channel_names") or []] or ["image"] * prep.in_channels
    modality = _modality(prep, channels)
    h, w = model.img_size
    mapping = {
        "ct_window": f"clipped to [{prep.window[0]:g}, {prep.window[1]:g}] HU and scaled to [0, 1]"
        if prep.window
        else "",
        "zscore": f"clipped to the {prep.clip_percentiles[0]:g}th and {prep.clip_percentiles[1]:g}th percentiles of "
        "the volume and scaled to [0, 1]",
        "unit": "already in [0, 1]",
        "rgb": "",
    }[prep.kind]
    plane = (
        f"re-indexed to axis code {orientation} (the layout of the training volumes) and cut" if orientation else "cut"
    )
    model_name = str(config.get("model_name") or "msa2net")
    description = (
        f"MSA2Net ({model_name}), a 2D segmentation network (MaxViT encoder, multi-scale adaptive spatial attention "
        f"gates), applied to NIfTI volumes slice by slice as msa2net predict does: the volume is {plane} into "
        f"slices along its third index axis; intensities are {mapping}; each slice is resized to {h} x {w} with a "
        "cubic B-spline, normalised, segmented and its labels taken back to the slice's size by nearest neighbour. "
        f"Exported by msa2net {_version('msa2net', '?')}; models/model.ts holds the network and the resizing."
    )
    pred_classes = ", ".join(f"{i} {n}" for i, n in enumerate(names))
    evaluation = config.get("evaluation") or {}
    metrics = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    required = {"nibabel": _version("nibabel", "5.0")}
    keep = ((config.get("postprocessing") or {}).get("keep_largest")) or []
    if keep:
        required["scikit-image"] = _version("scikit-image", "0.19")
    return {
        "schema": METADATA_SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"written by msa2net {_version('msa2net', '?')} (export --monai-bundle)"},
        "monai_version": _version("monai", MIN_MONAI_VERSION),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": required,
        "name": f"{model_name} ({dataset.get('name') or 'msa2net'})",
        "task": f"Slice-by-slice segmentation of {modality} volumes into {len(names) - 1} structures: "
        + ", ".join(names[1:]),
        "description": description,
        "authors": "MSA2Net: Kolahi et al., BMVC 2024; weights and their provenance: see docs/README.md",
        "copyright": f"Copyright (c) the authors of the weights; licence {config.get('license') or 'mit'} (LICENSE)",
        "data_source": str(dataset.get("reference") or dataset.get("name") or "see docs/README.md"),
        "data_type": "nibabel",
        "image_classes": f"{prep.in_channels} channel(s): {', '.join(channels)}; intensities {mapping}",
        "label_classes": pred_classes,
        "pred_classes": pred_classes,
        "eval_metrics": metrics,
        "intended_use": "Research only; not for clinical use. "
        + str(dataset.get("domain") or "Volumes like those the model was trained on (see docs/README.md)."),
        "references": [
            "Kolahi et al., MSA2Net: Multi-scale Adaptive Attention-guided Network for Medical Image Segmentation, "
            "BMVC 2024"
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if modality == "CT" else "magnitude",
                    "modality": modality,
                    "num_channels": prep.in_channels,
                    "spatial_shape": ["*", "*"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): c for i, c in enumerate(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": model.num_classes,
                    "spatial_shape": ["*", "*"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): n for i, n in enumerate(names)},
                }
            },
        },
    }


# ------------------------------------------------------------------------------------------ docs


def _readme(metadata: Mapping[str, Any], card: str, check: Mapping[str, Any]) -> str:
    lines = [
        f"# MONAI bundle: {metadata['name']}",
        "",
        str(metadata["description"]),
        "",
        "## Run it",
        "",
        "MONAI (>= 1.3) with nibabel is all it needs; msa2net need not be installed:",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\",
        "    --dataset_dir IN --output_dir OUT",
        "```",
        "",
        "segments every `IN/*.nii` and `IN/*.nii.gz` into `OUT/<name>_seg.nii.gz` (uint8 class ids, the input's grid "
        "and geometry). MONAI Label's `monaibundle` app serves the bundle to 3D Slicer and OHIF.",
        "",
        "## Files",
        "",
        "- `configs/metadata.json`: inputs and outputs (`network_data_format`), classes, versions",
        "- `configs/inference.json`: loader, intensity mapping, slice-wise inferer, post-transforms, writer",
        "- `models/model.ts`: TorchScript; takes whole slices (B, C, X, Y) mapped to [0, 1] and gives class "
        "probabilities of the same size (it resizes to the network's size and back as msa2net does)",
        "",
        f"At export, `models/model.ts` gave msa2net's labels on {check['labels_identical']} of {check['labels_total']} "
        f"pixels of a random {check['slice'][0]} x {check['slice'][1]} slice (max probability difference "
        f"{check['max_abs_prob_diff']:.2g}).",
        "",
        "---",
        "",
    ]
    return "\n".join(lines) + card


_LICENSE_TEXT = {
    "mit": "MIT License (https://spdx.org/licenses/MIT.html)",
    "apache-2.0": "Apache License 2.0 (https://www.apache.org/licenses/LICENSE-2.0)",
}


def _license(license_id: str) -> str:
    name = _LICENSE_TEXT.get(license_id, f"{license_id} (see https://spdx.org/licenses/ or the model card)")
    return (
        f"The model weights in models/model.ts are released under the {name}.\n\n"
        "The configuration files were written by msa2net (MIT License). MSA2Net is the work of Kolahi et al. (BMVC "
        "2024); the model card (docs/README.md) names the data the weights were trained on, whose terms may apply.\n"
    )


# ------------------------------------------------------------------------------------------ writer


def _published_config(ckpt: Mapping[str, Any], model: MSA2Net, source: Any) -> dict[str, Any]:
    """The model's ``config.json`` (a published folder's own, else built as ``msa2net publish`` builds it)."""
    if "pretrained" in ckpt:
        return dict(ckpt["pretrained"])
    path = Path("<checkpoint dict>") if isinstance(source, Mapping) else Path(source)
    return build_pretrained_config(
        model,
        model_name=ckpt["model_name"],
        preprocessing=ckpt["preprocessing"],
        class_names=list(ckpt["class_names"]),
        provenance=provenance_of(ckpt, path),
        slice_orientation=ckpt.get("slice_orientation"),
        dataset=ckpt.get("dataset"),
    )


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def write_monai_bundle(
    source: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> MonaiBundleResult:
    """Write a model as a MONAI bundle folder (see the module docstring for the layout and how it runs).

    Args:
        source: A published folder, hub repo id, checkpoint or run folder, the authors' ``.pth``, or a checkpoint
            dict (see :func:`~msa2net.engine.checkpoint.load_model_source`).
        out_dir: The bundle folder: new or empty, or replaced with ``overwrite``. Written atomically (a staging
            folder beside it renamed into place once every file is written and ``models/model.ts`` is checked).
        overwrite: Replace a non-empty ``out_dir``.

    Returns:
        A :class:`MonaiBundleResult`.

    Raises:
        CheckpointError: the model cannot be read.
        MonaiBundleError: a model for 8-bit colour images (``rgb``), or ``out_dir`` is a file or a non-empty folder
            without ``overwrite``.
        ExportError: TorchScript failed, or ``models/model.ts`` differs from msa2net's procedure.
    """
    out = Path(out_dir)
    with atomic_folder(out, overwrite=overwrite, what="bundle folder", error=MonaiBundleError) as staging:
        ckpt = load_model_source(source)
        prep = Preprocessing.from_dict(ckpt["preprocessing"])
        if prep.kind == "rgb":
            raise MonaiBundleError(
                f"the model {source if not isinstance(source, Mapping) else '(checkpoint dict)'} takes 8-bit images "
                "(preprocessing 'rgb'), but a MONAI bundle from msa2net segments NIfTI volumes; export it with "
                "msa2net export -o FOLDER (TorchScript/ONNX) instead"
            )
        model = model_from_checkpoint(ckpt, "cpu").eval()
        try:
            config = _published_config(ckpt, model, source)
        except PretrainedError as err:
            raise MonaiBundleError(str(err)) from err
        class_names = [str(c) for c in ckpt["class_names"]]
        orientation = ckpt.get("slice_orientation") or None
        keep = parse_keep_largest(((config.get("postprocessing") or {}).get("keep_largest")) or None, class_names)
        for sub in ("configs", "models", "docs"):
            (staging / sub).mkdir()
        try:
            _script_model(model, prep.mean, prep.std).save(str(staging / "models" / "model.ts"))
        except Exception as err:
            raise ExportError(
                f"TorchScript export of the bundle's model failed: {type(err).__name__}: {error_line(err)}"
            ) from err
        check = _check_scripted(staging / "models" / "model.ts", model, prep)
        metadata = _metadata(config, prep, orientation, model)
        _write_json(staging / "configs" / "metadata.json", metadata)
        _write_json(
            staging / "configs" / "inference.json", _inference_config(prep, orientation, keep, model.num_classes)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            card = build_model_card(config)
        (staging / "docs" / "README.md").write_text(_readme(metadata, card, check), encoding="utf-8")
        (staging / "LICENSE").write_text(_license(str(config.get("license") or "mit")), encoding="utf-8")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return MonaiBundleResult(folder=out, files=files, check=check)
