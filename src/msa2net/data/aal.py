"""Real data: the AAL atlas lobes on the Colin27 T1 MRI (Debian's ``mricron-data``), as a dataset folder.

``ch2.nii.gz`` (the T1), ``aal.nii.gz`` (116 regions on its grid) and ``aal.nii.txt`` (``index name code``; the
code's first digit is the lobe) become 9 classes, left and right merged. Slices are sagittal and the split is by
hemisphere at the MNI midline (LPS x > 0 is the left): the left side with the midline slice trains, cut into
:data:`DEFAULT_SLABS` slabs; the right hemisphere is the labelled test case. Cases are exact crops of ch2's grid in
axis code :data:`CASE_LAYOUT`, so predictions paste back onto the atlas by geometry. See README "Real data".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import Geometry, ImageReadError, read_image, write_image, write_text_atomic
from .orientation import axis_code, reorientation

__all__ = [
    "CASE_LAYOUT",
    "CLASS_NAMES",
    "DEFAULT_RAW_DIR",
    "DEFAULT_SLABS",
    "IMAGE_FILE",
    "INSTALL_HINT",
    "LABEL_FILE",
    "LOBES",
    "NAMES_FILE",
    "PACKAGE",
    "TEST_CASE",
    "Region",
    "find_raw_dir",
    "lobe_lookup",
    "prepare_aal",
    "read_regions",
]

#: Where Debian's ``mricron-data`` installs the templates.
DEFAULT_RAW_DIR = Path("/usr/share/mricron/templates")
#: The Debian package that holds the files.
PACKAGE = "mricron-data"
#: How to get the files.
INSTALL_HINT = f"apt-get install {PACKAGE}"
IMAGE_FILE = "ch2.nii.gz"
LABEL_FILE = "aal.nii.gz"
NAMES_FILE = "aal.nii.txt"
#: First digit of an AAL region code -> lobe class name (class ids follow this order, background 0).
LOBES: dict[int, str] = {
    2: "frontal",
    3: "insula",
    4: "limbic",
    5: "occipital",
    6: "parietal",
    7: "deep_grey",
    8: "temporal",
    9: "cerebellum",
}
#: Class names by id.
CLASS_NAMES: tuple[str, ...] = ("background", *LOBES.values())
#: Axis code of every written case: slices (first array axis) left -> right, rows superior -> inferior, columns
#: posterior -> anterior.
CASE_LAYOUT = "AIR"
#: Training side slabs written by default.
DEFAULT_SLABS = 4
#: The labelled test case: the right hemisphere.
TEST_CASE = "aal_right"
#: Prefix of every case id; files starting with it in the case folders belong to this task.
CASE_PREFIX = "aal_"
#: Largest share of the voxels of the regions named ``*_L`` / ``*_R`` that may lie across the midline before the files
#: are refused as mis-oriented. Measured on the installed files: 0.6 % (regions drawn up to the midline); a file
#: whose left-right axis is flipped would put about 99 % across.
HEMISPHERE_TOLERANCE = 0.05

_SPLIT_RULE = (
    "sagittal slices; the midline plane is x = 0 mm; slices centred at MNI x <= 0 (RAS: the left hemisphere, and the "
    "midline slice) are the training side, cut into contiguous slabs aal_left_1 (lateral) .. aal_left_N (medial); "
    "slices at MNI x > 0 (the right hemisphere) are the labelled test case aal_right; lobes are merged across left "
    "and right"
)
_CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


def find_raw_dir(raw_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the three source files (``raw_dir``, else the package's); FileNotFoundError names the fix."""
    folder = DEFAULT_RAW_DIR if raw_dir is None else Path(raw_dir)
    missing = [name for name in (IMAGE_FILE, LABEL_FILE, NAMES_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the AAL task needs {IMAGE_FILE}, {LABEL_FILE} and {NAMES_FILE} from Debian's {PACKAGE} package; "
            f"{', '.join(missing)} not found in {folder}. Install the package ({INSTALL_HINT}, as root; it puts them "
            f"in {DEFAULT_RAW_DIR}) or pass --raw DIR pointing at a folder that holds them"
        )
    return folder


@dataclass(frozen=True)
class Region:
    """One AAL region: label value ``index`` in ``aal.nii.gz``, ``name`` (``..._L`` / ``..._R`` for hemispheres) and
    the 4-digit ``code`` whose first digit is the lobe."""

    index: int
    name: str
    code: int

    @property
    def lobe(self) -> str:
        """The lobe class name (:data:`LOBES`)."""
        return LOBES[self.code // 1000]

    @property
    def side(self) -> str | None:
        """``"L"`` or ``"R"`` from the name's suffix; None for midline regions (the vermis)."""
        return self.name[-1] if self.name[-2:] in ("_L", "_R") else None


def read_regions(path: str | os.PathLike[str]) -> list[Region]:
    """Parse ``aal.nii.txt`` (one ``index name code`` line per region) into regions in file order."""
    path = Path(path)
    regions: list[Region] = []
    problems: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[0].isdigit() or not fields[2].isdigit():
            problems.append(f"line {number}: expected 'index name code' (two integers around a name), got {line!r}")
            continue
        region = Region(int(fields[0]), fields[1], int(fields[2]))
        if region.code // 1000 not in LOBES or not 1000 <= region.code <= 9999:
            problems.append(
                f"line {number}: code {region.code} of {region.name} is not a 4-digit AAL code with a lobe digit "
                f"{sorted(LOBES)}"
            )
            continue
        regions.append(region)
    indices = [r.index for r in regions]
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        problems.append(f"region indices {repeated} appear more than once")
    if not regions and not problems:
        problems.append("no regions listed")
    if problems:
        raise ValueError(f"{path} is not an AAL region table: " + "; ".join(problems))
    return regions


def lobe_lookup(regions: Sequence[Region]) -> np.ndarray:
    """Lookup table ``label value -> class id`` (index 0, the background, maps to 0; unlisted values to -1)."""
    table = np.full(max(r.index for r in regions) + 1, -1, dtype=np.int64)
    table[0] = 0
    class_of = {name: i for i, name in enumerate(CLASS_NAMES)}
    for region in regions:
        table[region.index] = class_of[region.lobe]
    return table


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _package_version() -> str | None:
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _read_source(raw: Path) -> tuple[np.ndarray, np.ndarray, Geometry, list[Region]]:
    """The T1 image, the atlas region ids, their common geometry and the region table, checked."""
    try:
        image, image_geometry = read_image(raw / IMAGE_FILE)
        atlas, atlas_geometry = read_image(raw / LABEL_FILE)
    except ImageReadError as err:
        raise ValueError(f"{err}; reinstall the package ({INSTALL_HINT} --reinstall) or fix --raw") from err
    if image.ndim != 3 or atlas.shape != image.shape:
        raise ValueError(
            f"{raw / IMAGE_FILE} has shape {image.shape} and {raw / LABEL_FILE} {atlas.shape} (Z, Y, X); expected two "
            "3D volumes on one grid (the Colin27 T1 and its AAL atlas)"
        )
    for name in ("spacing", "origin", "direction"):
        a, b = getattr(image_geometry, name), getattr(atlas_geometry, name)
        if not np.allclose(a, b, atol=1e-3):
            raise ValueError(
                f"{IMAGE_FILE} and {LABEL_FILE} differ in {name} ({a} vs {b}); the atlas must lie on the T1's grid"
            )
    if not np.issubdtype(atlas.dtype, np.integer):
        raise ValueError(f"{raw / LABEL_FILE} holds {atlas.dtype} values; expected integer region labels")
    regions = read_regions(raw / NAMES_FILE)
    table = lobe_lookup(regions)
    values = np.unique(atlas)
    unknown = [int(v) for v in values if v < 0 or v >= len(table) or table[v] < 0]
    if unknown:
        raise ValueError(
            f"{raw / LABEL_FILE} holds label values {unknown[:10]} that {raw / NAMES_FILE} does not list; the two "
            "files do not belong together"
        )
    return image, atlas, image_geometry, regions


def _hemisphere_agreement(atlas_sides: np.ndarray, left: np.ndarray, regions: Sequence[Region]) -> float:
    """Share of the voxels of ``*_L`` / ``*_R`` regions that lie on their own side of the midline."""
    lut = np.zeros(max(r.index for r in regions) + 1, dtype=np.int8)
    for region in regions:
        lut[region.index] = {"L": 1, "R": -1}.get(region.side or "", 0)
    side = lut[atlas_sides]
    agree = np.where(left, side == 1, side == -1)
    return float(agree.sum() / max(1, np.count_nonzero(side)))


def _world_x(geometry: Geometry, depth: int) -> np.ndarray:
    """LPS x (mm) of the centre of each slice along the first array axis (index axis z)."""
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return geometry.origin[0] + np.arange(depth) * geometry.spacing[2] * direction[0, 2]


def _crop(geometry: Geometry, start: int) -> Geometry:
    """The geometry of the sub-volume that starts at slice ``start`` of the first array axis."""
    direction = np.asarray(geometry.direction).reshape(3, 3)
    origin = np.asarray(geometry.origin) + start * geometry.spacing[2] * direction[:, 2]
    return Geometry(geometry.spacing, tuple(origin.tolist()), geometry.direction)


def _claim_folder(out: Path, overwrite: bool) -> dict[str, Any] | None:
    """Check that ``out`` is empty or an earlier AAL output; returns the earlier dataset.json (or None)."""
    previous = None
    spec_path = out / "dataset.json"
    if spec_path.is_file():
        try:
            previous = json.loads(spec_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if not isinstance(previous, dict) or previous.get("msa2net_prepare") != "aal":
            raise FileExistsError(
                f"{out} already holds a dataset.json that msa2net prepare aal did not write; choose an empty or new "
                "--out folder"
            )
    foreign = [
        str(p.relative_to(out))
        for sub in _CASE_FOLDERS
        if (out / sub).is_dir()
        for p in sorted((out / sub).iterdir())
        if not p.name.startswith((CASE_PREFIX, "."))
    ]
    if foreign:
        raise FileExistsError(
            f"{out} holds files that are not AAL cases ({', '.join(foreign[:5])}); choose an empty or new --out folder"
        )
    return None if overwrite else previous


def prepare_aal(
    out_dir: str | os.PathLike[str],
    raw_dir: str | os.PathLike[str] | None = None,
    slabs: int = DEFAULT_SLABS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the AAL lobe task as a dataset folder (``imagesTr/aal_left_<k>``, ``imagesTs/aal_right``, labels).

    ``out_dir`` must be empty or an earlier output; re-running with the same source files and ``slabs`` does nothing
    (``"skipped": True``) unless ``overwrite``. Files are written atomically, ``dataset.json`` (with the lobe
    mapping, split, source hashes and this summary) last. Returns the summary: cases, slices, voxels per class and
    side, the midline index and the hemisphere agreement.
    """

    raw = find_raw_dir(raw_dir)
    if int(slabs) < 2:
        raise ValueError(f"slabs must be at least 2 (one can then validate), got {slabs}")
    out = Path(out_dir)
    sources = {
        role: raw / name for role, name in (("image", IMAGE_FILE), ("labels", LABEL_FILE), ("names", NAMES_FILE))
    }
    digests = {role: _sha256(path) for role, path in sources.items()}
    previous = _claim_folder(out, overwrite) if out.exists() else None
    if previous is not None:
        recorded = previous.get("source", {})
        if recorded.get("sha256") == digests and previous.get("split", {}).get("slabs") == int(slabs):
            return {**previous["summary"], "out_dir": str(out), "skipped": True}

    image, atlas, geometry, regions = _read_source(raw)
    source_code = axis_code(geometry)
    move = reorientation(source_code, CASE_LAYOUT)
    image_c = np.ascontiguousarray(move.apply(image))
    atlas_c = np.ascontiguousarray(move.apply(atlas))
    lobes_c = lobe_lookup(regions)[atlas_c].astype(np.uint8)
    geometry_c = move.geometry(geometry, image.shape[::-1])
    depth = image_c.shape[0]
    x_mm = _world_x(geometry_c, depth)
    left = x_mm >= -1e-3 * geometry_c.spacing[2]
    n_left = int(left.sum())
    if not (0 < n_left < depth) or not np.all(left[:n_left]):
        raise ValueError(
            f"the grid of {raw / IMAGE_FILE} spans x = {x_mm.min():.1f} .. {x_mm.max():.1f} mm (LPS); expected a brain "
            "in MNI space that straddles the midline x = 0"
        )
    if n_left < int(slabs):
        raise ValueError(f"slabs={slabs} but the left side has only {n_left} slices; choose fewer slabs")
    agreement = _hemisphere_agreement(atlas_c, np.broadcast_to(left[:, None, None], atlas_c.shape), regions)
    if agreement < 1.0 - HEMISPHERE_TOLERANCE:
        raise ValueError(
            f"only {agreement:.1%} of the voxels of the *_L / *_R regions lie on their side of the midline; the "
            f"orientation in the header of {raw / LABEL_FILE} is not the one expected (MNI, x = 0 the midline)"
        )
    # index of each slice along ch2's own left-right index axis (for the documentation of the split)
    lr_axis = move.axes[2]
    lr_index = np.arange(depth)[::-1] if move.flips[2] else np.arange(depth)
    ranges = {
        f"aal_left_{k + 1}": (int(part[0]), int(part[-1]) + 1)
        for k, part in enumerate(np.array_split(np.arange(n_left), int(slabs)))
    }
    ranges[TEST_CASE] = (n_left, depth)

    if out.exists():
        for sub in _CASE_FOLDERS:
            for stale in (out / sub).glob(f"{CASE_PREFIX}*"):  # nothing when the folder is absent
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
        (out / "dataset.json").unlink(missing_ok=True)
    voxels: dict[str, dict[str, int]] = {"training": {}, "test": {}}
    slices: dict[str, int] = {}
    for case, (start, stop) in ranges.items():
        test = case == TEST_CASE
        images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        crop = _crop(geometry_c, start)
        write_image(image_c[start:stop], crop, out / images / f"{case}_0000.nii.gz")
        write_image(lobes_c[start:stop], crop, out / labels / f"{case}.nii.gz")
        slices[case] = stop - start
        counts = np.bincount(lobes_c[start:stop].ravel(), minlength=len(CLASS_NAMES))
        side = voxels["test" if test else "training"]
        for i, name in enumerate(CLASS_NAMES):
            side[name] = side.get(name, 0) + int(counts[i])
    voxels["total"] = {name: voxels["training"][name] + voxels["test"][name] for name in CLASS_NAMES}

    train_cases = [c for c in ranges if c != TEST_CASE]
    summary = {
        "out_dir": str(out),
        "train_cases": train_cases,
        "test_cases": [TEST_CASE],
        "slices": slices,
        "voxels": voxels,
        "midline_index": int(lr_index[n_left - 1]),
        "source_axis_code": source_code,
        "case_layout": CASE_LAYOUT,
        "hemisphere_agreement": agreement,
        "skipped": False,
    }
    spec = {
        "name": "AAL lobes on the Colin27 T1 MRI",
        "description": (
            "Colin27 (ch2) T1 MRI of one subject with the AAL atlas regions merged into 8 lobes, split by hemisphere "
            "on sagittal slices; written by msa2net prepare aal"
        ),
        "channel_names": {"0": "T1"},
        "labels": {name: i for i, name in enumerate(CLASS_NAMES)},
        "numTraining": len(train_cases),
        "numTest": 1,
        "file_ending": ".nii.gz",
        "lobe_mapping": {
            "rule": "class of an AAL region = the first digit of its code in aal.nii.txt; left and right merged",
            "code_digit_to_class": {str(d): {"label": i + 1, "name": n} for i, (d, n) in enumerate(LOBES.items())},
        },
        "split": {
            "rule": _SPLIT_RULE,
            "slabs": int(slabs),
            "case_layout": CASE_LAYOUT,
            "source_axis_code": source_code,
            "source_lr_axis": "xyz"[lr_axis],
            "cases": {
                case: {
                    "source_lr_index": sorted((int(lr_index[start]), int(lr_index[stop - 1]))),
                    "x_mm": [float(x_mm[start]), float(x_mm[stop - 1])],
                }
                for case, (start, stop) in ranges.items()
            },
        },
        "source": {
            "package": PACKAGE,
            "package_version": _package_version(),
            "files": {role: str(path) for role, path in sources.items()},
            "sha256": digests,
        },
        "summary": {k: v for k, v in summary.items() if k not in ("out_dir", "skipped")},
        "msa2net_prepare": "aal",
    }
    write_text_atomic(out / "dataset.json", json.dumps(spec, indent=2) + "\n")
    return summary
