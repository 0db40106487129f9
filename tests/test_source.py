"""The data seam: every dataset kind reaches the engine as a Source, with one normalisation and epoch-aware workers."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader

from msa2net.config import load_config
from msa2net.data import source as source_module
from msa2net.data.io import read_image
from msa2net.data.isic import IMAGE_DIR, prepare_isic2018
from msa2net.data.preprocessing import Preprocessing
from msa2net.data.registry import open_source, source_kinds
from msa2net.data.source import Case, EpochSeededDataset, Source, register_source
from msa2net.data.transforms import build_transform

# ---------------------------------------------------------------------------------------------- fixtures


def _folder(root: Path, channel: str = "T1") -> Path:
    """A 3-case NIfTI dataset folder with real geometry; ``channel`` picks the intensity mapping."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        label = np.zeros((4, 40, 36), np.uint8)
        label[:, 8 + i : 28, 6:22] = 1
        label[1:3, 28:36, 24:32] = 2
        image = (rng.normal(300, 40, label.shape) + 150.0 * label).astype(np.int16)
        for arr, path in (
            (image, root / "imagesTr" / f"c{i}_0000.nii.gz"),
            (label, root / "labelsTr" / f"c{i}.nii.gz"),
        ):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((0.9, 0.9, 3.0))
            img.SetOrigin((-5.0, 2.0, 10.0))
            sitk.WriteImage(img, str(path))
    spec = {"channel_names": {"0": channel}, "labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(scope="module")
def isic_prepared(data_isic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("isic_prepared")
    prepare_isic2018(data_isic_raw, out, size=(48, 64), progress=False)  # the phantom's own size: no resampling
    return out


# ---------------------------------------------------------------------------------------------- opening


def test_open_source_detects_each_kind_and_explains_failures(data_synapse_prepared, isic_prepared, tmp_path):
    folder = _folder(tmp_path / "ds")
    assert {"synapse", "isic2018", "folder"} <= set(source_kinds())
    for root, kind, classes, channels in (
        (data_synapse_prepared, "synapse", 9, 1),
        (isic_prepared, "isic2018", 2, 3),
        (folder, "folder", 3, 1),
    ):
        source = open_source(root)
        assert (source.kind, source.num_classes, source.in_channels) == (kind, classes, channels)
    assert open_source(isic_prepared).pooled and not open_source(folder).pooled
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no known dataset layout.*msa2net prepare"):
        open_source(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown data.kind 'nifti'"):
        open_source(folder, "nifti")
    with pytest.raises(ValueError, match="data.labels does not apply to folder data"):
        open_source(folder, None, {"labels": "btcv14"})
    with pytest.raises(ValueError, match="data.intensity must be one of strict, clip"):
        open_source(data_synapse_prepared, None, {"intensity": "loose"})
    assert open_source(data_synapse_prepared, None, {"labels": None}).labels == "synapse8"  # None: the default


# ---------------------------------------------------------------------------------------------- epochs


def _rng_probe(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A 'transform' that exposes the random stream it was given."""
    return torch.tensor(rng.random(2)), torch.from_numpy(np.ascontiguousarray(label))


def _draws(dataset: EpochSeededDataset, epochs: int) -> list[np.ndarray]:
    loader = DataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True)
    out = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)  # what training does before iterating the loader
        out.append(torch.cat([batch["image"] for batch in loader]).numpy())
    return out


@pytest.mark.parametrize("kind", ["folder", "synapse", "isic2018"])
def test_epoch_reaches_persistent_workers(kind, data_synapse_prepared, isic_prepared, tmp_path):
    root = {"folder": lambda: _folder(tmp_path / "ds"), "synapse": lambda: data_synapse_prepared}.get(
        kind, lambda: isic_prepared
    )()
    source = open_source(root)
    dataset = source.training_dataset(source.split("none").train, _rng_probe, seed=11)
    assert isinstance(dataset, EpochSeededDataset)
    epoch0, epoch1 = _draws(dataset, 2)
    n = len(dataset)
    expected = [np.stack([np.random.default_rng([11, e, i]).random(2) for i in range(n)]) for e in (0, 1)]
    np.testing.assert_array_equal(epoch0, expected[0])
    np.testing.assert_array_equal(epoch1, expected[1])  # fails if the workers kept epoch 0
    assert not np.array_equal(epoch0, epoch1)


# ---------------------------------------------------------------------------------------------- one normalisation


def _training_input(source: Source, ids: Sequence[str], index: int) -> np.ndarray:
    """Model input of training item ``index``, without augmentation or resizing, channels last."""
    dataset = source.training_dataset(ids, build_transform("none", None, source.preprocessing), seed=0)
    x = dataset[index]["image"].numpy()  # (C, H, W)
    return x.transpose(1, 2, 0)[..., 0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def _checkpoint_preprocessing(source: Source) -> Preprocessing:
    """What a checkpoint of this source stores, read back as prediction does."""
    return Preprocessing.from_dict(json.loads(json.dumps(source.preprocessing.to_dict())))


def test_training_normalisation_equals_prediction_normalisation_synapse(data_synapse_raw, data_synapse_prepared):
    source = open_source(data_synapse_prepared)
    prep = _checkpoint_preprocessing(source)
    raw, _ = read_image(data_synapse_raw / "RawData" / "Training" / "img" / "img0005.nii.gz")  # HU, (D, H, W)
    for z in (0, 3):
        np.testing.assert_allclose(_training_input(source, ["case0005"], z), prep(raw)[z], atol=1e-6)


def test_training_normalisation_equals_prediction_normalisation_isic(data_isic_raw, isic_prepared):
    source = open_source(isic_prepared)
    prep = _checkpoint_preprocessing(source)
    first = sorted((data_isic_raw / IMAGE_DIR).iterdir())[0]  # the first training image (sorted split)
    raw, _ = read_image(first)  # uint8 RGB, as predict reads it
    np.testing.assert_allclose(_training_input(source, ["train"], 0), prep(raw), atol=1e-6)


@pytest.mark.parametrize("channel", ["T1", "CT"])  # zscore (per-volume statistics) and the CT window
def test_training_normalisation_equals_prediction_normalisation_folder(channel, tmp_path):
    source = open_source(_folder(tmp_path / "ds", channel))
    prep = _checkpoint_preprocessing(source)
    assert prep.kind == ("zscore" if channel == "T1" else "ct_window")
    raw, _ = read_image(tmp_path / "ds" / "imagesTr" / "c1_0000.nii.gz")
    model_input = prep(raw)  # predict maps the whole volume, then slices
    for z in (1, 2):
        np.testing.assert_allclose(_training_input(source, ["c1"], z), model_input[z], atol=1e-6)


# ---------------------------------------------------------------------------------------------- a new kind


class _ToyDataset(EpochSeededDataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, seed: int) -> None:
        super().__init__(seed)
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image, label = self.transform(self.images[index], self.labels[index], self.rng(index))
        return {"image": image, "label": label, "name": str(index)}


class ToySource(Source):
    """Bright squares on dark noise, one 2-slice case per id, stored in one npz: a kind the engine has never seen."""

    kind = "toy"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        with np.load(self.root / "toy.npz") as data:
            self.images, self.labels = data["images"], data["labels"]  # (N, 2, H, W) in [0, 1] and ids
        self.class_names = ["background", "square"]
        self.in_channels = 1
        self.preprocessing = Preprocessing(kind="unit", in_channels=1)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "toy.npz").is_file()

    def train_ids(self) -> list[str]:
        return [f"t{i}" for i in range(len(self.images) - 1)]

    def test_ids(self) -> list[str]:
        return [f"t{len(self.images) - 1}"]

    def training_dataset(self, ids, transform, seed) -> _ToyDataset:
        idx = [int(i[1:]) for i in ids]
        return _ToyDataset(
            self.images[idx].reshape(-1, *self.images.shape[2:]), self.labels[idx].reshape(-1, *self.labels.shape[2:]),
            transform, seed,
        )  # fmt: skip

    def cases(self, ids, preprocessing=None) -> Iterator[Case]:
        for i in ids:
            k = int(i[1:])
            yield Case(i, self.images[k], self.labels[k].astype(np.int64), (2.0, 0.5, 0.5))


@pytest.fixture
def toy_kind(tmp_path):
    register_source(ToySource)
    rng = np.random.default_rng(0)
    labels = np.zeros((5, 2, 32, 32), np.int64)
    for i in range(5):
        labels[i, :, 6 + i : 20 + i, 8:22] = 1
    images = (0.2 + 0.05 * rng.standard_normal(labels.shape) + 0.6 * labels).astype(np.float32)
    root = tmp_path / "toy"
    root.mkdir()
    np.savez(root / "toy.npz", images=images, labels=labels)
    yield root
    source_module._REGISTRY.pop("toy")


@pytest.mark.slow
def test_a_new_kind_is_one_source_that_trains_and_evaluates(toy_kind, tmp_path):
    from msa2net.engine.evaluate import evaluate
    from msa2net.engine.train import train

    cfg = load_config(
        "folder",
        [
            f"data.root={toy_kind}",
            "data.kind=toy",
            f"out_dir={tmp_path / 'run'}",
            "data.augment=none",
            "data.num_workers=0",
            "data.val_fraction=0.25",
            "model.name=msa2net_test",
            "model.img_size=[32, 32]",
            "model.pretrained_encoder=null",
            "train.epochs=2",
            "train.batch_size=4",
            "train.eval_every=1",
            "train.device=cpu",
            "train.progress=false",
        ],
    )
    result = train(cfg)
    assert result["epochs_done"] == 2 and 0.0 <= result["best_mean_dice"] <= 1.0
    summary = evaluate(tmp_path / "run" / "best.pt", toy_kind, tmp_path / "eval", progress=False, overlays_per_case=0)
    assert summary["settings"]["kind"] == "toy" and summary["settings"]["cases"] == ["t4"]
    assert summary["class_names"] == ["background", "square"]
    rows = [r for r in summary["cases"] if r["case_id"] == "t4"]
    assert len(rows) == 1 and 0.0 <= rows[0]["dice"] <= 1.0
