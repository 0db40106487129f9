"""Facts about the public datasets msa2net knows: class names and what a model card says about each dataset.

A leaf module (it imports nothing of msa2net), so that every floor can read it: the data sources return these
records from :meth:`msa2net.data.source.Source.dataset_record`, training stores the record in checkpoints, and the
model card falls back on it (by data kind) for models published before checkpoints carried a record.

A dataset record is a small JSON-able dict (:class:`DatasetRecord`); every key is optional to its readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict, get_args

__all__ = [
    "BUILTIN_DATASETS",
    "EMPTY_POLICIES",
    "SYNAPSE_CLASS_NAMES",
    "VALIDATION_MODES",
    "DatasetRecord",
    "ValidationMode",
    "builtin_dataset",
]

#: ``data.validation``: held-out training cases, the test cases (the authors' practice), or none.
ValidationMode = Literal["held_out", "test", "none"]
VALIDATION_MODES: tuple[str, ...] = get_args(ValidationMode)
#: HD95-in-mm policies for an empty prediction or ground truth (``evaluate --empty``; a number of mm also goes).
EMPTY_POLICIES: tuple[str, ...] = ("nan", "legacy", "diagonal")
#: What ``predict`` can write per input (``--output-type``): the label mask, class probabilities, a DICOM SEG.
OUTPUT_TYPES: tuple[str, ...] = ("nifti", "probabilities", "dicom-seg")
#: Inference runtimes (``--backend``) and precisions (``--precision``); see :mod:`msa2net.engine.backends`.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
#: Graph formats ``export`` writes (``--formats``; the folder's config.json, weights and card are always written).
EXPORT_FORMATS: tuple[str, ...] = ("torchscript", "onnx")
#: The device names msa2net takes (``--device``, ``train.device``), in words.
DEVICE_TEXT = "auto, cpu, cuda, cuda:N (N a GPU index) or mps"

#: Class names by Synapse class id (the paper's table columns are classes 1..8 in this order).
SYNAPSE_CLASS_NAMES: tuple[str, ...] = (
    "background", "spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas",
)  # fmt: skip


class DatasetRecord(TypedDict, total=False):
    """What a model card says about the data a model was trained on.

    Attributes:
        kind: The data kind (``synapse``, ``isic2018``, ``folder``, or a registered one).
        name: Short name, used in the card's title and its ``model-index``.
        description: A sentence or two on what the data are.
        domain: The images the model is meant for (the card's intended use).
        reference: Where the data can be found (a URL).
        citation: How to cite the data.
        tags: Hub tags of the data (modality, anatomy).
        class_names: Class names, background first.
        channel_names: Image channel names, in channel order.
    """

    kind: str
    name: str
    description: str
    domain: str
    reference: str
    citation: str
    tags: list[str]
    class_names: list[str]
    channel_names: list[str]


#: Records of the datasets msa2net prepares itself, by key (a data kind, or ``synapse_phantom`` for the demo's data).
BUILTIN_DATASETS: dict[str, DatasetRecord] = {
    "synapse": {
        "kind": "synapse",
        "name": "Synapse multi-organ abdominal CT",
        "description": (
            "Abdominal CT scans of the MICCAI 2015 Multi-Atlas Abdomen Labeling challenge (BTCV) in the TransUNet "
            "split (18 training and 12 test scans), 8 organs labelled, cut into axial slices."
        ),
        "domain": "axial slices of contrast-enhanced abdominal CT of adults, like the BTCV scans",
        "reference": "https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
        "citation": (
            "Landman et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault - Workshop and Challenge, "
            "doi:10.7303/syn3193805"
        ),
        "tags": ["ct", "abdomen", "multi-organ", "synapse", "btcv"],
        "class_names": list(SYNAPSE_CLASS_NAMES),
        "channel_names": ["CT"],
    },
    "isic2018": {
        "kind": "isic2018",
        "name": "ISIC 2018 Task 1 (lesion boundary segmentation)",
        "description": (
            "Dermoscopic images of skin lesions from the ISIC 2018 challenge, Task 1, each with one binary lesion mask."
        ),
        "domain": "dermoscopic images of skin lesions, like the ISIC 2018 archive images",
        "reference": "https://challenge.isic-archive.com/data/#2018",
        "citation": (
            "Codella et al., Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the "
            "International Skin Imaging Collaboration (ISIC), arXiv:1902.03368; Tschandl et al., The HAM10000 "
            "dataset, Scientific Data 5, 180161 (2018)"
        ),
        "tags": ["dermoscopy", "skin-lesion", "isic-2018"],
        "class_names": ["background", "lesion"],
        "channel_names": ["R", "G", "B"],
    },
    "synapse_phantom": {
        "kind": "synapse",
        "name": "the msa2net CT phantom",
        "description": (
            "Synthetic abdominal CT volumes generated by msa2net (no real patients) in the BTCV layout and prepared "
            "exactly as the Synapse data; a demonstration model only."
        ),
        "domain": "none: the model was trained on synthetic phantoms and is a demonstration only",
        "tags": ["ct", "synthetic"],
        "class_names": list(SYNAPSE_CLASS_NAMES),
        "channel_names": ["CT"],
    },
}


def builtin_dataset(
    key: str, class_names: Sequence[str] | None = None, channel_names: Sequence[str] | None = None
) -> DatasetRecord:
    """A copy of :data:`BUILTIN_DATASETS` ``[key]``, with the class and channel names actually used when given.

    Raises:
        KeyError: ``key`` is not a built-in dataset.
    """
    base = BUILTIN_DATASETS[key]
    record: DatasetRecord = {**base}  # type: ignore[typeddict-item]
    # fresh lists: a caller editing its record must not change the built-in one
    record["tags"] = list(base.get("tags", []))
    record["class_names"] = [str(c) for c in (class_names if class_names is not None else base["class_names"])]
    record["channel_names"] = [str(c) for c in (channel_names if channel_names is not None else base["channel_names"])]
    return record
