"""The model card (msa2net.reporting.card): what it says about the data (the dataset record that sources supply,
training stores and publish copies), the epochs trained, the preprocessing, the order of its sections and how to
install msa2net; and the floors the card code keeps (models and reporting never import what sits above them)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from reference import write_liver_folder

import msa2net
from msa2net import _hooks
from msa2net.config import load_config
from msa2net.constants import SYNAPSE_CLASS_NAMES
from msa2net.data.folder import FolderSource
from msa2net.data.isic import ISICSource
from msa2net.data.preprocessing import CT_PREPROCESSING, Preprocessing
from msa2net.data.synapse import SynapseSource
from msa2net.engine.checkpoint import load_checkpoint
from msa2net.engine.publish import publish
from msa2net.engine.train import build_training_data, train
from msa2net.models import PretrainedError
from msa2net.models.pretrained import build_pretrained_config, save_pretrained
from msa2net.reporting.card import build_model_card, dataset_of

SRC = Path(__file__).resolve().parents[1] / "src" / "msa2net"
LIVER = {
    "name": "Liver tumours of the toy hospital",
    "description": "Three T1 MR volumes with the liver and its tumours outlined by one reader.",
    "reference": "https://example.org/toy-liver",
}


def _front_matter(card: str) -> dict[str, Any]:
    return yaml.safe_load(card.split("---\n", 2)[1])


def _sections(card: str) -> list[str]:
    return [line[3:] for line in card.splitlines() if line.startswith("## ")]


def _folder_config(epoch: int = 20, epochs: int = 120, **config: Any) -> dict[str, Any]:
    """config.json of a 3-class model trained ``epoch`` of ``epochs`` epochs on a dataset folder (no validation)."""
    model = msa2net.create_model("msa2net_test", num_classes=3, img_size=64)
    run = load_config("folder", ["model.name=msa2net_test", f"train.epochs={epochs}", "data.root=/data/ToyLiver"])
    provenance = {
        "source": "training",
        "selection": "last",
        "epoch": epoch,
        "epochs": epochs,
        "best_epoch": None,
        "best_validation_mean_dice": None,
        "run_config": run.to_dict(),
    }
    return build_pretrained_config(
        model,
        model_name="msa2net_test",
        preprocessing=Preprocessing(kind="zscore").to_dict(),
        class_names=["background", "liver", "tumour"],
        provenance=provenance,
        **config,
    )


# ---------------------------------------------------------------------------------------------- records


def test_sources_supply_their_dataset_records(tmp_path: Path) -> None:
    named = FolderSource(write_liver_folder(tmp_path / "named", "T1", 100.0, 300.0, **LIVER))
    assert named.dataset_record() == {
        "kind": "folder",
        "name": LIVER["name"],
        "class_names": ["background", "liver", "tumour"],
        "channel_names": ["T1"],
        "description": LIVER["description"],
        "reference": LIVER["reference"],
    }
    plain = FolderSource(
        write_liver_folder(tmp_path / "ToyLiver", "T1", 100.0, 300.0, name=7, description="  ")
    )  # not text: ignored
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


def test_train_stores_the_record_and_publish_puts_it_on_the_card(tmp_path: Path) -> None:
    root = write_liver_folder(tmp_path / "liver", "T1", 100.0, 300.0, **LIVER)
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
    train(load_config("folder", overrides))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["dataset"] == FolderSource(root).dataset_record()
    folder = publish(tmp_path / "run", tmp_path / "published").folder
    config = json.loads((folder / "config.json").read_text())
    assert config["dataset"] == ckpt["dataset"]
    card = (folder / "README.md").read_text()
    assert f"# MSA2Net `msa2net_test` on {LIVER['name']}\n" in card
    assert LIVER["description"] in card and LIVER["reference"] in card
    assert "Classes: 1 liver, 2 tumour." in card and "Image channels: T1." in card
    assert "| epochs | 1 of 1 planned |" in card
    assert "robust per-case min-max" in card and "zscore" not in card
    assert card == build_model_card(config)  # the card is config.json's alone


# ---------------------------------------------------------------------------------------------- card text


def test_card_says_what_the_model_is_for() -> None:
    card = build_model_card(_folder_config(dataset={"kind": "folder", **LIVER, "channel_names": ["T1"]}))
    title = next(line for line in card.splitlines() if line.startswith("# "))
    assert title == f"# MSA2Net `msa2net_test` on {LIVER['name']}"
    assert f"Data: **{LIVER['name']}**. {LIVER['description']}" in card
    assert "Classes: 1 liver, 2 tumour." in card  # the model's classes when the record names none
    assert f"Trained data domain: images like those of {LIVER['name']}, the training data above." in card
    assert "dataset folder" not in card


def test_card_shows_the_epochs_trained_of_those_planned() -> None:
    card = build_model_card(_folder_config(epoch=20, epochs=120))
    assert "| epochs | 20 of 120 planned |" in card and "`120`" not in card
    assert "The weights after epoch 20 of 120 (the last saved; the run had no validation)." in card


def test_card_names_the_preprocessing_as_the_readme_does() -> None:
    card = build_model_card(_folder_config())
    assert (
        "preprocessing: robust per-case min-max (each channel clipped to its 0.5-99.5 percentiles over the case, then "
        "mapped to [0, 1]), then (x - mean) / std with mean [0.5], std [0.5]"
    ) in card
    model = msa2net.create_model("msa2net_test", num_classes=9, img_size=64)
    ct = build_model_card(build_pretrained_config(model, preprocessing=CT_PREPROCESSING.to_dict()))
    assert "preprocessing: CT window [-125, 275] HU mapped to [0, 1]" in ct


def test_limits_come_after_the_data_and_the_evaluation_they_refer_to() -> None:
    sections = _sections(build_model_card(_folder_config()))
    assert sections == [
        "Model",
        "Checkpoint",
        "Training data and recipe",
        "Evaluation",
        "Intended use and limitations",
        "How to use",
        "Licence",
        "Citation",
    ]


def test_card_says_how_to_install_from_the_repository() -> None:
    card = build_model_card(_folder_config(), repo_id="someone/toy-liver")
    assert "msa2net is not on the Python package index (PyPI) yet: install it from its source repository" in card
    assert "`pip install msa2net` installs it" in card  # the index name, for when it is released
    usage = card.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert usage[0].startswith("pip install ./msa2net ") and "once released: pip install msa2net" in usage[0]
    assert usage[1] == "msa2net predict -i scan.nii.gz -o out/ --model someone/toy-liver --split"


def test_card_cites_the_training_data_and_names_it_in_the_model_index() -> None:
    model = msa2net.create_model("msa2net_test", num_classes=9, img_size=64)
    summary = {"settings": {"kind": "synapse", "data": "/d"}, "class_names": list(SYNAPSE_CLASS_NAMES)}
    legacy = {"mean_dice": 0.5, "mean_hd95_voxels": 3.0}
    legacy |= {"per_class_dice": dict.fromkeys(SYNAPSE_CLASS_NAMES[1:], 0.5)}
    legacy |= {"per_class_hd95_voxels": dict.fromkeys(SYNAPSE_CLASS_NAMES[1:], 3.0)}
    mm = {"mean_hd95_mm": None, "per_class_hd95_mm": dict.fromkeys(SYNAPSE_CLASS_NAMES[1:])}
    mm |= {"per_class_failures": dict.fromkeys(SYNAPSE_CLASS_NAMES[1:], 1), "n_failed": 8, "n_values": 8}
    per_class = {c: {"n_cases": 1, "mean": {}, "n_failed": {}} for c in SYNAPSE_CLASS_NAMES[1:]}
    summary |= {"legacy": legacy, "mm": mm, "n_cases": 1, "classes": [], "metrics": [], "per_class": per_class}
    summary |= {"mean": {}}
    record = SynapseSource(Path("unused")).dataset_record()
    config = build_pretrained_config(
        model, class_names=SYNAPSE_CLASS_NAMES, preprocessing=CT_PREPROCESSING.to_dict(), evaluation=summary
    )
    card = build_model_card({**config, "dataset": record})
    result = _front_matter(card)["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "Synapse multi-organ abdominal CT", "type": "synapse"}
    assert {m["type"] for m in result["metrics"]} == {"dice", "hd95"}  # the undefined mm mean is left out
    assert "The training data: Landman et al." in card and "| HD95 (mm) | n/a |" in card


def test_folders_published_before_records_travelled_keep_their_cards() -> None:
    config = _folder_config()
    assert config["dataset"] is None
    assert dataset_of(config) == {
        "kind": "folder",
        "name": "ToyLiver",
        "class_names": ["background", "liver", "tumour"],
    }
    assert "# MSA2Net `msa2net_test` on ToyLiver\n" in build_model_card(config)
    demo = dict(config, provenance={**config["provenance"], "run_config": {"preset": "demo"}})
    assert dataset_of(demo)["name"] == "the msa2net CT phantom"
    bare = build_pretrained_config(msa2net.create_model("msa2net_test", num_classes=2, img_size=64))
    card = build_model_card(bare)
    assert "# MSA2Net `msa2net_test`\n" in card and "Trained data domain: not recorded." in card
    assert "model-index" not in _front_matter(card)


def test_save_pretrained_writes_the_same_card_through_the_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = msa2net.create_model("msa2net_test", num_classes=3, img_size=64)
    folder = model.save_pretrained(tmp_path / "m", class_names=["background", "liver", "tumour"], repo_id="a/b")
    config = json.loads((folder / "config.json").read_text())
    assert (folder / "README.md").read_text() == build_model_card(config, repo_id="a/b")
    monkeypatch.setattr(_hooks, "model_card_builder", None)
    with pytest.raises(PretrainedError, match="no model card builder"):
        model.save_pretrained(tmp_path / "none")
    assert not (tmp_path / "none").exists()
    save_pretrained(model, tmp_path / "text", card="# mine\n")  # a card passed in needs no builder
    assert (tmp_path / "text" / "README.md").read_text() == "# mine\n"


# ---------------------------------------------------------------------------------------------- floors


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the msa2net modules a file imports (at the top or inside functions)."""
    # "msa2net.models.pretrained", or "msa2net.models.__init__" for a package: level 1 is then the package itself
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {n for n in names if n == "msa2net" or n.startswith("msa2net.")}


@pytest.mark.parametrize(
    ("floor", "above"),
    [
        ("models", ("msa2net.reporting", "msa2net.data", "msa2net.engine", "msa2net.cli")),
        ("reporting", ("msa2net.data", "msa2net.engine", "msa2net.cli")),
    ],
)
def test_imports_only_go_down(floor: str, above: tuple[str, ...]) -> None:
    for path in sorted((SRC / floor).glob("*.py")):
        upward = sorted(m for m in _imported_modules(path) if m.startswith(above))
        assert not upward, f"{path.relative_to(SRC)} imports {upward}"
