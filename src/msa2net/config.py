"""Training configuration: dataclasses, YAML presets (``msa2net/configs``) and command-line overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from ._atomic import write_text_atomic

PRESETS = ("synapse", "isic2018", "folder", "demo")


@dataclass
class ModelConfig:
    name: str = "msa2net_paper"
    num_classes: int | None = None  # None: from the dataset
    in_channels: int | None = None  # None: from the dataset
    img_size: list[int] = field(default_factory=lambda: [224, 224])
    pretrained_encoder: str | None = None  # local weights file or "hub"
    official_checkpoint: str | None = None  # start from an authors' .pth (fine-tuning)


@dataclass
class DataConfig:
    kind: str | None = None  # synapse | isic2018 | folder; None: detected from the folder
    root: str = "data/Synapse"
    # held_out: cases held out of the training set; test: the test set doubles as validation (the
    # authors' practice; results on it are then not a clean test); none: no validation
    validation: str = "held_out"
    val_fraction: float = 0.2
    val_cases: list[str] | None = None
    train_cases: list[str] | None = None
    labels: str | None = None  # Synapse: synapse8 | btcv14 (None: synapse8)
    intensity: str | None = None  # Synapse: strict | clip (None: strict)
    augment: str = "msa2net"  # msa2net | transunet | flip | none
    num_workers: int = 2


@dataclass
class TrainConfig:
    epochs: int = 700
    batch_size: int = 20  # global, over all processes
    loss: str = "boundary_dou"  # boundary_dou | ce | dice | ce_dice | bce
    loss_weights: dict[str, float] | None = None
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    lr_scaling: str = "authors"  # authors: lr * batch / 24 when batch % 5 == 0; none
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "poly"  # poly (per iteration) | plateau (per evaluation, on validation Dice) | constant
    poly_power: float = 0.9
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    amp: str = "none"  # none | bf16 | fp16 (CUDA, with a gradient scaler)
    channels_last: bool = False
    grad_clip: float | None = None
    sync_bn: bool = False  # CUDA + DDP only
    seed: int = 1234
    eval_every: int = 20
    eval_batch_size: int = 16
    max_iterations: int | None = None  # stop early (smoke runs); the schedule still spans all epochs
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    log_every: int = 10
    progress: bool = True


@dataclass
class Config:
    preset: str = "synapse"
    out_dir: str = "runs/synapse"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML, atomically."""
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def config_from_dict(data: dict[str, Any], where: str = "config") -> Config:
    """Build a :class:`Config`, rejecting unknown keys with the list of valid ones."""
    data = dict(data or {})
    unknown = set(data) - {"preset", "out_dir", *_SECTIONS}
    if unknown:
        raise ValueError(
            f"{where}: unknown top-level keys {sorted(unknown)}; valid: preset, out_dir, model, data, train"
        )
    kwargs: dict[str, Any] = {k: data[k] for k in ("preset", "out_dir") if k in data}
    for name, cls in _SECTIONS.items():
        section = data.get(name) or {}
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = set(section) - valid
        if bad:
            raise ValueError(f"{where}: unknown keys in '{name}': {sorted(bad)}; valid: {sorted(valid)}")
        kwargs[name] = cls(**section)
    return Config(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS} or pass a YAML file")
    text = resources.files("msa2net.configs").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def parse_override(text: str) -> dict[str, Any]:
    """``train.epochs=5`` -> {"train": {"epochs": 5}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.epochs=5")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    out: dict[str, Any] = {parts[-1]: yaml.safe_load(value)}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def load_config(preset_or_file: str, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """A preset name or YAML file (which may name a ``preset`` to start from), then ``key=value`` overrides."""
    if base is not None:
        data = base
    elif os.path.isfile(preset_or_file):
        with open(preset_or_file) as f:
            data = yaml.safe_load(f) or {}
        if "preset" in data:
            data = _merge(preset_dict(data["preset"]), data)
    else:
        data = preset_dict(preset_or_file)
    for item in overrides or []:
        data = _merge(data, parse_override(item))
    return config_from_dict(data, where=preset_or_file)
