"""Training configuration: dataclasses, YAML presets (``msa2net/configs``), command-line overrides and validation.

:func:`load_config` and :func:`config_from_dict` validate completely before returning and raise every problem at
once as one :class:`ConfigError` (bad YAML, tags and ``--set`` items too). Importing is light (PyYAML only): the
model, recipe and loss names are imported when a configuration is validated.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from ._atomic import write_text_atomic
from .constants import DEVICE_TEXT, ValidationMode

#: Built-in presets, the YAML files in ``msa2net/configs``.
PRESETS: tuple[str, ...] = ("synapse", "isic2018", "folder", "demo", "aal")
#: ``train.optimizer``.
Optimizer = Literal["sgd", "adamw"]
#: ``train.scheduler``: poly per iteration, reduce-on-plateau per evaluation (on validation Dice), or a constant LR.
Scheduler = Literal["poly", "plateau", "constant"]
#: ``train.amp`` and ``--amp``: mixed precision (fp16 needs CUDA, with a gradient scaler); none is float32.
AmpMode = Literal["none", "bf16", "fp16"]
#: ``train.lr_scaling``: the authors' rule (lr * batch / 24 when the batch is a multiple of 5), or the LR as given.
LrScaling = Literal["authors", "none"]
#: What ``evaluate`` scores by default: the labelled test cases, or (asked for) the labelled training cases.
EvaluationSplit = Literal["test", "train"]
AMP_MODES: tuple[str, ...] = typing.get_args(AmpMode)
EVALUATION_SPLITS: tuple[str, ...] = typing.get_args(EvaluationSplit)
#: ``train.loss_weights`` keys (``train.loss=ce_dice`` only).
LOSS_WEIGHT_KEYS: tuple[str, ...] = ("ce", "dice")

_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
_SIZE_MULTIPLE = 32


class ConfigError(ValueError):
    """A configuration that cannot be used: ``problems`` (one line each), ``where`` it was loaded from, a ``hint``."""

    def __init__(self, problems: str | Sequence[str], where: str | None = None, hint: str | None = None) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        self.where = where
        self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        if len(self.problems) == 1:
            text = prefix + self.problems[0]
        else:
            text = f"{prefix}{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        return f"{text}\n{self.hint}" if self.hint else text


@dataclass(frozen=True)
class _Rule:
    """What a well-typed value must also satisfy: ``expected()`` says it in words (type included)."""

    expected: Callable[[], str]
    ok: Callable[[Any], bool]


def _int_min(lo: int) -> _Rule:
    return _Rule(lambda: f"an integer >= {lo}", lambda v: v >= lo)


def _number(text: str, ok: Callable[[float], bool]) -> _Rule:
    return _Rule(lambda: f"a number {text}", ok)


def _registered(what: str) -> tuple[str, ...]:
    """The names the lower floors register for ``what`` (a model, augmentation recipe, loss, data kind, or a
    kind-specific data option such as Synapse's ``labels``); imported when validating, not when importing."""
    from .data.registry import source_kinds, source_option_choices
    from .data.transforms import RECIPES
    from .losses import LOSS_NAMES
    from .models import list_models

    registries = {"model": list_models, "augment": lambda: RECIPES, "loss": lambda: LOSS_NAMES, "kind": source_kinds}
    return tuple(registries[what]() if what in registries else source_option_choices(what))


def _one_of(what: str, fold_case: bool = False) -> _Rule:
    return _Rule(
        lambda: "one of " + ", ".join(_registered(what)),
        lambda v: (v.lower() if fold_case else v) in _registered(what),
    )


def _option(default: Any = MISSING, rule: _Rule | None = None, *, factory: Any = MISSING) -> Any:
    """A config field whose value must also satisfy ``rule`` (kept in the field's metadata: it moves with the field)."""
    return field(default=default, default_factory=factory, metadata={"rule": rule})


_IMG_SIZE = _Rule(
    lambda: f"a list of two positive multiples of {_SIZE_MULTIPLE} (height, width), e.g. [224, 224]",
    lambda v: len(v) == 2 and all(s > 0 and s % _SIZE_MULTIPLE == 0 for s in v),
)
_LOSS_WEIGHTS = _Rule(
    lambda: "a mapping with keys ce and/or dice to numbers >= 0, e.g. {ce: 0.4, dice: 0.6}",
    lambda v: set(v) <= set(LOSS_WEIGHT_KEYS) and all(w >= 0 for w in v.values()),
)
_SEED = _Rule(lambda: "an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)
_DEVICE = _Rule(lambda: DEVICE_TEXT, lambda v: device_is_valid(v))


@dataclass
class ModelConfig:
    """``model:``: which network, its size and starting weights. ``num_classes`` / ``in_channels`` None: taken from the
    dataset (when given, the data layer checks them against it)."""

    name: str = _option("msa2net_paper", _one_of("model"))
    num_classes: int | None = _option(None, _int_min(2))  # background included
    in_channels: int | None = _option(None, _int_min(1))
    img_size: list[int] = _option(rule=_IMG_SIZE, factory=lambda: [224, 224])
    pretrained_encoder: str | None = None  # local weights file or "hub"; "none" (any case) is read as None
    official_checkpoint: str | None = None  # start from an authors' .pth (fine-tuning)


@dataclass
class DataConfig:
    """``data:``: where the data are and how they are split and augmented. ``kind`` None: detected from the folder;
    the kind-specific options (``labels`` / ``intensity``: Synapse) None: that kind's default."""

    kind: str | None = _option(None, _one_of("kind"))
    root: str = "data/Synapse"
    # held_out: cases held out of the training set; test: the test set doubles as validation (the
    # authors' practice; results on it are then not a clean test); none: no validation
    validation: ValidationMode = "held_out"
    val_fraction: float = _option(0.2, _number("in [0, 1)", lambda v: 0 <= v < 1))
    val_cases: list[str] | None = None
    train_cases: list[str] | None = None
    labels: str | None = _option(None, _one_of("labels"))
    intensity: str | None = _option(None, _one_of("intensity"))
    augment: str = _option("msa2net", _one_of("augment"))
    num_workers: int = _option(2, _int_min(0))

    def source_options(self) -> dict[str, Any]:
        """The kind-specific options (every option a registered dataset kind declares), by name."""
        from .data.registry import source_option_names

        return {name: getattr(self, name) for name in source_option_names()}


@dataclass
class TrainConfig:
    """``train:``: optimisation, schedule, precision, evaluation cadence and device."""

    epochs: int = _option(700, _int_min(1))
    batch_size: int = _option(20, _int_min(1))  # global, over all processes
    loss: str = _option("boundary_dou", _one_of("loss", fold_case=True))
    loss_weights: dict[str, float] | None = _option(None, _LOSS_WEIGHTS)
    optimizer: Optimizer = "sgd"
    lr: float = _option(0.05, _number("> 0", lambda v: v > 0))
    lr_scaling: LrScaling = "authors"
    momentum: float = _option(0.9, _number("in [0, 1)", lambda v: 0 <= v < 1))
    weight_decay: float = _option(1e-4, _number(">= 0", lambda v: v >= 0))
    scheduler: Scheduler = "poly"
    poly_power: float = _option(0.9, _number(">= 0", lambda v: v >= 0))
    plateau_factor: float = _option(0.5, _number("in (0, 1)", lambda v: 0 < v < 1))
    plateau_patience: int = _option(10, _int_min(0))
    amp: AmpMode = "none"
    channels_last: bool = False
    grad_clip: float | None = _option(None, _number("> 0", lambda v: v > 0))
    sync_bn: bool = False  # CUDA + DDP only
    seed: int = _option(1234, _SEED)
    eval_every: int = _option(20, _int_min(1))
    eval_batch_size: int = _option(16, _int_min(1))
    # stop after this many iterations; the schedule spans the iterations that run
    max_iterations: int | None = _option(None, _int_min(1))
    device: str = _option("auto", _DEVICE)
    log_every: int = _option(10, _int_min(1))
    progress: bool = True


@dataclass
class Config:
    """A whole training configuration. Build it with :func:`load_config` or :func:`config_from_dict`, which validate it;
    :func:`validate_config` checks one built or modified in code."""

    preset: str = "synapse"
    out_dir: str = "runs/synapse"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what checkpoints store); :func:`config_from_dict` turns it back into an equal config."""
        return dataclasses.asdict(self)

    def dump(self, path: str | os.PathLike) -> None:
        """Write the resolved config as YAML, atomically."""
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


_SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
_TOP_LEVEL: tuple[str, ...] = ("preset", "out_dir", *_SECTIONS)
_VALIDATION_HINT = "Fix the config file, or override with --set section.key=value (e.g. --set train.epochs=100)."


def device_is_valid(name: object) -> bool:
    """Whether ``name`` is a device string msa2net accepts: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    return isinstance(name, str) and _DEVICE_RE.fullmatch(name) is not None


# ---------------------------------------------------------------------------------------------- YAML


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float (YAML 1.2; PyYAML's 1.1 needs ``1.0e-4``)."""


_YamlLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _where_in(source: str, mark: yaml.Mark | None) -> str:
    return f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source


def _parse_yaml(text: str, source: str, what_to_do: str) -> tuple[Any, int]:
    """Parse one YAML document safely (no tags): ``(data, line of the top-level node)``."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        return data, (node.start_mark.line + 1 if node is not None else 1)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "constructor for the tag" in str(exc.problem):
            tag = exc.problem.split("tag", 1)[1].strip().replace("tag:yaml.org,2002:", "!!")
            problem = (
                f"YAML tags are not allowed in configs, found the tag {tag}; use plain values only "
                "(numbers, strings, true/false, null, lists and mappings)"
            )
        else:
            problem = f"cannot be read as YAML: {exc.problem}; {what_to_do}"
        raise ConfigError(problem, where=_where_in(source, mark)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        detail = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{detail} ({context})" if context else detail
        raise ConfigError(f"not valid YAML: {detail}; {what_to_do}", where=_where_in(source, mark)) from None
    finally:
        loader.dispose()


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not a UTF-8 text file ({exc.reason} at byte {exc.start}); pass a YAML file", where=path
        ) from None
    data, line = _parse_yaml(text, path, "fix the file (see the presets in msa2net/configs for the layout)")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of sections at the top level (preset:, out_dir:, model:, data:, train:), found "
            f"{_found(data)}; see the presets in msa2net/configs for the layout",
            where=f"{path}, line {line}",
        )
    return data


def preset_dict(name: str) -> dict[str, Any]:
    """The plain data of a built-in preset (:data:`PRESETS`)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}, or pass a YAML file")
    text = resources.files("msa2net.configs").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data, _ = _parse_yaml(text, f"preset {name!r}", "the installed preset file is damaged; reinstall msa2net")
    return data or {}


def parse_override(text: str) -> dict[str, Any]:
    """``train.epochs=5`` -> ``{"train": {"epochs": 5}}``; the value is parsed as YAML, the key checked later."""
    usage = "expected section.key=value, e.g. train.epochs=5 or data.root=data/Synapse"
    where = f"--set {text!r}"
    if "=" not in text:
        raise ConfigError(f"no '=' found; {usage}", where=where)
    key, value = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"empty key {key.strip()!r}; {usage}", where=where)
    if len(parts) > 2:
        raise ConfigError(f"key {key.strip()!r} has more than one dot; {usage}", where=where)
    if len(parts) == 2 and parts[0] not in _SECTIONS:
        hint = f"; {parts[0]} is a top-level key: {parts[0]}=value" if parts[0] in _TOP_LEVEL else ""
        raise ConfigError(
            f"unknown section {parts[0]!r}; valid sections: {', '.join(_SECTIONS)}{hint}; {usage}", where=where
        )
    parsed, _ = _parse_yaml(value, where, "quote the value, e.g. --set 'data.root=\"my: folder\"'")
    out: dict[str, Any] = {parts[-1]: parsed}
    return {parts[0]: out} if len(parts) == 2 else out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(preset_or_file: str, overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Load and validate a preset or YAML file (which may name a ``preset`` to start from), then ``overrides``.

    ``base``: plain data to start from instead (e.g. a checkpoint's config); ``preset_or_file`` then only labels
    the messages.
    """
    if base is not None:
        data, where = dict(base), preset_or_file
    elif os.path.isfile(preset_or_file):
        data, where = _read_config_file(preset_or_file), preset_or_file
        if "preset" in data:
            if not isinstance(data["preset"], str) or data["preset"] not in PRESETS:
                raise ConfigError(
                    f"preset: unknown preset {data['preset']!r}; choose one of {', '.join(PRESETS)} to start from, "
                    "or remove the preset key to start from the defaults",
                    where=preset_or_file,
                )
            data = _merge(preset_dict(data["preset"]), data)
    elif preset_or_file.endswith((".yaml", ".yml")) or os.sep in preset_or_file or "/" in preset_or_file:
        raise ConfigError(
            f"config file {preset_or_file!r} not found; pass an existing YAML file or a preset ({', '.join(PRESETS)})"
        )
    else:
        data, where = preset_dict(preset_or_file), f"preset {preset_or_file!r}"
    problems: list[str] = []
    for item in overrides or []:
        try:
            data = _merge(data, parse_override(item))
        except ConfigError as exc:
            problems.append(str(exc))
    cfg, found = _build(data)
    problems += found
    if problems:
        raise ConfigError(problems, where=where, hint=_VALIDATION_HINT)
    return cfg


def config_from_dict(data: Mapping[str, Any] | None, where: str = "config") -> Config:
    """Build and validate a :class:`Config` from plain data (ints stored as floats, tuples as lists)."""
    cfg, problems = _build(data)
    if problems:
        raise ConfigError(problems, where=where, hint=_VALIDATION_HINT)
    return cfg


def validate_config(cfg: Config, where: str = "config") -> None:
    """Raise :class:`ConfigError` listing every problem of an already built ``cfg``; return if there is none."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems, where=where, hint=_VALIDATION_HINT)


# ---------------------------------------------------------------------------------------------- building


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(data: Any) -> tuple[Config, list[str]]:
    """A :class:`Config` of the known keys of ``data`` (defaults elsewhere) and every problem found."""
    problems: list[str] = []
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        problems.append(f"expected a mapping with keys {', '.join(_TOP_LEVEL)}, found {_found(data)}")
        data = {}
    unknown = [str(k) for k in data if k not in _TOP_LEVEL]
    if unknown:
        notes = []
        for key in unknown:
            homes = [s for s, cls in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
            notes.append(f" (did you mean {homes[0]}.{key}?)" if homes else _suggest(key, _TOP_LEVEL))
        problems.append(
            f"unknown top-level keys {unknown}{''.join(dict.fromkeys(notes))}; valid: {', '.join(_TOP_LEVEL)}"
        )
    kwargs: dict[str, Any] = {k: _normalize(data[k], _hints(Config)[k]) for k in ("preset", "out_dir") if k in data}
    for name, cls in _SECTIONS.items():
        valid = [f.name for f in dataclasses.fields(cls)]
        section = data.get(name)
        section = {} if section is None else section
        if not isinstance(section, Mapping):
            problems.append(
                f"{name}: expected a mapping of {name} options (e.g. {name}.{valid[0]}=...), found "
                f"{_found(section)}; valid keys: {', '.join(valid)}"
            )
            section = {}
        bad = [str(k) for k in section if k not in valid]
        if bad:
            hints = "".join(dict.fromkeys(_suggest(b, valid) for b in bad))
            problems.append(f"{name}: unknown keys in {name!r}: {bad}{hints}; valid: {', '.join(valid)}")
        hints_of = _hints(cls)
        kwargs[name] = cls(**{k: _normalize(v, hints_of[k], f"{name}.{k}") for k, v in section.items() if k in valid})
    cfg = Config(**kwargs)
    return cfg, problems + config_problems(cfg)


def _normalize(value: Any, tp: Any, option: str = "") -> Any:
    """Lossless conversions: int -> float where a float is expected, tuple -> list, pretrained 'none' -> None."""
    if option == "model.pretrained_encoder" and isinstance(value, str) and value.strip().lower() == "none":
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    if len(args) != 1:
        return value
    (tp,) = args
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list and isinstance(value, tuple):
        value = list(value)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [_normalize(v, item) for v in value]
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(tp)
        return {k: _normalize(v, item) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------- checking


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


_SCALARS: dict[Any, Callable[[Any], bool]] = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    str: lambda v: isinstance(v, str),
}


def _mismatch(value: Any, tp: Any) -> str | None:
    """None when ``value`` has annotation ``tp`` (bool is not an int; floats must be finite), else what a message
    adds: which item of a list or mapping is wrong, or ''."""
    if _is_union(tp):
        args = typing.get_args(tp)
        details = [_mismatch(value, a) for a in args if a is not type(None)]
        if None in details or value is None and type(None) in args:
            return None
        return details[0] if len(details) == 1 else ""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return None if isinstance(value, str) and value in typing.get_args(tp) else ""
    if origin is list:
        if not isinstance(value, list):
            return ""
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            if _mismatch(v, item) is not None:
                extra = "; quote names that look like numbers, e.g. ['0005']" if item is str else ""
                return f"; item {i} is {_found(v)}{extra}"
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return ""
        key_tp, item = typing.get_args(tp)
        for k, v in value.items():
            if _mismatch(k, key_tp) is not None:
                return f"; key {_found(k)} is not {_NAMES.get(key_tp, key_tp)}"
            if _mismatch(v, item) is not None:
                return f"; the value of {k!r} is {_found(v)}"
        return None
    if tp not in _SCALARS:
        raise TypeError(f"config annotation {tp!r} is not supported by the validator")
    return None if _SCALARS[tp](value) else ""


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _type_text(tp: Any) -> str:
    if _is_union(tp):
        args = sorted(typing.get_args(tp), key=lambda a: a is type(None))
        return " or ".join(_type_text(a) for a in args)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    if origin is list:
        return f"a list of {_PLURALS[typing.get_args(tp)[0]]}"
    if origin is dict:
        key, item = typing.get_args(tp)
        return f"a mapping of {_PLURALS[key]} to {_PLURALS[item]}"
    return _NAMES[tp]


def _found(value: Any) -> str:
    """``'abc' (a string)``, ``[1, 2] (a list)``, ``null``: a short description of a found value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kinds = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    kind = kinds.get(type(value), type(value).__name__)
    if isinstance(value, float) and not math.isfinite(value):
        kind = "a number that is not finite"
    return f"{text} ({kind})"


def _check(option: str, value: Any, tp: Any, rule: _Rule | None = None) -> str | None:
    """The problem of one option's value (annotation ``tp``, extra ``rule``), or None."""
    optional = _is_union(tp) and type(None) in typing.get_args(tp)
    expected = _type_text(tp) if rule is None else rule.expected() + (" or null" if optional else "")
    detail = _mismatch(value, tp)
    if detail is not None:
        return f"{option}: expected {expected}, found {_found(value)}{detail}"
    if rule is not None and value is not None and not rule.ok(value):
        return f"{option}: expected {expected}, found {_found(value)}"
    return None


def config_problems(cfg: Config) -> list[str]:
    """Every problem of a built ``cfg``, one line each: annotations, field rules and cross-field rules."""

    problems: list[str] = []
    bad: set[str] = set()

    def flag(option: str, problem: str | None) -> None:
        if problem:
            problems.append(problem)
            bad.add(option)

    for name in ("preset", "out_dir"):
        flag(name, _check(name, getattr(cfg, name), _hints(Config)[name]))
    for section, cls in _SECTIONS.items():
        obj = getattr(cfg, section)
        if not isinstance(obj, cls):
            flag(section, f"{section}: expected a {cls.__name__}, found {_found(obj)}")
            continue
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            option = f"{section}.{f.name}"
            flag(option, _check(option, getattr(obj, f.name), hints[f.name], f.metadata.get("rule")))
    if "train" in bad:
        return problems
    t = cfg.train
    if not bad & {"train.amp", "train.device"} and t.amp == "fp16" and t.device.split(":")[0] in ("cpu", "mps"):
        problems.append(
            f"train.amp: fp16 needs CUDA (it uses a gradient scaler), found train.device={t.device}; use "
            "train.amp=bf16 or none there, or train.device=cuda"
        )
    if not bad & {"train.loss", "train.loss_weights"} and t.loss_weights and t.loss.lower() != "ce_dice":
        problems.append(
            f"train.loss_weights: only apply to train.loss=ce_dice, found train.loss={t.loss} with weights "
            f"{t.loss_weights}; remove them (train.loss_weights=null) or use train.loss=ce_dice"
        )
    return problems
