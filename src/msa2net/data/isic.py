"""ISIC 2018 task 1 (skin lesion segmentation, binary): preparation and dataset (protocol: ``PROTOCOLS.md``).

Image/mask pairs sorted by name are split in order (1815/259/520 of 2594, the same fractions otherwise), resized
with PIL's bilinear filter (masks as floats, thresholded at 0.5) into ``{train,val,test}.npz`` (images uint8
``(N, H, W, 3)``, masks 0/1, names) and ``split.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from msa2net._progress import progress_enabled
from msa2net.constants import DatasetRecord, builtin_dataset
from msa2net.data.io import atomic_path, read_image, write_text_atomic
from msa2net.data.preprocessing import ISIC_PREPROCESSING, Preprocessing
from msa2net.data.source import Case, EpochSeededDataset, Source, Split, register_source

__all__ = [
    "IMAGE_DIR",
    "ISIC2018_COUNTS",
    "MASK_DIR",
    "SPLITS",
    "ISICDataset",
    "ISICSource",
    "isic_split_counts",
    "prepare_isic2018",
]

#: Raw image folder name.
IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
#: Raw mask folder name.
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"
#: Split names, in file order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: (train, val, test) counts of the full 2594-image training release.
ISIC2018_COUNTS: tuple[int, int, int] = (1815, 259, 520)

_MASK_SUFFIX = "_segmentation.png"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SPLIT_NOTE = (
    "Split by position after sorting the image ids by name: the first n_train are train, the next n_val "
    "validation, the rest test (1815/259/520 for the full 2594 images; the same fractions otherwise)."
)


def isic_split_counts(n: int) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` in the 1815/259/520 fractions of 2594, each at least 1 (taken from the largest)."""
    if n < 3:
        raise ValueError(f"need at least 3 image/mask pairs to form train, val and test splits, got {n}")
    total = sum(ISIC2018_COUNTS)
    counts = [round(n * ISIC2018_COUNTS[0] / total), round(n * ISIC2018_COUNTS[1] / total)]
    counts.append(n - sum(counts))
    for i in range(3):
        while counts[i] < 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts[0], counts[1], counts[2]


def _find_raw(raw_dir: Path) -> tuple[Path, Path]:
    for base in (raw_dir, *(p for p in sorted(raw_dir.glob("*")) if p.is_dir())):
        if (base / IMAGE_DIR).is_dir() and (base / MASK_DIR).is_dir():
            return base / IMAGE_DIR, base / MASK_DIR
    raise FileNotFoundError(
        f"ISIC 2018 folders not found under {raw_dir}: expected {raw_dir / IMAGE_DIR} and {raw_dir / MASK_DIR}; "
        f"unzip ISIC2018_Task1-2_Training_Input.zip and ISIC2018_Task1_Training_GroundTruth.zip into one folder "
        f"and pass that folder"
    )


def _pairs(image_dir: Path, mask_dir: Path) -> list[tuple[str, Path, Path]]:
    images = {
        p.stem: p
        for p in image_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
    }
    masks = {
        p.name[: -len(_MASK_SUFFIX)]: p
        for p in mask_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_MASK_SUFFIX)
    }
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask in {mask_dir}: {', '.join(no_mask[:10])}")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image in {image_dir}: {', '.join(no_image[:10])}")
        raise ValueError(
            "unpaired ISIC files: " + "; ".join(parts) + f". Each ISIC_XXXXXXX.jpg needs ISIC_XXXXXXX{_MASK_SUFFIX}: "
            "restore the missing files or remove the unpaired ones"
        )
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in {image_dir}")
    return [(name, images[name], masks[name]) for name in sorted(images)]


def _load_pair(image_path: Path, mask_path: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resized image ``(H, W, 3)`` uint8 and mask ``(H, W)`` uint8 0/1."""
    from PIL import Image

    height, width = size
    image, _ = read_image(image_path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{image_path}: expected an 8-bit RGB image, found shape {image.shape} {image.dtype}")
    mask, _ = read_image(mask_path)
    if mask.ndim == 3:
        raise ValueError(f"{mask_path}: expected a single-channel mask, found shape {mask.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"{mask_path}: mask shape {mask.shape} differs from image shape {image.shape[:2]} of {image_path.name}; "
            f"replace the mismatched file"
        )
    # 0/255 masks (the release) and 0/1 masks are both accepted.
    binary = mask > (127 if mask.max() > 1 else 0)
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    soft = Image.fromarray(binary.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8), (np.asarray(soft) >= 0.5).astype(np.uint8)


def prepare_isic2018(
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    size: tuple[int, int] = (224, 224),
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Resize, binarise and split the ISIC 2018 task 1 training release (see the module docstring).

    Complete outputs of the same size and files are kept (``"skipped": True``) unless ``overwrite``; others are an
    error. Returns ``{"out_dir", "skipped", "size", "counts"}``.
    """
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width), got {size}")
    out = Path(out_dir)
    pairs = _pairs(*_find_raw(Path(raw_dir)))
    names = [name for name, _, _ in pairs]
    counts = isic_split_counts(len(pairs))
    bounds = np.cumsum((0, *counts))
    split_names = {split: names[bounds[i] : bounds[i + 1]] for i, split in enumerate(SPLITS)}
    outputs = [out / f"{split}.npz" for split in SPLITS] + [out / "split.json"]
    summary = {"out_dir": str(out), "size": [height, width], "counts": dict(zip(SPLITS, counts))}

    if not overwrite and all(p.is_file() for p in outputs):
        recorded = json.loads((out / "split.json").read_text(encoding="utf-8"))
        if recorded.get("size") != [height, width] or any(recorded.get(s) != split_names[s] for s in SPLITS):
            raise ValueError(
                f"{out} already holds an ISIC split made with size {recorded.get('size')} from another set of files; "
                f"pass overwrite=True to redo it with size {[height, width]} from {raw_dir}, or choose another out_dir"
            )
        return {**summary, "skipped": True}

    images = np.empty((len(pairs), height, width, 3), dtype=np.uint8)
    masks = np.empty((len(pairs), height, width), dtype=np.uint8)
    for i, (_, image_path, mask_path) in enumerate(
        tqdm(pairs, desc="prepare isic2018", disable=not progress_enabled(progress))
    ):
        images[i], masks[i] = _load_pair(image_path, mask_path, (height, width))
    out.mkdir(parents=True, exist_ok=True)
    # split.json goes last: it marks a complete preparation.
    for i, split in enumerate(SPLITS):
        part = slice(bounds[i], bounds[i + 1])
        with atomic_path(out / f"{split}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, images=images[part], masks=masks[part], names=np.asarray(split_names[split], dtype=str))
    record = {"note": _SPLIT_NOTE, "size": [height, width], "counts": summary["counts"], **split_names}
    write_text_atomic(out / "split.json", json.dumps(record, indent=1) + "\n")
    return {**summary, "skipped": False}


class ISICDataset(EpochSeededDataset):
    """One split of a prepared ISIC 2018 folder, held in memory; items ``{"image", "label", "name"}``.

    ``transform(image, label, rng)`` gets the unit image (float32 ``(H, W, 3)``) and int64 0/1 label when given.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        path = self.root / f"{split}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run msa2net prepare isic2018 with this folder as output")
        with np.load(path) as data:
            missing = {"images", "masks", "names"} - set(data.files)
            if missing:
                raise ValueError(f"{path} lacks arrays {sorted(missing)}; re-run msa2net prepare isic2018")
            self.images, self.masks = data["images"], data["masks"]
            self.names = [str(n) for n in data["names"]]
        n = len(self.names)
        if self.images.shape[:1] != (n,) or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(f"{path}: images have shape {self.images.shape}, expected ({n}, H, W, 3)")
        if self.masks.shape != self.images.shape[:3]:
            raise ValueError(f"{path}: masks have shape {self.masks.shape}, expected {self.images.shape[:3]}")
        if self.images.dtype != np.uint8:
            raise ValueError(f"{path}: images are {self.images.dtype}, expected uint8; re-run msa2net prepare isic2018")
        if self.masks.size and int(self.masks.max()) > 1:
            raise ValueError(
                f"{path}: masks hold values up to {int(self.masks.max())}, expected 0/1; "
                f"re-run msa2net prepare isic2018"
            )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = ISIC_PREPROCESSING.to_unit(self.images[index])
        label = self.masks[index].astype(np.int64)
        if self.transform is not None:
            image_t, label_t = self.transform(image, label, self.rng(index))
        else:
            image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)
            label_t = torch.from_numpy(label)
        return {"image": image_t, "label": label_t, "name": self.names[index]}


@register_source
class ISICSource(Source):
    """A prepared ISIC 2018 folder (:func:`prepare_isic2018` output) as a :class:`Source`.

    The case ids are the split names: ``train`` trains, ``val`` validates (``test`` with ``data.validation=test``)
    and ``test`` is evaluated. Each split is one :class:`Case` whose slices are the split's images, because the
    protocol pools pixels over the whole split (:attr:`pooled`). Checkpoints store :data:`ISIC_PREPROCESSING`.
    """

    kind = "isic2018"
    pooled = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.class_names = ["background", "lesion"]
        self.in_channels = 3
        self.preprocessing = ISIC_PREPROCESSING

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "split.json").is_file() and any((root / f"{s}.npz").is_file() for s in SPLITS)

    def dataset_record(self) -> DatasetRecord:
        """The ISIC 2018 record of :data:`msa2net.constants.BUILTIN_DATASETS` (name, description, reference, ...)."""
        return builtin_dataset("isic2018", self.class_names)

    def train_ids(self) -> list[str]:
        return ["train"]

    def test_ids(self) -> list[str]:
        return ["test"]

    def split(
        self,
        validation: str = "held_out",
        *,
        val_fraction: float = 0.2,
        val_cases: Sequence[str] | None = None,
        train_cases: Sequence[str] | None = None,
        seed: int = 0,
    ) -> Split:
        if val_cases or train_cases:
            raise ValueError(
                "data.val_cases / data.train_cases do not apply to ISIC 2018: its train/val/test splits are fixed by "
                "msa2net prepare isic2018"
            )
        if validation == "held_out":
            return Split(["train"], ["val"])
        return super().split(validation)

    def training_dataset(
        self, ids: Sequence[str], transform: Callable[..., tuple[torch.Tensor, torch.Tensor]], seed: int
    ) -> ISICDataset:
        if list(ids) != ["train"]:
            raise ValueError(f"ISIC 2018 trains on the 'train' split only, got {list(ids)}")
        return ISICDataset(self.root, "train", transform=transform, seed=seed)

    def cases(self, ids: Sequence[str], preprocessing: Preprocessing | None = None) -> Iterator[Case]:
        prep = preprocessing or self.preprocessing
        for split in ids:
            data = ISICDataset(self.root, split)
            yield Case(f"isic_{split}", prep.to_unit(data.images), data.masks.astype(np.int64))
