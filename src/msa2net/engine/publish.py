"""Publish a trained model: checkpoint (or run folder, or an authors' ``.pth``) -> hub-layout folder, optionally
uploaded.

:func:`publish` is what ``msa2net publish`` calls. It reads the checkpoint through
:func:`~msa2net.engine.checkpoint.load_checkpoint` (so an authors' checkpoint goes through the converter, its variant
detected from the keys), records where the weights come from (``provenance``) and the evaluation summary, and writes
the folder with :func:`msa2net.models.pretrained.save_pretrained` (``config.json``, ``model.safetensors`` and the model
card of :func:`msa2net.reporting.card.build_model_card`), atomically. The training data's record (``dataset``, stored
by training) is copied into ``config.json``, where the card reads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.pretrained import CONFIG_NAME, build_pretrained_config, file_sha256, push_folder_to_hub, save_pretrained
from ..reporting.card import build_model_card
from ..reporting.summary import CaseSummary, SummaryError, read_summary
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, resolve_checkpoint_path
from .postprocess import parse_keep_largest

__all__ = ["EVAL_SUMMARY_CANDIDATES", "PublishResult", "find_run_files", "provenance_of", "publish"]

#: Where :func:`find_run_files` looks for an evaluation summary inside a run folder, in this order: the folder
#: the README suggests, then ``msa2net evaluate``'s default output for ``best.pt`` and ``last.pt``.
EVAL_SUMMARY_CANDIDATES: tuple[str, ...] = ("eval/summary.json", "best_eval/summary.json", "last_eval/summary.json")


@dataclass
class PublishResult:
    """What :func:`publish` did.

    Attributes:
        folder: The written folder.
        files: Its files (``config.json``, ``model.safetensors``, ``README.md``).
        checkpoint: The checkpoint published.
        evaluation: The ``summary.json`` recorded in the card, or None.
        notes: Things the user should know (an evaluation found in the run folder, one left out, ...).
        pushed: The commit URL when the folder was uploaded, else None.
    """

    folder: Path
    files: list[Path]
    checkpoint: Path
    evaluation: Path | None = None
    notes: list[str] = field(default_factory=list)
    pushed: str | None = None


def find_run_files(source: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The checkpoint and evaluation summary to publish for a checkpoint file or a run folder.

    A run folder gives ``best.pt`` (else ``last.pt``, when the run had no validation) and the first of
    :data:`EVAL_SUMMARY_CANDIDATES` that exists; a file or a published folder gives itself and no summary.

    Raises:
        CheckpointError: the path does not exist, or the folder holds neither ``best.pt`` nor ``last.pt``.
    """
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{str(path)!r} does not exist; pass a checkpoint file (RUN/best.pt) or a run folder")
    if path.is_file() or (path / CONFIG_NAME).is_file():  # a checkpoint, or a published folder (re-published)
        return path, None
    checkpoint = resolve_checkpoint_path(path)
    summary = next((path / c for c in EVAL_SUMMARY_CANDIDATES if (path / c).is_file()), None)
    return checkpoint, summary


def provenance_of(ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Where a checkpoint's weights come from, for ``config.json``: source checkpoint and its SHA-256, and for a
    training checkpoint its epoch, best validation metric and epoch, which one it is, and the run config; for an
    authors' checkpoint the detected variant and what the conversion assumed."""
    if "pretrained" in ckpt:  # a published folder: its provenance stays
        return dict(ckpt["pretrained"].get("provenance") or {})
    known = path.is_file()  # a checkpoint given as a dict (Python API) has no file to name
    base = {"source_checkpoint": str(path) if known else None, "source_sha256": file_sha256(path) if known else None}
    config = ckpt.get("config") or {}
    if config.get("source") == "official":
        return {
            "source": "official",
            **base,
            "variant_detected": ckpt["model_args"]["variant"],
            "converter": "msa2net.models.official",
            "assumed": "the released code's Synapse setting: 1 input channel, 224x224, CT window [-125, 275] HU; "
            "Synapse class names when there are 9 classes",
        }
    if "epoch" not in ckpt:
        return {"source": "checkpoint", **base, "trained_with_msa2net": ckpt.get("msa2net_version")}
    epoch, best_epoch = int(ckpt["epoch"]), int(ckpt.get("best_epoch", -1))
    best = ckpt.get("best_metric")
    validated = best_epoch > 0 and best is not None
    return {
        "source": "training",
        **base,
        "selection": "best" if validated and best_epoch == epoch else "last",
        "epoch": epoch,
        "epochs": (config.get("train") or {}).get("epochs"),
        "iteration": ckpt.get("iteration"),
        "best_epoch": best_epoch if validated else None,
        "best_validation_mean_dice": float(best) if validated else None,
        "trained_with_msa2net": ckpt.get("msa2net_version"),
        "run_config": dict(config),
    }


def _read_summary(path: Path, class_names: list[str]) -> dict[str, Any]:
    """An evaluation ``summary.json`` without its per-case rows, checked against the model's classes."""
    try:
        summary = read_summary(path)
    except SummaryError as exc:
        raise ValueError(f"{exc}; pass the summary.json that evaluate wrote") from exc
    if isinstance(summary, CaseSummary):  # pooled summaries name no classes
        if list(summary.class_names) != class_names:
            raise ValueError(
                f"{path} evaluates the classes {summary.class_names} but the checkpoint segments {class_names}; pass "
                "the summary of an evaluation of this checkpoint"
            )
        summary = summary.without_cases()
    return summary.to_json()


def publish(
    source: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    evaluation: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    license: str = "mit",
    push: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    keep_largest: str | Sequence[str | int] | None = None,
    exports: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> PublishResult:
    """Write a checkpoint as a hub-layout folder ready to upload, and optionally upload it.

    Args:
        source: A checkpoint (``RUN/best.pt``, ``last.pt``, a ``.safetensors`` export, an authors' ``.pth``), a run
            folder (its ``best.pt``, else ``last.pt``, and its evaluation summary, see :func:`find_run_files`), or a
            published folder (re-published with its provenance and, unless ``evaluation`` is given, its evaluation;
            e.g. to change the licence).
        out_dir: The folder to write; it may not exist or be empty (a non-empty one needs ``overwrite``). Written
            atomically: a temporary folder beside it renamed into place.
        evaluation: A ``summary.json`` of ``msa2net evaluate`` of this checkpoint; overrides the run folder's.
        overwrite: Replace a non-empty ``out_dir``.
        license: Hub licence id of the weights (``mit``, ``apache-2.0``, ``cc-by-nc-4.0``, ``other``, ...).
        push: A hub repo id ``owner/name`` to upload the folder to after writing it.
        private: Create the repo private (when it does not exist yet).
        token: Hub token (default: the logged-in one or ``HF_TOKEN``).
        keep_largest: Classes (``"all"``, names or ids) whose largest connected component alone prediction keeps by
            default (``postprocessing`` in ``config.json``); None: a re-published folder's choice, else none.
        exports: ``config.json``'s record of ``extra_files`` (:func:`msa2net.engine.export.export_model`).
        extra_files: Files moved into the folder (exported graphs).

    Returns:
        A :class:`PublishResult`.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable or inconsistent.
        ValueError: the summary is not an evaluation summary, or evaluates other classes.
        PretrainedError: ``out_dir`` is a non-empty folder and ``overwrite`` is off.
        HubUnavailableError: ``push`` while the hub cannot be reached (within seconds); the folder is written.
    """
    int8 = ((exports or {}).get("openvino") or {}).get("int8") or {}
    if any(str(name).endswith("-int8.xml") for name in extra_files or {}) and not int8.get("agreement"):
        raise ValueError(
            "an int8 model is published only with its agreement with torch float32 (exports.openvino.int8.agreement);"
            " make it with msa2net export --int8 --calibration DATA, which measures it"
        )
    checkpoint, found = (Path("<checkpoint dict>"), None) if isinstance(source, Mapping) else find_run_files(source)
    notes: list[str] = []
    summary_path = Path(evaluation) if evaluation is not None else found
    if evaluation is None and found is not None:
        notes.append(f"evaluation summary found in the run folder: {found}")
    ckpt = dict(source) if isinstance(source, Mapping) else load_checkpoint(checkpoint)
    class_names = list(ckpt["class_names"])
    summary = None
    if summary_path is not None:
        summary = _read_summary(summary_path, class_names)
        evaluated = (summary.get("settings") or {}).get("checkpoint")
        if evaluated and Path(evaluated).name != checkpoint.name:
            notes.append(
                f"the evaluation summary {summary_path} was made for {evaluated}, not {checkpoint}; check that it "
                "evaluates the published weights"
            )
    elif "pretrained" in ckpt:
        summary = ckpt["pretrained"].get("evaluation")  # re-published: the folder's evaluation stays
    model = model_from_checkpoint(ckpt)
    recorded = (ckpt.get("pretrained") or {}).get("postprocessing") or {}
    largest = parse_keep_largest(keep_largest, class_names) if keep_largest is not None else None
    postprocessing = {**recorded, **({} if largest is None else {"keep_largest": [class_names[i] for i in largest]})}
    config = build_pretrained_config(
        model,
        model_name=ckpt["model_name"],
        preprocessing=ckpt["preprocessing"],
        class_names=class_names,
        provenance=provenance_of(ckpt, checkpoint),
        evaluation=summary,
        license=license,
        slice_orientation=ckpt.get("slice_orientation"),
        dataset=ckpt.get("dataset") or (ckpt.get("pretrained") or {}).get("dataset"),
        postprocessing=postprocessing,
        exports=exports,
    )
    card = build_model_card(config, repo_id=push)
    folder = save_pretrained(
        model, out_dir, config=config, card=card, repo_id=push, overwrite=overwrite, extra_files=extra_files
    )
    return PublishResult(
        folder=folder,
        files=sorted(p for p in folder.iterdir() if p.is_file()),
        checkpoint=checkpoint,
        evaluation=summary_path,
        notes=notes,
        pushed=push_folder_to_hub(folder, push, private=private, token=token) if push else None,
    )
