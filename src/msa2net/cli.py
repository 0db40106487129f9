"""`msa2net <command>`: parses arguments and calls the plain functions of :mod:`msa2net.engine`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .constants import BACKENDS, EMPTY_POLICIES, OUTPUT_TYPES, PRECISIONS


def _size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` (also ``H,W``) -> ``(H, W)``, both positive."""
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) == 1:
        parts = parts * 2
    try:
        h, w = (int(p) for p in parts)
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
    from .config import device_is_valid

    if not device_is_valid(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N (N a GPU index) or mps, got {text!r}")
    return text


def _amp(mode: str | None) -> str | None:
    """``--amp`` of evaluate and predict -> their ``amp`` argument (float32 is None)."""
    return None if mode in (None, "none") else mode


def _case_number(text: str) -> str:
    """``phantom --cases``: a BTCV case number >= 1 (``1``, ``0001`` or ``case0001``)."""
    digits = text.strip()[4:] if text.strip().lower().startswith("case") else text.strip()
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"expected a BTCV case number >= 1 like 1, 0001 or case0001, got {text!r}")
    return text


def cmd_info(args: argparse.Namespace) -> int:
    from .engine.info import format_info, model_info
    from .models import list_models

    if args.target is None:
        for name, desc in list_models().items():
            print(f"{name:20s} {desc}")
        return 0
    info = model_info(args.target, img_size=args.img_size, num_classes=args.num_classes)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from .data.phantom import make_isic_phantom, make_synapse_phantom

    # options of the other dataset are refused, not ignored
    if args.dataset == "synapse":
        if args.n is not None:
            raise ValueError("-n counts isic2018 images; choose synapse cases with --cases (e.g. --cases 1 2 3)")
        if args.size is not None and len(args.size) != 1:
            raise ValueError(f"synapse phantom slices are square: give one --size, got {args.size}")
        size = 512 if args.size is None else args.size[0]
        cases = make_synapse_phantom(args.out, cases=args.cases, seed=args.seed, size=size)
        print(f"wrote {len(cases)} CT phantom cases to {args.out}/RawData/Training (then: msa2net prepare synapse)")
    else:
        if args.cases is not None:
            raise ValueError("--cases names synapse (BTCV) cases; choose the number of isic2018 images with -n")
        if args.size is not None and len(args.size) > 2:
            raise ValueError(f"isic2018 phantom images take --size H W (or one value for a square), got {args.size}")
        kwargs: dict[str, object] = {} if args.size is None else {"size": (args.size[0], args.size[-1])}
        if args.n is not None:
            kwargs["n"] = args.n
        names = make_isic_phantom(args.out, seed=args.seed, **kwargs)
        print(f"wrote {len(names)} lesion phantom images to {args.out} (then: msa2net prepare isic2018)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.dataset == "aal":
        from .data.aal import DEFAULT_SLABS, prepare_aal

        slabs = DEFAULT_SLABS if args.slabs is None else args.slabs
        result = prepare_aal(args.out, args.raw, slabs=slabs, overwrite=args.overwrite)
        print(json.dumps(result, indent=2, default=str))
        return 0
    if args.slabs is not None:
        raise ValueError(f"--slabs applies to prepare aal only, not to {args.dataset}; remove it")
    if args.raw is None:
        raise ValueError(f"prepare {args.dataset} needs --raw: the folder of the downloaded raw data")
    if args.dataset == "synapse":
        from .data.synapse_prepare import prepare_synapse

        result = prepare_synapse(args.raw, args.out, overwrite=args.overwrite)
    else:
        from .data.isic import prepare_isic2018

        result = prepare_isic2018(args.raw, args.out, overwrite=args.overwrite)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` items preceded by the dedicated options as ``key=value`` items (the ``--set`` items win).

    Text options are written as quoted YAML strings, so a folder named ``2024`` or ``yes`` stays a string;
    ``--pretrained-encoder none`` becomes ``null`` (no pretrained weights).
    """
    sets = list(args.set or [])
    for flag, key in (
        ("data", "data.root"),
        ("out", "out_dir"),
        ("epochs", "train.epochs"),
        ("batch_size", "train.batch_size"),
        ("model", "model.name"),
        ("device", "train.device"),
        ("amp", "train.amp"),
        ("pretrained_encoder", "model.pretrained_encoder"),
        ("official", "model.official_checkpoint"),
        ("seed", "train.seed"),
        ("num_workers", "data.num_workers"),
    ):
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "pretrained_encoder" and value.strip().lower() == "none":
            text = "null"
        else:
            text = json.dumps(value) if isinstance(value, str) else str(value)
        sets.insert(0, f"{key}={text}")
    return sets


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.train import config_from_checkpoint, train

    overrides = _train_overrides(args)
    if args.resume:
        if args.config is not None:
            raise ValueError(
                f"--resume continues a run with the config recorded in its checkpoint; drop {args.config!r} (to "
                "change a field on top of the recorded config, pass --set KEY=VALUE)"
            )
        resume = Path(args.resume)
        folder = resume if resume.is_dir() else resume.parent
        base = config_from_checkpoint(resume).to_dict()
        base["out_dir"] = str(folder)  # where the checkpoint is now, even if the run folder was moved
        cfg = load_config(f"config of {args.resume}", overrides, base=base)
        if overrides:
            print(f"note: resuming with changes on top of the checkpoint's config: {', '.join(overrides)}")
    else:
        cfg = load_config(args.config or "synapse", overrides)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine.checkpoint import resolve_checkpoint_path
    from .engine.evaluate import evaluate

    empty: str | float = args.empty
    if args.predictions is not None or args.labels is not None:
        return _score_predictions(args)
    checkpoint = resolve_checkpoint_path(args.checkpoint)  # a run folder: its best.pt, else last.pt
    out = args.out or str(checkpoint.with_suffix("")) + "_eval"
    report = evaluate(
        checkpoint,
        args.data,
        out,
        cases=args.cases,
        split=args.split,
        allow_mismatched_input=args.allow_mismatched_input,
        device=args.device,
        batch_size=args.batch_size,
        tta=args.tta,
        amp=_amp(args.amp),
        empty=empty,
        nsd_tolerance_mm=args.nsd_tolerance,
        save_predictions=args.save_predictions,
        overlays_per_case=args.overlays,
        postprocess=args.postprocess,
        html=not args.no_html,
        compare_fp32=args.amp_check,
        keep_largest=args.keep_largest,
        backend=args.backend,
        precision=args.precision,
    )
    return _print_evaluation(report, out, args)


def _score_predictions(args: argparse.Namespace) -> int:
    from .engine.evaluate import evaluate_predictions

    if args.predictions is None:
        args.parser.error("--labels goes with --predictions (a model is evaluated on --data)")
    if args.out is None:
        args.parser.error("--predictions needs --out, the report folder")
    report = evaluate_predictions(
        args.predictions,
        args.out,
        data=args.data,
        labels=args.labels,
        class_names=args.classes,
        cases=args.cases,
        split=args.split,
        empty=args.empty,
        nsd_tolerance_mm=args.nsd_tolerance,
        overlays_per_case=args.overlays,
        keep_largest=args.keep_largest,
        html=not args.no_html,
    )
    return _print_evaluation(report, args.out, args)


def _runtime_flags(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="torch", help=f"inference runtime (default torch) {note}")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default); bf16 (torch autocast, OpenVINO on CPUs with bf16); int8 (OpenVINO, after export --int8)",
    )


def _print_evaluation(report: dict, out: str, args: argparse.Namespace) -> int:
    if "pooled" in report:
        print(json.dumps(report["pooled"], indent=2))
    else:
        print(Path(out, "table.md").read_text())
    warning = report["settings"].get("warning")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {out}/summary.json")
    if Path(out, "report.html").is_file() and not args.no_html:
        print(f"browse: {Path(out, 'report.html').resolve().as_uri()}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predict import predict_files

    inputs = [*(args.inputs or []), *(args.input or [])]
    if not inputs:
        args.parser.error("no inputs: pass image files or folders with -i/--input (repeatable) or as arguments")
    one_command = args.model is not None  # --model: preview and volumes unless switched off
    report = predict_files(
        args.model if one_command else args.checkpoint,
        inputs,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        tta=args.tta,
        amp=_amp(args.amp),
        overlays=args.overlays,
        output_format=args.format,
        split=args.split,
        preview=one_command if args.preview is None else args.preview,
        volumes=one_command if args.volumes is None else args.volumes,
        max_pixels=args.max_pixels,
        allow_mismatched_input=args.allow_mismatched_input,
        reorient=not args.no_reorient,
        html=not args.no_html,
        output_types=args.output_type,
        statistics=args.statistics,
        keep_largest=args.keep_largest,
        segment_codes=args.segment_codes,
        backend=args.backend,
        precision=args.precision,
    )
    print(f"wrote {len(report.written)} file(s) to {args.out}")
    if report.html_path is not None:
        print(f"browse: {report.html_path.resolve().as_uri()}")
    for line in report.failure_lines():
        print(f"failed: {line}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_publish(args: argparse.Namespace) -> int:
    from .engine.publish import publish

    result = publish(
        args.checkpoint,
        args.out,
        evaluation=args.eval,
        overwrite=args.overwrite,
        license=args.license,
        push=args.push,
        private=args.private or None,
        keep_largest=args.keep_largest,
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"published {result.checkpoint} to {result.folder}:")
    for path in result.files:
        print(f"  {path.name}")
    if result.pushed:
        print(f"uploaded to {args.push}: {result.pushed}")
    else:
        print(f"use it: msa2net predict -i SCAN -o OUT --model {result.folder}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .engine.export import export_model
    from .engine.monai_bundle import write_monai_bundle

    if args.out is None and args.monai_bundle is None:
        args.parser.error("give -o/--out FOLDER (a published folder with graphs), --monai-bundle DIR, or both")
    if args.out is not None:
        result = export_model(
            args.checkpoint,
            args.out,
            formats=args.formats,
            check=not args.no_check,
            overwrite=args.overwrite,
            openvino=args.openvino,
            int8_calibration=args.int8,
            calibration_count=args.calibration_slices,
        )
        for fmt, path in result.items():
            print(f"{fmt:12s} {path}")
        for fmt, diff in result.differences.items():
            print(f"max |logits - eager| {fmt}: {diff:.3g} (allowed {result.tolerance:.3g})")
    if args.monai_bundle is not None:
        bundle = write_monai_bundle(args.checkpoint, args.monai_bundle, overwrite=args.overwrite)
        check = bundle.check
        print(f"MONAI bundle {bundle.folder}: {', '.join(bundle.files)}")
        print(
            f"models/model.ts vs msa2net on a random slice: {check['labels_identical']}/{check['labels_total']} labels "
            f"identical, max |probability difference| {check['max_abs_prob_diff']:.3g}"
        )
        print(
            "run it: python -m monai.bundle run --config_file configs/inference.json "
            f"--bundle_root {bundle.folder} --dataset_dir IN --output_dir OUT"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.demo import run_demo

    load_config("demo", [f"train.device={args.device}", *(args.set or [])])  # report a bad --set before any work

    result = run_demo(args.out, overrides=args.set, device=args.device)
    print()
    print(Path(args.out, "eval", "table.md").read_text())
    print(
        f"demo finished in {result['total_seconds']:.0f} s: mean Dice {result['mean_dice']:.4f} on the phantom test "
        f"cases (legacy protocol); report: {result['report']}"
    )
    print(f"browse: {Path(result['html']).resolve().as_uri()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .config import AMP_MODES, EVALUATION_SPLITS, PRESETS

    parser = argparse.ArgumentParser(prog="msa2net", description="MSA2Net medical image segmentation")
    parser.add_argument("--version", action="version", version=f"msa2net {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters, GFLOPs and settings of a model name or checkpoint")
    p.add_argument("target", nargs="?", help="registered model name (omit to list them) or checkpoint path")
    p.add_argument("--img-size", type=_size, default=None, help="input size for the FLOP count, N or HxW")
    p.add_argument(
        "--num-classes",
        type=_int_at_least(1),
        default=None,
        help="output classes for the FLOP count (model names only)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("phantom", help="write built-in phantom data (no download needed)")
    p.add_argument("dataset", choices=["synapse", "isic2018"], help="CT phantom (synapse) or lesion images (isic2018)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (same seed, same files; default 0)")
    p.add_argument(
        "--cases", nargs="+", type=_case_number, default=None, help="BTCV case numbers, e.g. 1 2 or 0001 (synapse)"
    )
    p.add_argument(
        "--size",
        type=_int_at_least(16),
        nargs="+",
        default=None,
        metavar="PIXELS",
        help="synapse: in-plane size N (default 512); isic2018: H W or one value for a square (default 192 256)",
    )
    p.add_argument("-n", type=_int_at_least(1), default=None, help="number of images (isic2018, default 24)")
    p.set_defaults(func=cmd_phantom)

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
        default=None,
        help="aal: contiguous training cases the left hemisphere is cut into (default 4)",
    )
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train (single process, or under torchrun for DDP)")
    p.add_argument(
        "config",
        nargs="?",
        default=None,
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
    p.set_defaults(func=cmd_train)

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
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=16,
        help="slices per step: per forward pass on a GPU; on a CPU one slice per pass, two at once (default 16)",
    )
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--amp", choices=AMP_MODES, help="mixed-precision inference: none (float32, default), bf16, fp16")
    p.add_argument(
        "--amp-check",
        action="store_true",
        help="with --amp, or --backend/--precision other than torch fp32: also run torch float32 and record the "
        "agreement in summary.json",
    )
    _runtime_flags(p, "")
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
    p.set_defaults(func=cmd_evaluate, parser=p)

    p = sub.add_parser("predict", help="segment NIfTI/NRRD/MHA files, DICOM series folders, PNG/JPG, or folders")
    p.add_argument("inputs", nargs="*", help="image files, DICOM series folders, or folders of them")
    p.add_argument(
        "-i", "--input", action="append", metavar="PATH", help="an input (repeatable; same as the positional inputs)"
    )
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--checkpoint",
        help="run folder (its best.pt, else last.pt), msa2net checkpoint, published folder, or an authors' .pth",
    )
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
        default=None,
        help="write OUT/<stem>_preview.png with a class legend (default: on with --model)",
    )
    p.add_argument(
        "--volumes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write OUT/<stem>_volumes.json, class volumes in ml (default: on with --model)",
    )
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=8,
        help="slices per step: per forward pass on a GPU; on a CPU one slice per pass, two at once (default 8)",
    )
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--amp", choices=AMP_MODES, help="mixed-precision inference: none (float32, default), bf16, fp16")
    p.add_argument(
        "--max-pixels",
        type=_int_at_least(1),
        default=None,
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
    _runtime_flags(p, "")
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
    p.set_defaults(func=cmd_predict, parser=p)

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
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "export", help="published model folder with TorchScript and ONNX graphs inside, checked against eager PyTorch"
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run folder (its best.pt, else last.pt), msa2net checkpoint, published folder, or an authors' .pth",
    )
    p.add_argument("-o", "--out", help="output folder (the --checkpoint folder itself adds the graphs)")
    p.add_argument(
        "--monai-bundle",
        metavar="DIR",
        help="also (or only) write a MONAI bundle folder that python -m monai.bundle run executes on NIfTI volumes",
    )
    p.add_argument(
        "--formats",
        nargs="+",
        default=["torchscript", "onnx"],
        choices=["torchscript", "onnx"],
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
    p.set_defaults(func=cmd_export, parser=p)

    p = sub.add_parser("demo", help="phantom -> prepare -> train -> evaluate -> predict, on CPU in minutes")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of the demo preset")
    p.set_defaults(func=cmd_demo)
    return parser


#: Commands whose work is torch compute on the CPU (train steps, forward passes).
_COMPUTE_COMMANDS = frozenset({"train", "evaluate", "predict", "demo", "export"})
#: 1-minute load average (other processes, before msa2net starts) from which the CPU counts as shared.
BUSY_LOAD = 0.75


def _wait_policy_for_shared_cpus(command: str) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other processes already keep the CPU busy; returns a note saying so.

    OpenMP threads that finish early spin while they wait (the default, active policy): the fastest alone, but the
    spinning takes the cores from every other process. Measured on 2 cores (``benchmarks/bench_contention.py``:
    ``msa2net_paper`` training steps, batch 2 at 224, 2 threads per process, 3 interleaved rounds; JSON in
    ``benchmarks/results/bench_contention_paper_b2_2core.json``): alone 1.52 s a step, PASSIVE alone 1.28x slower
    (1.24-1.30); two processes at once 9.2x slower than alone each (7.2-10.7) with the default, 2.10x (2.09-2.13,
    a fair share) with PASSIVE. So the policy is chosen here, before torch is imported (OpenMP reads it once, at
    load): PASSIVE when the load average already shows another busy process, else OpenMP's default. An
    ``OMP_WAIT_POLICY`` the user set is kept, and nothing is done once torch is loaded (e.g. inside Python).
    """
    if command not in _COMPUTE_COMMANDS or "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return None
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on this platform
        return None
    if load < BUSY_LOAD:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return (
        f"note: other processes keep the CPU busy (load average {load:.1f} on {cores} core(s)), so msa2net runs with "
        "OMP_WAIT_POLICY=PASSIVE (waiting threads sleep instead of spinning, which shares the cores far better). "
        "Set OMP_WAIT_POLICY yourself to choose (ACTIVE spins), or give each process fewer threads "
        "(OMP_NUM_THREADS=1)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    note = _wait_policy_for_shared_cpus(args.command)
    if note:
        print(note, file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"msa2net {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msa2net {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
