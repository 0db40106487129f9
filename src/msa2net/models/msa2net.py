"""MSA2Net: Multi-scale Adaptive Attention-guided Network for medical image segmentation.

Kolahi et al., BMVC 2024 (arXiv 2407.21640). A timm MaxViT encoder and a four-stage decoder whose skip
connections pass through Multi-Scale Adaptive Spatial Attention Gates (MASAG).

Two variants of the authors' network, both computing exactly what their code computes for the same weights:

- ``paper``: the network of the paper's figure and table: DAE-Former blocks and MASAG in decoder stage 2.
- ``released``: what the released code runs (a duplicated class definition replaces stage 2): LKA blocks
  in stage 2 and no MASAG there (the skip is added to the gate unchanged).

What differs from the authors' code: no module that never runs is built (the official tree carries an
encoder 1->3 conv adapter, all of the deepest decoder stage but its patch expansion, and in ``released``
the stage-2 MASAG), so parameter counts are those used in forward; any input size whose sides are
multiples of 32 works (theirs is fixed at 224x224); the encoder's channels are read from timm, so smaller
MaxViTs give small variants of the same design. The raw reshapes of their decoder (``rho``, see
:mod:`msa2net.models.layers`) are reproduced because the trained weights depend on them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encoder import MaxViTEncoder
from .layers import (
    ChannelLayerNorm,
    DualTransformerBlock,
    LKABlock,
    PatchExpand,
    rho,
    rho_inv,
    tokens,
    unflatten,
)
from .masag import MASAG
from .pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedError,
    build_pretrained_config,
    push_folder_to_hub,
    read_pretrained,
    resolve_pretrained,
    save_pretrained,
)
from .weights_io import key_mismatch_report

VARIANTS = ("paper", "released")
SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class MSA2NetConfig:
    """Everything needed to rebuild a model (stored in checkpoints)."""

    variant: str = "paper"
    num_classes: int = 9
    in_channels: int = 1
    img_size: tuple[int, int] = (224, 224)
    encoder: str = "maxvit_rmlp_small_rw_224"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d


class DecoderStage(nn.Module):
    """One skip-connected decoder stage at ``dim`` channels.

    ``block`` is ``"lka"`` (two LKA blocks on the raw-reshaped map) or ``"dae"`` (two DAE-Former dual
    transformer blocks on properly flattened tokens). ``gated`` False replaces MASAG by the plain skip
    (the released variant's stage 2). The last stage (``num_classes`` given) expands 4x and projects to logits.
    """

    def __init__(
        self, dim: int, block: str, gated: bool = True, num_classes: int | None = None, out_dim: int | None = None
    ) -> None:
        super().__init__()
        if block not in ("lka", "dae"):
            raise ValueError(f"unknown decoder block {block!r}")
        self.block = block
        self.gate_proj = nn.Linear(dim, dim)
        self.masag = MASAG(dim) if gated else None
        self.norm = ChannelLayerNorm(dim)
        block_cls = LKABlock if block == "lka" else DualTransformerBlock
        self.blocks = nn.ModuleList([block_cls(dim), block_cls(dim)])
        self.expand = PatchExpand(dim, scale=4 if num_classes else 2, out_dim=None if num_classes else out_dim)
        self.head = nn.Conv2d(dim, num_classes, 1) if num_classes else None

    def forward(self, t: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """t (B, H*W, C) tokens from the stage below, skip (B, C, H, W) -> tokens (B, 4HW, C/2) or logits."""
        b, c, h, w = skip.shape
        skip = rho(tokens(skip), h, w)  # (B, C, H, W), raw
        gate = rho(self.gate_proj(t), h, w)  # (B, H*W, C) -> (B, C, H, W), raw
        z = gate + (self.masag(skip, gate) if self.masag is not None else skip)
        if self.block == "lka":
            m = self.norm(z)
            for blk in self.blocks:
                m = blk(m)
            u = rho_inv(m)  # (B, C, H, W) -> (B, H*W, C), raw
        else:
            u = tokens(self.norm(z))
            for blk in self.blocks:
                u = blk(u, h, w)
        out = self.expand(u, h, w)
        if self.head is None:
            return out
        return self.head(unflatten(out, 4 * h, 4 * w))  # (B, 16HW, C) -> (B, C, 4H, 4W) -> logits


class MSA2NetDecoder(nn.Module):
    """Stage 3 (patch expansion of the deepest features) and skip stages 2, 1, 0."""

    def __init__(self, channels: tuple[int, ...], variant: str, num_classes: int) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels  # each patch expansion maps a stage's width to the next skip's
        self.expand3 = PatchExpand(c3, out_dim=c2)
        paper = variant == "paper"  # the released code runs LKA blocks and no MASAG in stage 2
        self.stage2 = DecoderStage(c2, "dae" if paper else "lka", gated=paper, out_dim=c1)
        self.stage1 = DecoderStage(c1, "lka", out_dim=c0)
        self.stage0 = DecoderStage(c0, "lka", num_classes=num_classes)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f0, f1, f2, f3 = feats
        t = self.expand3(tokens(f3), f3.shape[2], f3.shape[3])  # (B, 4*N3, C2)
        t = self.stage2(t, f2)
        t = self.stage1(t, f1)
        return self.stage0(t, f0)


def _size_pair(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    size = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != 2 or any(s <= 0 for s in size):
        raise ValueError(f"img_size must be an int or (H, W), got {img_size!r}")
    if any(s % SIZE_MULTIPLE for s in size):
        raise ValueError(
            f"img_size {size[0]}x{size[1]}: sides must be multiples of {SIZE_MULTIPLE} (MaxViT windows); "
            f"nearest valid: {_nearest_sizes(size)}"
        )
    return size  # type: ignore[return-value]


def _nearest_sizes(size: tuple[int, ...]) -> str:
    def near(s: int) -> list[int]:
        lo = max(SIZE_MULTIPLE, (s // SIZE_MULTIPLE) * SIZE_MULTIPLE)
        hi = max(SIZE_MULTIPLE, math.ceil(s / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        return sorted({lo, hi})

    options = sorted({(h, w) for h in near(size[0]) for w in near(size[1])})
    return ", ".join(f"{h}x{w}" for h, w in options)


class MSA2Net(nn.Module):
    """MSA2Net segmentation network.

    Args:
        variant: ``"paper"`` (default) or ``"released"``.
        num_classes: output channels (logits), background included.
        in_channels: 1 (repeated to 3 for the ImageNet encoder) or 3; other counts adapt the stem.
        img_size: input size, an int or (H, W), sides multiples of 32. Fixed at build time (timm's MaxViT
            sets its window size from it); the same weights load at every size.
        encoder: a timm MaxViT name; the paper's is ``maxvit_rmlp_small_rw_224``.
        pretrained_encoder: None, a local weights file for the encoder, or ``"hub"``.

    Input (B, in_channels, H, W) float, intensities normalised to the encoder's mean/std (0.5/0.5, i.e.
    [0, 1] -> [-1, 1]); output logits (B, num_classes, H, W).
    """

    def __init__(
        self,
        variant: str = "paper",
        num_classes: int = 9,
        in_channels: int = 1,
        img_size: int | tuple[int, int] = 224,
        encoder: str = "maxvit_rmlp_small_rw_224",
        pretrained_encoder: str | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
        self.config = MSA2NetConfig(variant, int(num_classes), int(in_channels), _size_pair(img_size), encoder)
        #: The ``config.json`` content of the folder the model was loaded from (:meth:`from_pretrained`), else None.
        self.pretrained_config: dict[str, Any] | None = None
        self.encoder = MaxViTEncoder(encoder, self.config.img_size, in_channels)
        self.decoder = MSA2NetDecoder(self.encoder.channels, variant, num_classes)
        self.init_decoder()
        if pretrained_encoder is not None:
            self.encoder.load_pretrained(pretrained_encoder)

    @property
    def variant(self) -> str:
        return self.config.variant

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def img_size(self) -> tuple[int, int]:
        return self.config.img_size

    def init_decoder(self) -> None:
        """Xavier-uniform Linear/Conv weights, zero biases; norms and layer scales keep their defaults."""
        for m in self.decoder.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that says what to do when ``x`` does not fit the built model."""
        if x.ndim != 4:
            raise ValueError(f"MSA2Net expects (B, C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"MSA2Net was built for {self.config.in_channels}-channel input, got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); build it with in_channels={x.shape[1]} or convert the input"
            )
        h, w = self.config.img_size
        if tuple(x.shape[2:]) != (h, w):
            ih, iw = x.shape[2:]
            raise ValueError(
                f"MSA2Net was built for {h}x{w} inputs, got {ih}x{iw}. timm's MaxViT fixes its window size when "
                f"built: resize the input to {h}x{w}, or build the model with img_size=(H, W), sides multiples "
                f"of {SIZE_MULTIPLE} (the same weights load); nearest valid sizes: {_nearest_sizes((ih, iw))}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.decoder(self.encoder(x))

    # ------------------------------------------------------------------------------------------
    # Hugging Face hub layout (see msa2net.models.pretrained)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        model_name: str | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        provenance: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        license: str | None = None,
        slice_orientation: str | None = None,
        repo_id: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the model as a hub-layout folder (:func:`msa2net.models.pretrained.save_pretrained`, atomic):
        ``config.json``, ``model.safetensors`` and a model card; :meth:`from_pretrained` of it gives bit-identical
        weights.

        Args:
            save_directory: Target folder: new or empty; a non-empty one needs ``overwrite``.
            model_name, preprocessing, class_names, provenance, evaluation, license, slice_orientation: The
                ``config.json`` fields (:func:`~msa2net.models.pretrained.build_pretrained_config`); None keeps the
                value of :attr:`pretrained_config` when the model was loaded with :meth:`from_pretrained`, else
                the default.
            repo_id: The hub repo the folder is meant for (the card's usage examples).
            overwrite: Replace a non-empty ``save_directory``.

        Returns:
            The folder.

        Raises:
            PretrainedError: a non-empty folder without ``overwrite``; class names or preprocessing that do not fit.
        """
        old = self.pretrained_config or {}
        config = build_pretrained_config(
            self,
            model_name=model_name or old.get("model_name"),
            preprocessing=preprocessing if preprocessing is not None else old.get("preprocessing"),
            class_names=class_names if class_names is not None else old.get("class_names"),
            provenance=provenance if provenance is not None else old.get("provenance"),
            evaluation=evaluation if evaluation is not None else old.get("evaluation"),
            license=license or old.get("license") or "mit",
            slice_orientation=slice_orientation or old.get("slice_orientation"),
            dataset=old.get("dataset"),  # the training data do not change with a re-save
        )
        return save_pretrained(self, save_directory, config=config, repo_id=repo_id, overwrite=overwrite)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> MSA2Net:
        """Load a model saved by :meth:`save_pretrained` (or ``msa2net publish``) from a folder or a hub repo id.

        A local folder needs nothing else (no run folder, no checkpoint, no network). A repo id (``owner/name``)
        uses the hub cache when the files are there, else downloads them; offline it fails within seconds with a
        message that says what to download and where to put it.

        Args:
            pretrained_model_name_or_path: A folder holding ``config.json`` and ``model.safetensors``, or a repo id.
            device: Where the model is put.
            revision: Hub branch, tag or commit.
            cache_dir: Hub cache folder (default the hub's).
            token: Hub token for private repos.
            local_files_only: Never use the network.

        Returns:
            The model in eval mode; its :attr:`pretrained_config` holds ``config.json`` (class names,
            preprocessing, provenance).

        Raises:
            PretrainedError: not a (complete, msa2net) folder, or weights that do not fit the described model.
            HubUnavailableError: a repo id whose files are not cached while the hub cannot be reached.
        """
        folder = resolve_pretrained(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
        config, state = read_pretrained(folder, [f.name for f in dataclasses.fields(MSA2NetConfig)])
        where = folder / CONFIG_NAME
        args = dict(config["model_args"])
        if "img_size" in args:
            args["img_size"] = tuple(args["img_size"])
        name = config.get("model_name")
        try:
            model = create_model(name, **args) if name in _REGISTRY else cls(**args)
        except (ValueError, RuntimeError) as exc:
            raise PretrainedError(f"{where}: cannot build {name or cls.__name__} with {args}: {exc}") from exc
        if not isinstance(model, cls):
            raise TypeError(f"{pretrained_model_name_or_path} holds a {type(model).__name__}, not a {cls.__name__}")
        mismatch = key_mismatch_report(model.state_dict(), state)
        if mismatch:
            raise PretrainedError(
                f"{folder / WEIGHTS_NAME} does not fit the model its {CONFIG_NAME} describes ({config['model_args']}):"
                "\n" + mismatch
            )
        model.load_state_dict(state, strict=True)
        if len(config["class_names"]) != model.num_classes:
            raise PretrainedError(
                f"{where} names {len(config['class_names'])} classes but the model has {model.num_classes}; "
                "class_names must name every output class, background first"
            )
        model.pretrained_config = config
        return model.to(device).eval()

    def preset_name(self) -> str:
        """The registered name that rebuilds this model (see :func:`registered_name`)."""
        return registered_name(self.config)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload msa2net model",
        revision: str | None = None,
        **save_kwargs: Any,
    ) -> str:
        """Save the model (:meth:`save_pretrained`, ``save_kwargs`` passed on) into a temporary folder and upload it
        to the hub model repo ``repo_id`` (created if needed).

        Returns:
            The commit URL.

        Raises:
            HubUnavailableError: the hub cannot be reached (within seconds).
            RuntimeError: the hub refused the upload (permissions, token).
        """
        with tempfile.TemporaryDirectory(prefix="msa2net-push-", ignore_cleanup_errors=True) as tmp:
            folder = self.save_pretrained(Path(tmp, "model"), repo_id=repo_id, **save_kwargs)
            return push_folder_to_hub(
                folder, repo_id, private=private, token=token, commit_message=commit_message, revision=revision
            )


# ----------------------------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, Callable[..., MSA2Net]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str) -> Callable[[Callable[..., MSA2Net]], Callable[..., MSA2Net]]:
    def wrap(fn: Callable[..., MSA2Net]) -> Callable[..., MSA2Net]:
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description
        return fn

    return wrap


def list_models() -> dict[str, str]:
    """Registered model names and one-line descriptions."""
    return dict(_DESCRIPTIONS)


def create_model(name: str, **kwargs: Any) -> MSA2Net:
    """Build a registered model; keyword arguments override its defaults (see :class:`MSA2Net`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def registered_name(config: MSA2NetConfig) -> str:
    """The registered preset whose variant and encoder are ``config``'s (the first registered), else
    ``msa2net_<variant>``; ``create_model(name, **config.to_dict())`` rebuilds the model either way."""
    for name, build in _REGISTRY.items():
        if getattr(build, "preset", None) == (config.variant, config.encoder):
            return name
    return f"msa2net_{config.variant}"


def _builder(variant: str, encoder: str) -> Callable[..., MSA2Net]:
    def build(**kwargs: Any) -> MSA2Net:
        kwargs.setdefault("variant", variant)
        kwargs.setdefault("encoder", encoder)
        return MSA2Net(**kwargs)

    build.preset = (variant, encoder)  # type: ignore[attr-defined]  # read by registered_name
    return build


register_model("msa2net_paper", "paper variant, maxvit_rmlp_small_rw_224 (76.6 M params)")(
    _builder("paper", "maxvit_rmlp_small_rw_224")
)
register_model("msa2net_released", "released-code variant, maxvit_rmlp_small_rw_224 (71.0 M params)")(
    _builder("released", "maxvit_rmlp_small_rw_224")
)
register_model("msa2net_nano", "paper design on maxvit_rmlp_nano_rw_256 (small, CPU-friendly)")(
    _builder("paper", "maxvit_rmlp_nano_rw_256")
)
register_model("msa2net_pico", "paper design on maxvit_rmlp_pico_rw_256 (smallest with ImageNet weights)")(
    _builder("paper", "maxvit_rmlp_pico_rw_256")
)
register_model("msa2net_test", "paper design on timm's test_maxvit (random init only; for tests)")(
    _builder("paper", "test_maxvit")
)
