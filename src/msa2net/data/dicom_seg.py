"""DICOM Segmentation objects of a label map predicted for a DICOM series, written with ``highdicom``.

One segment per non-empty class, with its name, SNOMED CT category and type codes (built in for the Synapse organs
and lesions; a user's table for other classes; generic "Tissue" codes otherwise), the overlay colours as recommended
display colours, and msa2net with its version and the model as the segmenting algorithm. The object references the
source series' instances, so PACS and viewers (3D Slicer, OHIF) place it on the scan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .._atomic import atomic_path

__all__ = ["SegmentCode", "code_key", "load_segment_codes", "series_files", "write_dicom_seg"]

#: A coded concept as ``(coding scheme designator, code value, code meaning)``.
SegmentCode = tuple[str, str, str]

_ANATOMY: SegmentCode = ("SCT", "91723000", "Anatomical Structure")
_TISSUE: SegmentCode = ("SCT", "85756007", "Tissue")
_ABNORMAL: SegmentCode = ("SCT", "49755003", "Morphologically Abnormal Structure")
#: ``class name (lower case) -> (category, type)`` for the classes of the built-in data (SNOMED CT).
BUILTIN_CODES: dict[str, tuple[SegmentCode, SegmentCode]] = {
    "spleen": (_ANATOMY, ("SCT", "78961009", "Spleen")),
    "right kidney": (_ANATOMY, ("SCT", "9846003", "Right kidney")),
    "left kidney": (_ANATOMY, ("SCT", "18639004", "Left kidney")),
    "gallbladder": (_ANATOMY, ("SCT", "28231008", "Gallbladder")),
    "liver": (_ANATOMY, ("SCT", "10200004", "Liver")),
    "stomach": (_ANATOMY, ("SCT", "69695003", "Stomach")),
    "aorta": (_ANATOMY, ("SCT", "15825003", "Aorta")),
    "pancreas": (_ANATOMY, ("SCT", "15776009", "Pancreas")),
    "brain": (_ANATOMY, ("SCT", "12738006", "Brain")),
    "lesion": (_ABNORMAL, ("SCT", "52988006", "Lesion")),
}
GENERIC_CODES: tuple[SegmentCode, SegmentCode] = (_TISSUE, _TISSUE)


def code_key(name: object) -> str:
    """The form in which class names and code-table entries are matched: lower case, underscores as spaces."""
    return " ".join(str(name).lower().replace("_", " ").split())


def load_segment_codes(path: str | os.PathLike[str]) -> dict[str, tuple[SegmentCode, SegmentCode]]:
    """A user's code table: a JSON object ``{class name: {"category": [scheme, value, meaning], "type": [scheme,
    value, meaning]}}``, e.g. ``{"tumour": {"category": ["SCT", "49755003", "Morphologically Abnormal Structure"],
    "type": ["SCT", "108369006", "Neoplasm"]}}``. Names are matched to classes by :func:`code_key`.

    Raises:
        ValueError: the file is not such a table (the message names the file and the entry).
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the segment code table {path}: {err}") from err
    table: dict[str, tuple[SegmentCode, SegmentCode]] = {}
    for name, entry in raw.items() if isinstance(raw, dict) else [(None, raw)]:
        try:
            pair = tuple(tuple(str(v) for v in entry[key]) for key in ("category", "type"))
            if any(len(code) != 3 for code in pair):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f'{path}: entry {name!r} must be {{"category": [scheme, value, meaning], "type": [scheme, value, '
                'meaning]}, e.g. {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", '
                '"10200004", "Liver"]}'
            ) from None
        table[code_key(name)] = pair  # type: ignore[assignment]
    return table


def series_files(folder: str | os.PathLike[str]) -> list[str]:
    """The files of the one DICOM series in ``folder``, in the order SimpleITK stacks them into a volume."""
    (series_id,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))


def write_dicom_seg(
    labels: np.ndarray,
    series_folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    colors: Sequence[Sequence[int]],
    algorithm: Mapping[str, str],
    codes: Mapping[str, tuple[SegmentCode, SegmentCode]] | None = None,
) -> list[str]:
    """Write ``labels`` (``(Z, Y, X)`` in the order of :func:`series_files`) as a binary DICOM SEG at ``path``
    (atomically); returns the names of the classes written as segments (the non-empty ones). Nothing is written
    when every class is empty (a SEG holds at least one segment).

    Args:
        colors: RGB colour by class id (background first); the segment's recommended display colour.
        algorithm: ``{"name", "version", "source"}`` of the segmenting algorithm (msa2net, its version, the model).
        codes: Category and type codes by lower-case class name, before :data:`BUILTIN_CODES` and the generic ones.

    Raises:
        ValueError: the labels do not have one slice per instance of the series, or the slices' size differs.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes as dicom_codes

    files = series_files(series_folder)
    sources = [pydicom.dcmread(name) for name in files]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if labels.shape != (len(sources), rows, cols):
        raise ValueError(
            f"labels of shape {labels.shape} do not fit the series in {series_folder} ({len(sources)} slices of "
            f"{rows}x{cols})"
        )
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm["name"],
        family=dicom_codes.cid7162.ArtificialIntelligence,
        version=algorithm["version"],
        source=algorithm.get("source"),
    )
    table = {**BUILTIN_CODES, **{code_key(k): v for k, v in (codes or {}).items()}}
    present = [i for i in range(1, len(class_names)) if np.any(labels == i)]
    descriptions = []
    for number, class_id in enumerate(present, start=1):
        name = str(class_names[class_id])
        category, kind = table.get(code_key(name), GENERIC_CODES)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=hd.sr.CodedConcept(category[1], category[0], category[2]),
                segmented_property_type=hd.sr.CodedConcept(kind[1], kind[0], kind[2]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
                display_color=hd.color.CIELabColor.from_rgb(*[int(c) for c in colors[class_id]]),
            )
        )
    if not present:  # a SEG holds at least one segment; an empty prediction has none to write
        return []
    masks = np.stack([labels == class_id for class_id in present], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="msa2net",
        manufacturer_model_name=algorithm.get("source") or "msa2net",
        software_versions=algorithm["version"],
        device_serial_number="none",
        series_description=f"msa2net segmentation ({algorithm.get('source') or 'model'})",
        omit_empty_frames=False,
    )
    # highdicom copies the source's Spacing Between Slices, which writers get wrong (GDCM writes 1 for slices saved
    # one by one) and readers such as dcmqi trust: the slice positions decide it
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    if len(sources) > 1:
        step = float(np.linalg.norm(positions[1] - positions[0]))
        seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = f"{step:.6g}"
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return [str(class_names[i]) for i in present]
