"""The command line's grammar: every command, option and argument type of ``msa2net`` (no torch is loaded)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..constants import BACKENDS, DEVICE_TEXT, EMPTY_POLICIES, EXPORT_FORMATS, OUTPUT_TYPES, PRECISIONS

__all__ = ["build_parser"]

#: ``--checkpoint`` of predict and export: what it may name.
_CHECKPOINT_HELP = "run folder (its best.pt, else last.pt), msa2net checkpoint, published folder, or an authors' .pth"


def _size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` (also ``H,W``) -> ``(H, W)``, both positive."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(p) for p in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive integers, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with positive integers, got {text!r}")
    return h, w


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer >= ``minimum``; argparse prefixes the option name to the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    """An argparse ``type=``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _empty_policy(text: str) -> str | float:
    """``--empty``: one of :data:`EMPTY_POLICIES` (any case) or a non-negative distance in mm."""
    if text.strip().lower() in EMPTY_POLICIES:
        return text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(EMPTY_POLICIES)} or a non-negative number (mm), got {text!r}"
        )
    return value


def _device(text: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps."""
    from ..config import device_is_valid

    if not device_is_valid(text):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_TEXT}, got {text!r}")
    return text


def _case_number(text: str) -> str:
    """``phantom --cases``: a BTCV case number >= 1 (``1``, ``0001`` or ``case0001``)."""
    digits = text.strip()[4:] if text.strip().lower().startswith("case") else text.strip()
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"expected a BTCV case number >= 1 like 1, 0001 or case0001, got {text!r}")
    return text


def _inference_flags(p: argparse.ArgumentParser, batch_size: int) -> None:
    """How ``evaluate`` and ``predict`` run the model: device, batch, test-time flips, precision and runtime."""
    from ..config import AMP_MODES

    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=batch_size,
        help=f"slices per step: per forward pass on a GPU; on a CPU one slice per pass (default {batch_size})",
    )
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--amp", choices=AMP_MODES, help="mixed-precision inference: none (float32, default), bf16, fp16")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="inference runtime (default torch)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default); bf16 (torch autocast, OpenVINO on CPUs with bf16); int8 (OpenVINO, after export --int8)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__
    from ..config import AMP_MODES, EVALUATION_SPLITS, PRESETS

    parser = argparse.ArgumentParser(prog="msa2net", description="MSA2Net medical image segmentation")
    parser.add_argument("--version", action="version", version=f"msa2net {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters, GFLOPs and settings of a model name or checkpoint")
    p.add_argument("target", nargs="?", help="registered model name (omit to list them) or checkpoint path")
    p.add_argument("--img-size", type=_size, help="input size for the FLOP count, N or HxW")
    p.add_argument("--num-classes", type=_int_at_least(1), help="output classes for the FLOP count (model names only)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("phantom", help="write built-in phantom data (no download needed)")
    p.add_argument("dataset", choices=["synapse", "isic2018"], help="CT phantom (synapse) or lesion images (isic2018)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (same seed, same files; default 0)")
    p.add_argument("--cases", nargs="+", type=_case_number, help="BTCV case numbers, e.g. 1 2 or 0001 (synapse)")
    p.add_argument(
        "--size",
        type=_int_at_least(16),
        nargs="+",
        metavar="PIXELS",
        help="synapse: in-plane size N (default 512); isic2018: H W or one value for a square (default 192 256)",
    )
    p.add_argument("-n", type=_int_at_least(1), help="number of images (isic2018, default 24)")

    p = sub.add_parser(
        "prepare",
        help="raw download -> training layout (Synapse: TransUNet's; ISIC: split npz; AAL: a dataset folder)",
    )
    p.add_argument(
        "dataset",
        choices=["synapse", "isic2018", "aal"],
        help="which dataset: synapse, isic2018, or aal (real T1 MRI with expert lobe labels, from Debian's "
        "mricron-data)",
    )
    p.add_argument(
        "--raw",
        help="raw data folder (BTCV RawData, or the ISIC 2018 task 1 folders; required for those). aal: the folder "
        "of ch2.nii.gz, aal.nii.gz, aal.nii.txt (default /usr/share/mricron/templates)",
    )
    p.add_argument("--out", required=True, help="output folder for the prepared dataset")
    p.add_argument("--overwrite", action="store_true", help="redo finished cases")
    p.add_argument(
        "--slabs",
        type=_int_at_least(2),
        help="aal: contiguous training cases the left hemisphere is cut into (default 4)",
    )

    p = sub.add_parser("train", help="train (single process, or under torchrun for DDP)")
    p.add_argument(
        "config",
        nargs="?",
        help=f"preset ({', '.join(PRESETS)}) or YAML file (default synapse; with --resume: the checkpoint's config)",
    )
    p.add_argument("--data", help="data root (data.root)")
    p.add_argument("--out", help="run folder (out_dir)")
    p.add_argument("--epochs", type=_int_at_least(1), help="training epochs (train.epochs)")
    p.add_argument("--batch-size", type=_int_at_least(1), help="global batch size over all processes")
    p.add_argument("--model", help="registered model name, e.g. msa2net_paper, msa2net_released, msa2net_pico")
    p.add_argument("--device", type=_device, help="auto, cpu, cuda, cuda:N or mps (train.device)")
    p.add_argument("--amp", choices=AMP_MODES, help="mixed precision: none, bf16 or fp16 (fp16 needs CUDA)")
    p.add_argument("--seed", type=_int_at_least(0), help="random seed (train.seed)")
    p.add_argument("--num-workers", type=_int_at_least(0), help="DataLoader worker processes (data.num_workers)")
    p.add_argument(
        "--pretrained-encoder",
        help="ImageNet weights file for the encoder, 'hub' (download), or 'none' (no pretrained weights)",
    )
    p.add_argument("--official", help="start from an authors' MSA2Net .pth")
    p.add_argument(
        "--resume",
        help="last.pt (or its run folder) to continue exactly, with the config it records (--set changes fields)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run's outputs in --out (default: refuse)"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any field, e.g. train.lr=0.01")

    p = sub.add_parser(
        "evaluate", help="legacy + millimetre metrics of a checkpoint, or of any tool's masks, on a labelled test set"
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint",
        help="run folder (its best.pt, else last.pt), msa2net checkpoint, published model folder or an authors' .pth",
    )
    what.add_argument(
        "--predictions",
        metavar="DIR",
        help="score these masks instead of a model: one file per case, <case id>.nii.gz (any image format)",
    )
    truth = p.add_mutually_exclusive_group(required=True)
    truth.add_argument("--data", help="prepared Synapse folder, dataset folder or prepared ISIC folder")
    truth.add_argument(
        "--labels", metavar="DIR", help="with --predictions: a folder of ground-truth masks, <case id>.nii.gz"
    )
    p.add_argument("--classes", nargs="+", help="with --labels: class names, background first (default class_N)")
    p.add_argument(
        "--keep-largest",
        metavar="CLASSES",
        help="score only the largest connected component of these classes: all, or names/ids (as predict)",
    )
    p.add_argument("--out", help="report folder (default: next to the checkpoint, e.g. RUN/best_eval; required with "
                   "--predictions)")  # fmt: skip
    p.add_argument(
        "--split",
        choices=EVALUATION_SPLITS,
        default="test",
        help="test: the labelled test cases (refused when there are none); train: the training cases, which the "
        "model has seen (the report says so). Default test",
    )
    p.add_argument("--cases", nargs="+", help="evaluate only these cases, e.g. case0001 case0002 (default: --split)")
    p.add_argument(
        "--allow-mismatched-input",
        action="store_true",
        help="evaluate even when the model's class names or input intensities differ from the data's",
    )
    p.add_argument(
        "--amp-check",
        action="store_true",
        help="with --amp, or --backend/--precision other than torch fp32: also run torch float32 and record the "
        "agreement in summary.json",
    )
    _inference_flags(p, batch_size=16)
    p.add_argument(
        "--empty",
        type=_empty_policy,
        default="nan",
        help="HD95-mm policy for empty masks: nan, legacy, diagonal or a non-negative number (mm); default nan",
    )
    p.add_argument(
        "--nsd-tolerance", type=_positive_float, default=2.0, help="surface Dice tolerance in mm, > 0 (default 2)"
    )
    p.add_argument("--save-predictions", action="store_true", help="write NIfTI predictions")
    p.add_argument("--overlays", type=_int_at_least(0), default=3, help="overlay PNGs per case (0: none; default 3)")
    p.add_argument("--postprocess", action="store_true", help="ISIC: opening + hole filling before scoring")
    p.add_argument("--no-html", action="store_true", help="do not write report.html (the slice browser)")
    p.set_defaults(parser=p)

    p = sub.add_parser("predict", help="segment NIfTI/NRRD/MHA files, DICOM series folders, PNG/JPG, or folders")
    p.add_argument("inputs", nargs="*", help="image files, DICOM series folders, or folders of them")
    p.add_argument(
        "-i", "--input", action="append", metavar="PATH", help="an input (repeatable; same as the positional inputs)"
    )
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help=_CHECKPOINT_HELP)
    weights.add_argument(
        "--model",
        metavar="DIR_OR_REPO",
        help="published model: a folder from `msa2net publish` or a Hugging Face repo id owner/name "
        "(writes a preview and volumes too)",
    )
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--split", action="store_true", help="also one binary mask per class: OUT/<stem>/<class>.<suffix>")
    p.add_argument(
        "--preview",
        action=argparse.BooleanOptionalAction,
        help="write OUT/<stem>_preview.png with a class legend (default: on with --model)",
    )
    p.add_argument(
        "--volumes",
        action=argparse.BooleanOptionalAction,
        help="write OUT/<stem>_volumes.json, class volumes in ml (default: on with --model)",
    )
    p.add_argument(
        "--max-pixels",
        type=_int_at_least(1),
        help="largest raster (width x height) to decode; larger files are skipped as possible decompression bombs "
        "(default: $MSA2NET_MAX_PIXELS, else 89478485)",
    )
    p.add_argument(
        "--allow-mismatched-input",
        action="store_true",
        help="segment inputs whose type or value range does not fit the model's preprocessing (e.g. an 8-bit PNG "
        "for a CT model) instead of skipping them",
    )
    p.add_argument("--overlays", action="store_true", help="also write PNG overlays")
    _inference_flags(p, batch_size=8)
    p.add_argument(
        "--output-type",
        nargs="+",
        choices=OUTPUT_TYPES,
        default=["nifti"],
        help="what to write per input, several allowed: nifti (the label mask, in the input's format), probabilities "
        "(OUT/<stem>_probabilities.npz, float16), dicom-seg (OUT/<stem>.seg.dcm, for DICOM series inputs) "
        "(default nifti)",
    )
    p.add_argument(
        "--statistics",
        action="store_true",
        help="write OUT/<stem>_statistics.json: per class voxels, volume in ml, mean/median/std intensity (HU for "
        "CT) and whether the mask touches the image border",
    )
    p.add_argument(
        "--keep-largest",
        metavar="CLASSES",
        help="keep only the largest connected component of these classes: all, or names/ids, e.g. liver,spleen "
        "(default: as the model records, else none)",
    )
    p.add_argument(
        "--segment-codes",
        metavar="JSON",
        help="DICOM SEG category/type codes for the model's classes: {name: {category: [scheme, value, meaning], "
        "type: [...]}} (built in for the Synapse organs and lesions)",
    )
    p.add_argument("--format", help="mask format for volumes: .nii.gz, .nii, .nrrd, .mha")
    p.add_argument("--no-html", action="store_true", help="do not write report.html (the slice browser)")
    p.add_argument(
        "--no-reorient",
        action="store_true",
        help="slice volumes as stored, even when their layout differs from the training volumes' (default: "
        "re-index them to the plane the model was trained on, and the mask back)",
    )
    p.set_defaults(parser=p)

    p = sub.add_parser("publish", help="checkpoint or run folder -> Hugging Face layout folder with a model card")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run folder (its best.pt, else last.pt, and eval/summary.json), RUN/best.pt, or an authors' .pth",
    )
    p.add_argument("--eval", help="summary.json of `msa2net evaluate` for the card (default: the run folder's)")
    p.add_argument("-o", "--out", required=True, help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--license", default="mit", help="hub licence id of the weights (default mit)")
    p.add_argument("--push", metavar="REPO_ID", help="also upload the folder to this Hugging Face repo (owner/name)")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    p.add_argument(
        "--keep-largest",
        metavar="CLASSES",
        help="record that prediction keeps only the largest connected component of these classes (all, or names/ids)",
    )

    p = sub.add_parser(
        "export", help="published model folder with TorchScript and ONNX graphs inside, checked against eager PyTorch"
    )
    p.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    p.add_argument("-o", "--out", help="output folder (the --checkpoint folder itself adds the graphs)")
    p.add_argument(
        "--monai-bundle",
        metavar="DIR",
        help="also (or only) write a MONAI bundle folder that python -m monai.bundle run executes on NIfTI volumes",
    )
    p.add_argument(
        "--formats",
        nargs="+",
        default=list(EXPORT_FORMATS),
        choices=EXPORT_FORMATS,
        help="formats to write (default: both)",
    )
    p.add_argument("--no-check", action="store_true", help="skip comparing the exported model with eager PyTorch")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder of another model")
    p.add_argument("--openvino", action="store_true", help="also write openvino/model.xml (the openvino backend's)")
    p.add_argument(
        "--int8",
        metavar="DATA",
        help="also an OpenVINO int8 model, calibrated on slices of this dataset's training cases and kept only if its "
        "labels agree with torch float32 on its labelled cases (>= 99.5%% identical, Dice drop <= 0.005)",
    )
    p.add_argument("--calibration-slices", type=_int_at_least(1), default=300, help="int8 calibration slices (300)")
    p.set_defaults(parser=p)

    p = sub.add_parser("demo", help="phantom -> prepare -> train -> evaluate -> predict, on CPU in minutes")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the demo preset")
    return parser
