"""The MaxViT encoder: a timm model run stage by stage, and its ImageNet weights (local file or hub)."""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from .hub import HubUnreachable, check_hub, hub_endpoint
from .weights_io import WeightsFileError, key_mismatch_report, read_weights_file, unwrap_state_dict


class EncoderWeightsError(RuntimeError):
    """ImageNet weights for the encoder could not be found, read or matched."""


class MaxViTEncoder(nn.Module):
    """timm MaxViT without its classifier, returning the four stage outputs.

    Outputs f0..f3 at strides 4, 8, 16, 32; the model's final LayerNorm2d is applied to f3 only
    (the authors' feature extraction). A 1-channel input is repeated to 3 channels so the ImageNet
    stem applies unchanged; other channel counts use timm's ``in_chans`` (stem adapted when loading).

    Args:
        name: timm model name, e.g. ``maxvit_rmlp_small_rw_224``.
        img_size: (H, W), both multiples of 32; timm fixes window and grid sizes to img_size / 32.
        in_channels: channels of the network input.
    """

    def __init__(self, name: str, img_size: tuple[int, int], in_channels: int = 3) -> None:
        super().__init__()
        if not name.startswith(("maxvit", "maxxvit", "test_maxvit")):
            raise ValueError(f"encoder {name!r} is not a timm MaxViT; choose e.g. maxvit_rmlp_small_rw_224")
        self.name = name
        self.in_channels = in_channels
        self.backbone = timm.create_model(
            name, pretrained=False, num_classes=0, img_size=img_size, in_chans=3 if in_channels == 1 else in_channels
        )
        self.backbone.head = nn.Identity()  # classifier unused (it holds no parameters at num_classes=0)
        self.channels: tuple[int, ...] = tuple(info["num_chs"] for info in self.backbone.feature_info[1:5])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, H, W) -> [f0 (B, C0, H/4, W/4), f1, f2, f3 (B, C3, H/32, W/32)]."""
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.backbone.stem(x)
        feats = []
        for stage in self.backbone.stages:
            x = stage(x)
            feats.append(x)
        feats[-1] = self.backbone.norm(feats[-1])
        return feats

    # ------------------------------------------------------------------------------------------
    def hub_id(self) -> str | None:
        """The Hugging Face hub repository of this encoder's default ImageNet weights, if timm knows one."""
        return self.backbone.pretrained_cfg.get("hf_hub_id")

    def load_pretrained(self, source: str | os.PathLike) -> list[str]:
        """Load ImageNet weights into the backbone.

        Args:
            source: a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file of timm keys (the authors'
                ``maxvit_rmlp_small_rw_224_sw-6ef0ae4f.pth`` or timm's hub files), or ``"hub"``.

        Returns:
            The classifier keys that were present in the file and dropped (``head.*``).

        Raises:
            EncoderWeightsError: file missing or unreadable, hub unreachable, or keys that do not match.
        """
        path = self._resolve_hub_file() if str(source) == "hub" else Path(source)
        if not path.is_file():
            raise EncoderWeightsError(
                f"encoder weights file {str(path)!r} does not exist. Download {self._download_hint()} and pass "
                "its path with --pretrained-encoder PATH (pretrained_encoder=PATH in Python)."
            )
        try:
            state = unwrap_state_dict(read_weights_file(path), repr(str(path)))
        except WeightsFileError as exc:
            raise EncoderWeightsError(str(exc)) from exc
        for prefix in ("backbone.backbone.", "backbone."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
        dropped = sorted(k for k in state if k.startswith("head."))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        if self.in_channels not in (1, 3) and "stem.conv1.weight" in state:
            from timm.models import adapt_input_conv

            state["stem.conv1.weight"] = adapt_input_conv(self.in_channels, state["stem.conv1.weight"])
        mismatch = key_mismatch_report(self.backbone.state_dict(), state)
        if mismatch:
            raise EncoderWeightsError(
                f"encoder weights {str(path)!r} do not fit timm's {self.name}:\n{mismatch}"
                + f"\nThe file must hold ImageNet weights of {self.name} ({self._download_hint()})."
            )
        self.backbone.load_state_dict(state, strict=True)
        return dropped

    def _download_hint(self) -> str:
        hub = self.hub_id()
        hint = f"timm's {self.name} ImageNet weights"
        if hub:
            hint += f" (https://huggingface.co/{hub}, file model.safetensors)"
        if self.name == "maxvit_rmlp_small_rw_224":
            hint += " or the authors' file maxvit_rmlp_small_rw_224_sw-6ef0ae4f.pth"
        return hint

    def _resolve_hub_file(self) -> Path:
        hub = self.hub_id()
        if not hub:
            raise EncoderWeightsError(f"timm knows no hub weights for {self.name}; pass a local weights file")
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(hub, filename)
            if isinstance(cached, str):
                return Path(cached)
        try:
            endpoint = check_hub()
        except HubUnreachable as why:
            raise EncoderWeightsError(
                f"cannot reach {hub_endpoint()} to download the encoder weights {hub} ({why}). Download "
                f"model.safetensors from {hub_endpoint()}/{hub} (or the authors' "
                "maxvit_rmlp_small_rw_224_sw-6ef0ae4f.pth for the official encoder) on a machine with internet, copy "
                "it here and pass --pretrained-encoder PATH (pretrained_encoder=PATH in Python)."
            ) from None
        try:
            return Path(hf_hub_download(hub, "model.safetensors", endpoint=endpoint))
        except Exception as exc:  # network errors of several libraries
            raise EncoderWeightsError(f"downloading {hub} from the hub failed: {exc}") from exc
