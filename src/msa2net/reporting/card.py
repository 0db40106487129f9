"""The model card (``README.md``) of a published model, from its ``config.json`` alone.

A :class:`huggingface_hub.ModelCard` whose text is the jinja2 template ``card_template.md``; this module gathers
the template's values (architecture, weights, training data and recipe, evaluation tables). Folders published
before ``config.json`` carried a ``dataset`` record get one inferred.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..constants import BUILTIN_DATASETS, SYNAPSE_CLASS_NAMES, builtin_dataset
from .summary import CaseSummary, PooledSummary, Summary, number, summary_from_json
from .tables import cell, format_evaluation_tables, markdown_table

if TYPE_CHECKING:
    import jinja2
    from huggingface_hub import EvalResult, ModelCard

__all__ = ["MSA2NET_BIBTEX", "build_model_card", "dataset_of", "model_card"]

#: BibTeX of the MSA2Net paper, cited by every model card.
MSA2NET_BIBTEX = """@inproceedings{kolahi2024msa2net,
  title     = {{MSA2Net}: Multi-scale Adaptive Attention-guided Network for Medical Image Segmentation},
  author    = {Kolahi, Sina Ghorbani and Chaharsooghi, Seyed Kamal and Khatibi, Toktam and Bozorgpour, Afshin and
               Azad, Reza and Heidari, Moein and Hacihaliloglu, Ilker and Merhof, Dorit},
  booktitle = {35th British Machine Vision Conference (BMVC)},
  year      = {2024},
  eprint    = {2407.21640},
  archivePrefix = {arXiv},
  primaryClass  = {eess.IV}
}"""

_TEMPLATE = "card_template.md"
_BASE_TAGS = ("medical-imaging", "segmentation", "semantic-segmentation", "msa2net", "maxvit", "pytorch")
#: Built-in records a data kind may fall back on (the phantom is never a kind of its own).
_KIND_RECORDS = ("synapse", "isic2018")
_POOLED_NAMES = {
    "dsc": "Dice",
    "iou": "IoU",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
}


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    """``card_template.md`` compiled once. Not :meth:`ModelCard.from_template`: it builds a bare
    ``jinja2.Template``, where block tags leave blank lines and a misspelt name renders as nothing."""
    import jinja2

    environment = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    text = resources.files("msa2net.reporting").joinpath(_TEMPLATE).read_text(encoding="utf-8")
    return environment.from_string(text)


# ---------------------------------------------------------------------------------------------- the data


def dataset_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The record of the training data: ``config["dataset"]``, else one inferred from the preset, run and evaluation
    kinds (a built-in kind's record, a folder's name); the class names are always the model's."""
    names = [str(c) for c in config.get("class_names") or []]
    record = config.get("dataset")
    if isinstance(record, Mapping) and record:
        return {**record, "class_names": list(record.get("class_names") or names)}
    prov = config.get("provenance") or {}
    run = prov.get("run_config") or {}
    if run.get("preset") == "demo":
        return dict(builtin_dataset("synapse_phantom", names))
    settings = (config.get("evaluation") or {}).get("settings") or {}
    data = run.get("data") or {}
    kind = settings.get("kind") or data.get("kind") or run.get("preset")
    if kind is None and prov.get("source") == "official" and tuple(names) == SYNAPSE_CLASS_NAMES:
        kind = "synapse"
    if kind in _KIND_RECORDS:
        return dict(builtin_dataset(kind, names))
    if kind == "folder":
        root = data.get("root") or settings.get("data")
        return {"kind": "folder", "name": Path(str(root)).name if root else "", "class_names": names}
    return {"class_names": names}


def _dataset_context(record: Mapping[str, Any]) -> dict[str, str]:
    """The template's ``dataset``: every key present, as text."""
    names = [str(c) for c in record.get("class_names") or []]
    name = str(record.get("name") or "")
    domain = record.get("domain")
    if not domain:
        domain = f"images like those of {name}, the training data above" if name else "not recorded"
    channels = record.get("channel_names") or []
    return {
        "name": name,
        "description": str(record.get("description") or "").strip().rstrip("."),
        "classes": ", ".join(f"{i} {n}" for i, n in enumerate(names) if i) if len(names) > 1 else "",
        "channels": ", ".join(str(c) for c in channels),
        "reference": str(record.get("reference") or ""),
        "citation": str(record.get("citation") or "").strip().rstrip("."),
        "domain": str(domain),
    }


def _evaluation_dataset(summary: Summary, record: Mapping[str, Any]) -> tuple[str, str]:
    """``(name, type)`` of the evaluation data for the ``model-index``: the training data's name when the kinds
    agree, a built-in dataset's by kind, else the kind and the folder name."""
    kind = str(summary.settings.get("kind") or record.get("kind") or "custom")
    if record.get("name") and record.get("kind") == kind:
        return str(record["name"]), kind
    if kind in _KIND_RECORDS:
        return str(BUILTIN_DATASETS[kind]["name"]), kind
    return f"{kind} ({Path(str(summary.settings.get('data', 'data'))).name})", kind


# ---------------------------------------------------------------------------------------------- figures


def _rounded(value: object, scale: float = 1.0) -> float | None:
    """``scale * value`` to two decimals for the ``model-index``; None when undefined."""
    figure = number(value)
    return None if math.isnan(figure) else round(scale * figure, 2)


def _metrics(summary: Summary) -> list[tuple[str, float | None, str]]:
    """``(type, value, name)`` of the headline figures (legacy + mm, or the pooled scores); None: undefined."""
    if isinstance(summary, PooledSummary):
        post = " after post-processing" if summary.postprocess else ""
        return [
            (key, _rounded(summary.pooled.get(key), 100.0), f"{label} (%, pixels pooled over the test set{post})")
            for key, label in _POOLED_NAMES.items()
        ]
    legacy, mm = summary.legacy, summary.mm
    rows = [
        ("dice", _rounded(legacy.mean_dice, 100.0), "Mean Dice (%, legacy protocol)"),
        ("hd95", _rounded(legacy.mean_hd95_voxels), "Mean HD95 (voxels, legacy protocol)"),
        ("hd95_mm", _rounded(mm.mean_hd95_mm), f"Mean HD95 (mm; {mm.n_failed} failures left out)"),
    ]
    nsd = summary.mean.get("nsd")
    if nsd is not None:
        tolerance = summary.settings.get("nsd_tolerance_mm")
        rows.append(("nsd", _rounded(nsd, 100.0), f"Mean NSD (%, {number(tolerance):g} mm)"))
    return rows


def _eval_results(summary: Summary, record: Mapping[str, Any]) -> list[EvalResult]:
    """The ``model-index`` entries of a summary; undefined figures are left out."""
    from huggingface_hub import EvalResult

    name, kind = _evaluation_dataset(summary, record)
    return [
        EvalResult(
            task_type="image-segmentation",
            task_name="Image Segmentation",
            dataset_type=kind,
            dataset_name=name,
            metric_type=key,
            metric_value=value,
            metric_name=label,
        )
        for key, value, label in _metrics(summary)
        if value is not None
    ]


def _evaluation_context(summary: Summary | None) -> dict[str, Any] | None:
    """The template's ``evaluation``: what was evaluated and its tables (markdown)."""
    if summary is None:
        return None
    settings = summary.settings
    context = {
        "data": settings.get("data"),
        "kind": settings.get("kind"),
        "tta": bool(settings.get("tta")),
        "cases": [],
        "pooled": isinstance(summary, PooledSummary),
        "n_images": 0,
        "postprocess": False,
    }
    if isinstance(summary, CaseSummary):
        context["cases"] = [str(c) for c in settings.get("cases") or []]
        context["tables"] = format_evaluation_tables(summary).rstrip("\n")
        return context
    context["n_images"] = int(summary.n_images)
    context["postprocess"] = summary.postprocess
    context["tables"] = markdown_table(
        ["Method", "DSC", "IoU", "Sensitivity", "Specificity", "Accuracy"],
        [[summary.title, *(cell(summary.pooled.get(k), 100.0) for k in _POOLED_NAMES)]],
    )
    return context


# ---------------------------------------------------------------------------------------------- provenance


def _checkpoint_context(config: Mapping[str, Any]) -> dict[str, Any]:
    """The template's ``ckpt``: where the weights come from and which ones they are."""
    prov = config.get("provenance") or {}
    file, sha = prov.get("source_checkpoint"), prov.get("source_sha256")
    epoch, best_epoch, best = prov.get("epoch"), prov.get("best_epoch"), prov.get("best_validation_mean_dice")
    epochs = prov.get("epochs")
    weights = ""
    if prov.get("source") == "training" and epoch is not None:
        if best is not None and best_epoch == epoch:
            weights = "best"
        elif best is not None and best_epoch is not None and best_epoch > 0:
            weights = "last_validated"
        else:
            weights = "last"
    versions = [f"published with msa2net {config.get('msa2net_version')}"]
    if prov.get("trained_with_msa2net"):
        versions.insert(0, f"trained with msa2net {prov['trained_with_msa2net']}")
    return {
        "source": prov.get("source") or "",
        "where": (f"`{file}`" + (f" (SHA-256 `{sha}`)" if sha else "")) if file else "",
        "variant_detected": prov.get("variant_detected"),
        "assumed": prov.get("assumed") or "",
        "weights": weights,
        "epoch": epoch,
        "of": f" of {epochs}" if epochs else "",
        "best": f"{number(best):.4f}" if best is not None else "",
        "best_epoch": best_epoch,
        "versions": ", ".join(versions).capitalize(),
    }


def _recipe_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(setting, value)`` rows of the run config (``Config.to_dict()``); none without one. The epochs are those
    the weights were trained for, of those the recipe planned."""
    prov = config.get("provenance") or {}
    run = prov.get("run_config") or {}
    if not run:
        return []
    model, data, train = run.get("model") or {}, run.get("data") or {}, run.get("train") or {}
    rows: list[tuple[str, str]] = []

    def add(label: str, value: object) -> None:
        if value not in (None, "", [], {}):
            rows.append((label, f"`{value}`" if not isinstance(value, str) or " " not in value else value))

    add("preset", run.get("preset"))
    add("data kind", data.get("kind"))
    add("data root", data.get("root"))
    if data.get("validation"):
        val = data["validation"]
        if val == "held_out":
            val = f"held_out ({number(data.get('val_fraction', 0.0)) * 100:g} % of the training cases)"
        add("validation", val)
    add("labels", data.get("labels"))
    add("augmentation", data.get("augment"))
    add("model", model.get("name"))
    add("input size", "x".join(str(s) for s in model.get("img_size") or []) or None)
    add("encoder initialisation", model.get("pretrained_encoder") or "random (no ImageNet weights)")
    add("started from", model.get("official_checkpoint"))
    planned, trained = train.get("epochs"), prov.get("epoch")
    add("epochs", f"{trained} of {planned} planned" if trained is not None and planned else planned)
    add("batch size", train.get("batch_size"))
    add("loss", train.get("loss"))
    optimizer = train.get("optimizer")
    if optimizer:
        extra = f", momentum {train.get('momentum')}" if optimizer == "sgd" else ""
        add(
            "optimizer",
            f"{optimizer}, lr {train.get('lr')} (scaling: {train.get('lr_scaling')}){extra}, "
            f"weight decay {train.get('weight_decay')}",
        )
    add("schedule", train.get("scheduler"))
    add("mixed precision", train.get("amp"))
    add("seed", train.get("seed"))
    return rows


def _preprocessing_context(prep: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The template's ``prep``: the intensity mapping's numbers, formatted."""
    if prep is None:
        return None
    window = prep.get("window") or (None, None)
    percentiles = prep.get("clip_percentiles") or (0.5, 99.5)
    return {
        "kind": str(prep.get("kind")),
        "window": ", ".join(f"{number(v):g}" for v in window) if None not in window else "?",
        "percentiles": "-".join(f"{number(v):g}" for v in percentiles),
        "mean": str(prep.get("mean")),
        "std": str(prep.get("std")),
    }


# ---------------------------------------------------------------------------------------------- the card


def model_card(config: Mapping[str, Any], *, repo_id: str | None = None) -> ModelCard:
    """The model card of a pretrained folder, from its ``config.json`` content alone.

    Metadata (licence, tags, ``model-index`` of the evaluation's means) and text (architecture, weights, data,
    recipe, evaluation tables, use, citations); ``repo_id`` goes into the usage examples.
    """
    from huggingface_hub import ModelCard, ModelCardData

    args = config["model_args"]
    names = [str(c) for c in config["class_names"]]
    model_name = str(config.get("model_name") or f"msa2net_{args['variant']}")
    record = dataset_of(config)
    evaluation = config.get("evaluation")
    summary = summary_from_json(evaluation) if evaluation else None
    results = _eval_results(summary, record) if summary is not None else []
    license = str(config.get("license") or "mit")
    card_data = ModelCardData(
        library_name="msa2net",
        license=license,
        tags=[*_BASE_TAGS, *(record.get("tags") or [])],
        pipeline_tag="image-segmentation",
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    params = int(config.get("num_parameters") or 0)
    height, width = args["img_size"]
    text = _template().render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        dataset=_dataset_context(record),
        class_names=names,
        foreground=names[1:],
        in_channels=args["in_channels"],
        height=height,
        width=width,
        variant=str(args["variant"]),
        encoder=args["encoder"],
        prep=_preprocessing_context(config.get("preprocessing")),
        parameters=f"{params / 1e6:.2f} M ({params:,})",
        ckpt=_checkpoint_context(config),
        recipe=_recipe_rows(config),
        evaluation=_evaluation_context(summary),
        exports=config.get("exports") or {},
        where=repo_id or "path/to/this-folder",
        license=license,
        bibtex=MSA2NET_BIBTEX,
    )
    return ModelCard(text)


def build_model_card(config: Mapping[str, Any], *, repo_id: str | None = None) -> str:
    """The text of :func:`model_card` (``README.md``), ending with a newline."""
    return str(model_card(config, repo_id=repo_id))
