"""Loading the authors' checkpoints (github.com/xmindflow/MSA-2Net) into :class:`MSA2Net`.

The official module tree carries modules that never run; their keys are dropped, by name, and reported:

- ``backbone.conv.*``: a 1->3 conv adapter the forward pass never calls;
- ``decoder_3.*`` except ``decoder_3.layer_up.*``: the deepest stage only runs its patch expansion;
- released variant only: ``decoder_2.ag_attn.*`` (the class that runs there has no MASAG).

Every other key is renamed to ours and loaded strictly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .msa2net import MSA2Net
from .weights_io import WeightsFileError, key_mismatch_report, read_weights_file, unwrap_state_dict


class OfficialCheckpointError(ValueError):
    """An authors' checkpoint that cannot be loaded into the given model, with the keys at fault."""


@dataclass
class OfficialLoadReport:
    """What :func:`load_official_weights` did."""

    variant: str
    loaded: int
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"loaded {self.loaded} tensors of an official {self.variant} checkpoint; dropped {len(self.dropped)} "
            "keys of modules that never run in the official forward"
        )


_MASAG_NAMES = {
    "multi.local.dconv.0": "context.local_dw",
    "multi.local.dconv.1": "context.local_dw_bn",
    "multi.local.dconv.3": "context.local_dilated",
    "multi.local.dconv.4": "context.local_dilated_bn",
    "multi.local.proj.0": "context.local_proj",
    "multi.local.proj.1": "context.local_proj_bn",
    "multi.global_.proj.0": "context.global_proj",
    "multi.global_.proj.1": "context.global_bn",
    "multi.bn": "context.bn",
    "selection": "selection",
    "proj": "interaction_proj",
    "bn": "interaction_bn",
    "conv_block.0": "out_proj",
    "bn_2": "out_bn",
}
_STAGE_RE = re.compile(r"^decoder_([0-3])\.(.+)$")
_PARAM_RE = re.compile(r"^(.+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def detect_variant(keys: list[str] | set[str]) -> str:
    """``paper`` or ``released`` from an official state dict's keys."""
    paper = any(k.startswith("decoder_2.tran_layer1.") for k in keys)
    released = any(k.startswith("decoder_2.layer_lka_1.") for k in keys)
    if paper == released:
        raise OfficialCheckpointError(
            "cannot tell the MSA2Net variant: an official checkpoint has either decoder_2.tran_layer1.* (paper) "
            "or decoder_2.layer_lka_1.* (released) keys; this one has "
            + ("both" if paper else "neither")
            + ". Is it an authors' MSA2Net checkpoint?"
        )
    return "paper" if paper else "released"


def _is_dead(key: str, variant: str) -> bool:
    if key.startswith("backbone.conv."):
        return True
    if key.startswith("decoder_3.") and not key.startswith("decoder_3.layer_up."):
        return True
    return variant == "released" and key.startswith("decoder_2.ag_attn.")


def map_official_key(key: str) -> str | None:
    """Our name for a live official key, or None when the key fits no rule."""
    if key.startswith("backbone.backbone."):
        return "encoder.backbone." + key[len("backbone.backbone.") :]
    m = _STAGE_RE.match(key)
    if not m:
        return None
    k, rest = int(m.group(1)), m.group(2)
    if k == 3:
        return "decoder.expand3." + rest[len("layer_up.") :] if rest.startswith("layer_up.") else None
    stage = f"decoder.stage{k}."
    for old, new in (("x1_linear.", "gate_proj."), ("ag_attn_norm.", "norm."), ("layer_up.", "expand.")):
        if rest.startswith(old):
            return stage + new + rest[len(old) :]
    if rest.startswith("last_layer.") and k == 0:
        return stage + "head." + rest[len("last_layer.") :]
    if rest.startswith("ag_attn."):
        pm = _PARAM_RE.match(rest[len("ag_attn.") :])
        if pm and pm.group(1) in _MASAG_NAMES:
            return f"{stage}masag.{_MASAG_NAMES[pm.group(1)]}.{pm.group(2)}"
        return None
    bm = re.match(r"^(layer_lka|tran_layer)_?([12])\.(.+)$", rest)
    if bm:
        sub = bm.group(3)
        if bm.group(1) == "layer_lka":
            sub = sub.replace("mlp.dwconv.dwconv.", "mlp.dwconv.")
        return f"{stage}blocks.{int(bm.group(2)) - 1}.{sub}"
    return None


def read_official_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official state dict from a ``.pth`` path or a mapping, unwrapped (``state_dict``/``model``/
    ``state_dict_ema``, DataParallel's ``module.``); see :mod:`msa2net.models.weights_io`.

    Files are read with ``weights_only=True``: no pickled code runs.

    Raises:
        OfficialCheckpointError: the file is missing or unreadable, or holds no state dict of tensors.
    """
    try:
        if isinstance(source, (str, os.PathLike)):
            return unwrap_state_dict(read_weights_file(source), repr(str(source)))
        return unwrap_state_dict(source)
    except WeightsFileError as exc:
        raise OfficialCheckpointError(str(exc)) from exc


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], variant: str | None = None
) -> tuple[dict[str, torch.Tensor], list[str], list[str], str]:
    """Rename official keys to ours.

    Returns:
        (converted state, dropped dead keys, official keys that fit no rule, detected variant)
    """
    detected = detect_variant(set(state))
    if variant is not None and variant != detected:
        raise OfficialCheckpointError(
            f"this is an official {detected}-variant checkpoint but the model is the {variant} variant; build "
            f"msa2net_{detected} (MSA2Net(variant='{detected}')) to load it"
        )
    converted, dropped, unknown = {}, [], []
    for key, value in state.items():
        if _is_dead(key, detected):
            dropped.append(key)
            continue
        new = map_official_key(key)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    return converted, dropped, unknown, detected


def load_official_weights(model: MSA2Net, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> OfficialLoadReport:
    """Load an authors' MSA2Net checkpoint into ``model``, strictly.

    Args:
        model: an :class:`MSA2Net` of the checkpoint's variant, classes and encoder.
        source: a path to an authors' ``.pth``, or a state dict (also wrapped in ``{'state_dict': ...}`` or
            ``{'model': ...}``, and with DataParallel's ``module.`` prefix).

    Returns:
        A report with the detected variant, the number of tensors loaded and the dropped dead keys.

    Raises:
        OfficialCheckpointError: wrong variant, or any missing, unexpected or mis-shaped key (all listed).
    """
    state = read_official_state_dict(source)
    converted, dropped, unknown, variant = convert_official_state_dict(state, model.variant)
    mismatch = key_mismatch_report(model.state_dict(), converted, unknown, given_name="checkpoint")
    if mismatch:
        raise OfficialCheckpointError(
            f"official {variant} checkpoint does not fit this model ({model.config.encoder}, "
            f"{model.num_classes} classes, {model.config.in_channels} input channels):\n{mismatch}"
        )
    model.load_state_dict(converted, strict=True)
    return OfficialLoadReport(variant=variant, loaded=len(converted), dropped=sorted(dropped))


def official_parameter_count(model: MSA2Net) -> int:
    """Parameters of the authors' module tree for this model's configuration, dead modules included.

    Ours builds only what runs; the official tree adds a 1->3 conv + BatchNorm adapter in the encoder, the
    whole deepest decoder stage besides its patch expansion (gate projection, MASAG, norm and two blocks of
    the stage-2 type at the deepest width), and in the released variant a stage-2 MASAG. Those modules are
    built here on the meta device (no memory) and counted.
    """
    from torch import nn

    from .masag import MASAG
    from .msa2net import DecoderStage

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    deepest = model.encoder.channels[-1]
    block = "dae" if model.variant == "paper" else "lka"
    with torch.device("meta"):
        dead = count(nn.Conv2d(1, 3, 1)) + count(nn.BatchNorm2d(3))
        stage3 = DecoderStage(deepest, block, gated=True)
        dead += count(stage3) - count(stage3.expand)
        if model.variant == "released":
            dead += count(MASAG(model.encoder.channels[-2]))
    return count(model) + dead
