"""Configuration validation: every problem found at load time, listed in one ConfigError naming option and values."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import pytest

from msa2net.config import (
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    config_from_dict,
    config_problems,
    load_config,
    parse_override,
    validate_config,
)


def _error(overrides: list[str], preset: str = "synapse") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(preset, overrides)
    return info.value


# ---------------------------------------------------------------------------------------------- presets, schema


def test_every_shipped_preset_loads_and_validates():
    shipped = {
        p.name[: -len(".yaml")] for p in resources.files("msa2net.configs").iterdir() if p.name.endswith(".yaml")
    }
    assert shipped == set(PRESETS)
    for name in PRESETS:
        cfg = load_config(name)
        assert config_problems(cfg) == [], name
        assert cfg.preset == name


def test_folder_preset_takes_classes_and_channels_from_the_dataset():
    cfg = load_config("folder")
    assert (cfg.model.num_classes, cfg.model.in_channels, cfg.data.kind) == (None, None, "folder")
    for name in ("synapse", "isic2018", "demo"):
        assert load_config(name).data.labels is None and load_config(name).data.intensity is None


def test_schema_defaults_leave_dataset_facts_to_the_dataset():
    assert (DataConfig().kind, DataConfig().labels, DataConfig().intensity) == (None, None, None)
    assert (ModelConfig().num_classes, ModelConfig().in_channels) == (None, None)
    with pytest.raises(ConfigError, match="data.kind.*synapse"):  # the registered kinds are the choices
        config_from_dict({"data": {"kind": "nifti"}})
    assert config_problems(Config()) == []


def test_checkpoint_style_dicts_round_trip():
    cfg = load_config("isic2018", ["data.labels=synapse8", "data.intensity=strict"])  # values older runs stored
    assert config_from_dict(cfg.to_dict()) == cfg


def test_config_imports_losses_and_augmentations_only_when_validating():
    code = (
        "import sys, msa2net.config as c; lazy = ('msa2net.losses', 'msa2net.data.transforms'); "
        "print([m in sys.modules for m in lazy]); c.load_config('demo'); print([m in sys.modules for m in lazy])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[False, False]", "[True, True]"]


# ---------------------------------------------------------------------------------------------- types


def test_wrong_type_names_option_found_value_and_expected_type():
    err = str(_error(["train.epochs=abc"]))
    assert "train.epochs: expected an integer >= 1, found 'abc' (a string)" in err
    assert "Traceback" not in err


def test_bool_is_not_an_int_and_ints_are_accepted_for_floats():
    assert "train.batch_size: expected an integer >= 1, found true (a boolean)" in str(
        _error(["train.batch_size=true"])
    )
    cfg = load_config("synapse", ["train.lr=1", "train.weight_decay=1e-4"])  # YAML 1.1 would read 1e-4 as text
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.train.weight_decay == 1e-4
    assert "train.channels_last: expected true or false, found 'yes please' (a string)" in str(
        _error(["train.channels_last=yes please"])
    )


def test_section_that_is_not_a_mapping():
    err = str(_error(["model=5"]))
    assert "model: expected a mapping of model options" in err and "found 5 (an integer)" in err
    assert "valid keys: name, num_classes, in_channels, img_size" in err


def test_structured_types_lists_and_mappings():
    err = str(_error(["data.val_cases=[0005, 6]", "data.train_cases=case0001", "train.loss_weights=[1, 2]"]))
    assert "data.val_cases: expected a list of strings or null, found [5, 6] (a list); item 0 is 5" in err
    assert "data.train_cases: expected a list of strings or null, found 'case0001' (a string)" in err
    assert "train.loss_weights: expected a mapping with keys ce and/or dice" in err
    cfg = load_config("synapse", ["data.val_cases=['0005', case0006]"])
    assert cfg.data.val_cases == ["0005", "case0006"]


def test_optional_fields_accept_null():
    cfg = load_config(
        "synapse",
        ["train.grad_clip=null", "train.max_iterations=null", "model.num_classes=null", "data.kind=null"],
    )
    assert (cfg.train.grad_clip, cfg.train.max_iterations, cfg.model.num_classes, cfg.data.kind) == (None,) * 4


def test_pretrained_encoder_none_in_a_config_means_no_weights():
    assert load_config("synapse", ["model.pretrained_encoder=None"]).model.pretrained_encoder is None
    assert load_config("synapse").model.pretrained_encoder == "hub"


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        ("data.validation=maybe", "one of held_out, test, none"),
        ("train.optimizer=adam", "one of sgd, adamw"),
        ("train.scheduler=cosine", "one of poly, plateau, constant"),
        ("train.amp=fp8", "one of none, bf16, fp16"),
        ("train.lr_scaling=linear", "one of authors, none"),
        ("train.loss=focal", "one of boundary_dou, ce, dice, ce_dice"),
        ("data.augment=heavy", "one of msa2net, transunet, flip, none"),
        ("data.labels=btcv13", "one of synapse8, btcv14 or null"),
        ("data.intensity=wrap", "one of strict, clip or null"),
        ("data.kind=brats", "one of synapse, isic2018, folder or null"),
        ("model.name=unet", "one of msa2net_paper, msa2net_released"),
    ],
)
def test_bad_choice_lists_the_valid_values(override, valid):
    option, value = override.split("=")
    err = str(_error([override]))
    assert f"{option}: expected {valid}" in err and f"found {value!r}" in err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=0", "train.epochs: expected an integer >= 1, found 0"),
        ("train.batch_size=-2", "train.batch_size: expected an integer >= 1"),
        ("train.lr=0", "train.lr: expected a number > 0"),
        ("train.weight_decay=-0.1", "train.weight_decay: expected a number >= 0"),
        ("train.momentum=1", "train.momentum: expected a number in [0, 1)"),
        ("data.val_fraction=1.0", "data.val_fraction: expected a number in [0, 1)"),
        ("data.num_workers=-1", "data.num_workers: expected an integer >= 0"),
        ("train.eval_every=0", "train.eval_every: expected an integer >= 1"),
        ("train.eval_batch_size=0", "train.eval_batch_size: expected an integer >= 1"),
        ("train.log_every=0", "train.log_every: expected an integer >= 1"),
        ("train.plateau_patience=-1", "train.plateau_patience: expected an integer >= 0"),
        ("train.plateau_factor=1", "train.plateau_factor: expected a number in (0, 1)"),
        ("train.grad_clip=0", "train.grad_clip: expected a number > 0 or null"),
        ("train.max_iterations=0", "train.max_iterations: expected an integer >= 1 or null"),
        ("train.lr=.inf", "train.lr: expected a number > 0, found inf (a number that is not finite)"),
        ("model.num_classes=1", "model.num_classes: expected an integer >= 2 or null"),
        ("model.in_channels=0", "model.in_channels: expected an integer >= 1 or null"),
        ("model.img_size=[100, 224]", "model.img_size: expected a list of two positive multiples of 32"),
        ("model.img_size=224", "model.img_size: expected a list of two positive multiples of 32"),
        ("model.img_size=[224, 224, 3]", "model.img_size: expected a list of two positive multiples of 32"),
    ],
)
def test_numeric_ranges(override, expected):
    assert expected in str(_error([override]))


def test_device_syntax():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config("synapse", [f"train.device={device}"]).train.device == device
    for device in ("gpu", "cuda0", "cuda:x", "CPU"):
        err = str(_error([f"train.device={device}"]))
        assert f"train.device: expected auto, cpu, cuda, cuda:N (N a GPU index) or mps, found {device!r}" in err


def test_fp16_on_cpu_is_an_error():
    err = str(_error(["train.amp=fp16", "train.device=cpu"]))
    assert "train.amp: fp16 needs CUDA" in err and "train.device=cpu" in err and "bf16" in err
    assert load_config("synapse", ["train.amp=fp16", "train.device=cuda:0"]).train.amp == "fp16"


def test_loss_weights_only_with_ce_dice():
    err = str(_error(["train.loss=dice", "train.loss_weights={ce: 1.0}"]))
    assert "train.loss_weights: only apply to train.loss=ce_dice" in err
    cfg = load_config("synapse", ["train.loss=ce_dice", "train.loss_weights={ce: 1, dice: 0.5}"])
    assert cfg.train.loss_weights == {"ce": 1.0, "dice": 0.5}


def test_unknown_keys_list_the_valid_keys():
    err = str(_error(["train.epoch=3", "epochs=3"]))
    assert "train: unknown keys in 'train': ['epoch'] (did you mean 'epochs'?); valid: epochs, batch_size" in err
    assert "unknown top-level keys ['epochs'] (did you mean train.epochs?); valid: preset, out_dir, model" in err


def test_several_problems_are_listed_in_one_error():
    error = _error(["train.epochs=abc", "model=5", "data.validation=maybe", "train.lr=-1", "bogus"])
    assert len(error.problems) == 5
    text = str(error)
    assert text.startswith("preset 'synapse': 5 problems:\n")
    for option in ("train.epochs", "model:", "data.validation", "train.lr", "--set 'bogus'"):
        assert option in text


def test_validate_config_checks_a_built_config():
    cfg = load_config("demo")
    cfg.train.epochs = "abc"
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer >= 1, found 'abc'"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------- YAML and --set


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 5\n bad: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}, line 3, column 2: not valid YAML") and "fix the file" in str(info.value)


@pytest.mark.parametrize(("text", "found"), [("- a\n- b\n", "['a', 'b'] (a list)"), ("42\n", "42 (an integer)")])
def test_yaml_top_level_must_be_a_mapping(tmp_path, text, found):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="expected a mapping of sections at the top level") as info:
        load_config(str(path))
    assert f"{path}, line 1" in str(info.value) and found in str(info.value)


def test_yaml_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "created_by_yaml"
    path = tmp_path / "evil.yaml"
    path.write_text(f'train: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert not marker.exists()
    text = str(info.value)
    assert f"{path}, line 1" in text and "YAML tags are not allowed" in text
    assert "!!python/object/apply:builtins.open" in text and "use plain values" in text
    with pytest.raises(ConfigError, match="YAML tags are not allowed"):
        load_config("synapse", [f"train.epochs=!!python/object/apply:builtins.open ['{marker}', 'w']"])
    assert not marker.exists()


def test_unknown_preset_lists_the_presets(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: synapse2\ntrain:\n  epochs: 7\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "preset: unknown preset 'synapse2'; choose one of synapse, isic2018, folder, demo" in str(info.value)
    with pytest.raises(ConfigError, match="unknown preset 'synapse2'; choose one of synapse, isic2018, folder, demo"):
        load_config("synapse2")
    with pytest.raises(ConfigError, match="config file .*nothere.yaml' not found"):
        load_config(str(tmp_path / "nothere.yaml"))


def test_yaml_file_starting_from_a_preset_is_validated(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: isic2018\ntrain:\n  epochs: 7\n  lr: 1e-3\n")
    cfg = load_config(str(path))
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.kind, cfg.train.scheduler) == (7, 1e-3, "isic2018", "plateau")
    path.write_text("preset: isic2018\ntrain:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=f"{path}: train.epochs: expected an integer >= 1, found 'many'"):
        load_config(str(path))


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("train.epochs=[", "--set 'train.epochs=[', line 1, column 2: not valid YAML"),
        ("train.epochs", "--set 'train.epochs': no '=' found; expected section.key=value"),
        ("=5", "--set '=5': empty key ''; expected section.key=value"),
        ("train.=5", "--set 'train.=5': empty key 'train.'"),
        ("optim.lr=0.1", "--set 'optim.lr=0.1': unknown section 'optim'; valid sections: model, data, train"),
        ("train.lr.x=0.1", "--set 'train.lr.x=0.1': key 'train.lr.x' has more than one dot"),
    ],
)
def test_malformed_overrides(item, expected):
    with pytest.raises(ConfigError) as info:
        parse_override(item)
    assert str(info.value).startswith(expected)
    assert expected in str(_error([item, "train.epochs=0"]))  # listed with the other problems


def test_override_parsing_still_reads_yaml_values():
    assert parse_override("train.lr=0.01") == {"train": {"lr": 0.01}}
    assert parse_override("model.img_size=[96, 128]") == {"model": {"img_size": [96, 128]}}
    assert parse_override("out_dir=runs/x") == {"out_dir": "runs/x"}
