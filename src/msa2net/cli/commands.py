"""What each ``msa2net`` command does: calls the plain functions of :mod:`msa2net.engine` and prints the result."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS"]


def _inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of the options evaluate and predict share: how the model runs (``--amp none`` is None)."""
    return {
        "device": args.device,
        "batch_size": args.batch_size,
        "tta": args.tta,
        "amp": None if args.amp in (None, "none") else args.amp,
        "backend": args.backend,
        "precision": args.precision,
        "allow_mismatched_input": args.allow_mismatched_input,
    }


def _scoring_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords evaluating a model and scoring masks share: which cases, the mm metrics, the report."""
    return {
        "cases": args.cases,
        "split": args.split,
        "empty": args.empty,
        "nsd_tolerance_mm": args.nsd_tolerance,
        "overlays_per_case": args.overlays,
        "keep_largest": args.keep_largest,
        "html": not args.no_html,
    }


def cmd_info(args: argparse.Namespace) -> int:
    from ..engine.info import format_info, model_info
    from ..models import list_models

    if args.target is None:
        for name, desc in list_models().items():
            print(f"{name:20s} {desc}")
        return 0
    info = model_info(args.target, img_size=args.img_size, num_classes=args.num_classes)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from ..data.phantom import make_isic_phantom, make_synapse_phantom

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
    if args.dataset != "aal" and args.slabs is not None:
        raise ValueError(f"--slabs applies to prepare aal only, not to {args.dataset}; remove it")
    if args.dataset != "aal" and args.raw is None:
        raise ValueError(f"prepare {args.dataset} needs --raw: the folder of the downloaded raw data")
    if args.dataset == "aal":
        from ..data.aal import DEFAULT_SLABS, prepare_aal

        slabs = DEFAULT_SLABS if args.slabs is None else args.slabs
        result = prepare_aal(args.out, args.raw, slabs=slabs, overwrite=args.overwrite)
    elif args.dataset == "synapse":
        from ..data.synapse_prepare import prepare_synapse

        result = prepare_synapse(args.raw, args.out, overwrite=args.overwrite)
    else:
        from ..data.isic import prepare_isic2018

        result = prepare_isic2018(args.raw, args.out, overwrite=args.overwrite)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` items preceded by the dedicated options as ``key=value`` items (the ``--set`` items win).

    Text options are written as quoted YAML strings, so a folder named ``2024`` or ``yes`` stays a string (the
    config reads ``model.pretrained_encoder`` ``"none"`` as null: no pretrained weights).
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
        if value is not None:
            sets.insert(0, f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return sets


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.train import config_from_checkpoint, train

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
    from ..engine.checkpoint import resolve_checkpoint_path
    from ..engine.evaluate import evaluate

    if args.predictions is not None or args.labels is not None:
        return _score_predictions(args)
    checkpoint = resolve_checkpoint_path(args.checkpoint)  # a run folder: its best.pt, else last.pt
    out = args.out or str(checkpoint.with_suffix("")) + "_eval"
    report = evaluate(
        checkpoint,
        args.data,
        out,
        save_predictions=args.save_predictions,
        postprocess=args.postprocess,
        compare_fp32=args.amp_check,
        **_inference_options(args),
        **_scoring_options(args),
    )
    return _print_evaluation(report, out, args)


def _score_predictions(args: argparse.Namespace) -> int:
    from ..engine.evaluate import evaluate_predictions

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
        **_scoring_options(args),
    )
    return _print_evaluation(report, args.out, args)


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
    from ..engine.predict import predict_files

    inputs = [*(args.inputs or []), *(args.input or [])]
    if not inputs:
        args.parser.error("no inputs: pass image files or folders with -i/--input (repeatable) or as arguments")
    one_command = args.model is not None  # --model: preview and volumes unless switched off
    report = predict_files(
        args.model if one_command else args.checkpoint,
        inputs,
        args.out,
        overlays=args.overlays,
        output_format=args.format,
        split=args.split,
        preview=one_command if args.preview is None else args.preview,
        volumes=one_command if args.volumes is None else args.volumes,
        max_pixels=args.max_pixels,
        reorient=not args.no_reorient,
        html=not args.no_html,
        output_types=args.output_type,
        statistics=args.statistics,
        keep_largest=args.keep_largest,
        segment_codes=args.segment_codes,
        **_inference_options(args),
    )
    print(f"wrote {len(report.written)} file(s) to {args.out}")
    if report.html_path is not None:
        print(f"browse: {report.html_path.resolve().as_uri()}")
    for line in report.failure_lines():
        print(f"failed: {line}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_publish(args: argparse.Namespace) -> int:
    from ..engine.publish import publish

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
    from ..engine.export import export_model
    from ..engine.monai_bundle import write_monai_bundle

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
    from ..config import load_config
    from ..engine.demo import run_demo

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


#: ``msa2net <command>`` -> its function.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": cmd_info,
    "phantom": cmd_phantom,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "publish": cmd_publish,
    "export": cmd_export,
    "demo": cmd_demo,
}
