"""The dataset record that sources supply, training stores in checkpoints and publish copies into config.json, for
the model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msa2net.config import load_config
from msa2net.constants import SYNAPSE_CLASS_NAMES
from msa2net.data.folder import FolderSource
from msa2net.data.isic import ISICSource
from msa2net.data.synapse import SynapseSource
from msa2net.engine.checkpoint import load_checkpoint
from msa2net.engine.publish import publish
from msa2net.engine.train import build_training_data, train

LIVER = {
    "name": "Liver tumours of the toy hospital",
    "description": "Three T1 MR volumes with the liver and its tumours outlined by one reader.",
    "reference": "https://example.org/toy-liver",
}


def _mr_folder(root: Path, **extra: Any) -> Path:
    """A 3-case T1 MR dataset folder (robust min-max preprocessing) whose dataset.json carries ``extra``."""
    import SimpleITK as sitk

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        label = np.zeros((4, 48, 40), np.uint8)
        label[:, 10 + i : 30, 8:24] = 1
        label[1:3, 30:40, 26:36] = 2
        image = (rng.normal(100, 20, label.shape) + 300.0 * label).astype(np.int16)
        for arr, path in (
            (image, root / "imagesTr" / f"c{i}_0000.nii.gz"),
            (label, root / "labelsTr" / f"c{i}.nii.gz"),
        ):
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    spec = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "file_ending": ".nii.gz",
        **extra,
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


# ---------------------------------------------------------------------------------------------- records


def test_sources_supply_their_dataset_records(tmp_path: Path) -> None:
    named = FolderSource(_mr_folder(tmp_path / "named", **LIVER))
    assert named.dataset_record() == {
        "kind": "folder",
        "name": LIVER["name"],
        "class_names": ["background", "liver", "tumour"],
        "channel_names": ["T1"],
        "description": LIVER["description"],
        "reference": LIVER["reference"],
    }
    plain = FolderSource(_mr_folder(tmp_path / "ToyLiver", name=7, description="  "))  # not text: ignored
    assert plain.dataset_record() == {
        "kind": "folder",
        "name": "ToyLiver",  # the folder's name
        "class_names": ["background", "liver", "tumour"],
        "channel_names": ["T1"],
    }
    synapse = SynapseSource(tmp_path).dataset_record()
    assert synapse["name"] == "Synapse multi-organ abdominal CT" and "BTCV" in synapse["description"]
    assert synapse["class_names"] == list(SYNAPSE_CLASS_NAMES) and synapse["channel_names"] == ["CT"]
    assert synapse["reference"].startswith("https://") and "ct" in synapse["tags"]
    isic = ISICSource(tmp_path).dataset_record()
    assert isic["kind"] == "isic2018" and "Dermoscopic" in isic["description"]
    assert isic["class_names"] == ["background", "lesion"] and isic["channel_names"] == ["R", "G", "B"]
    synapse["tags"].append("changed")  # a copy: the next record is unchanged
    assert "changed" not in SynapseSource(tmp_path).dataset_record()["tags"]
    json.dumps([named.dataset_record(), synapse, isic])  # JSON-able, for checkpoints and config.json


def test_the_demo_run_records_the_phantom_not_synapse(data_synapse_prepared: Path, tmp_path: Path) -> None:
    cfg = load_config("demo", [f"data.root={data_synapse_prepared}", f"out_dir={tmp_path / 'run'}"])
    record = build_training_data(cfg).dataset_record
    assert record["name"] == "the msa2net CT phantom" and "no real patients" in record["description"]
    cfg = load_config("synapse", [f"data.root={data_synapse_prepared}", f"out_dir={tmp_path / 'run'}"])
    assert build_training_data(cfg).dataset_record["name"] == "Synapse multi-organ abdominal CT"


def test_train_stores_the_record_and_publish_copies_it(tmp_path: Path) -> None:
    root = _mr_folder(tmp_path / "liver", **LIVER)
    overrides = [
        "model.name=msa2net_test",
        "model.img_size=[64, 64]",
        "model.pretrained_encoder=null",
        "train.batch_size=4",
        "train.epochs=1",
        "train.progress=false",
        "train.device=cpu",
        "data.num_workers=0",
        "data.validation=none",
        f"data.root={root}",
        f"out_dir={tmp_path / 'run'}",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("folder", overrides))
    finally:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["dataset"] == FolderSource(root).dataset_record()
    folder = publish(tmp_path / "run", tmp_path / "published").folder
    config = json.loads((folder / "config.json").read_text())
    assert config["dataset"] == ckpt["dataset"]
