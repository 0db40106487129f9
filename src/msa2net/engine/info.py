"""Model facts: parameters (used and the official tree's), FLOPs, encoder, input size, classes."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import MSA2Net, create_model, official_parameter_count
from .checkpoint import load_checkpoint, model_from_checkpoint

OFFICIAL_ENCODER = "maxvit_rmlp_small_rw_224"


def count_flops(model: MSA2Net, img_size: tuple[int, int] | None = None, batch: int = 1) -> int:
    """FLOPs of one forward pass, counted by ``torch.utils.flop_counter`` (a multiply-add counts 2)."""
    h, w = img_size or model.img_size
    if (h, w) != tuple(model.img_size):
        model = MSA2Net(**{**model.config.to_dict(), "img_size": (h, w)})
    x = torch.zeros(batch, model.config.in_channels, h, w)
    # timm's attention calls scaled_dot_product_attention, whose CPU kernel the counter does not see; count
    # the same attention through its explicit matmuls instead
    fused = [m for m in model.modules() if getattr(m, "fused_attn", None) is True]
    counter = FlopCounterMode(display=False)
    try:
        for m in fused:
            m.fused_attn = False
        with torch.inference_mode(), counter:
            model.eval()(x)
    finally:
        for m in fused:
            m.fused_attn = True
    return int(counter.get_total_flops())


def model_info(
    target: str | os.PathLike, img_size: tuple[int, int] | None = None, num_classes: int | None = None
) -> dict[str, Any]:
    """Facts about a registered model name or a checkpoint (ours or the authors')."""
    if os.path.exists(target):
        ckpt = load_checkpoint(target)
        model = model_from_checkpoint(ckpt)
        name, source = ckpt["model_name"], str(target)
        class_names = ckpt["class_names"]
    else:
        kwargs: dict[str, Any] = {}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if img_size is not None:  # encoders with relative-position tables have size-dependent parameter counts
            kwargs["img_size"] = tuple(img_size)
        model = create_model(str(target), **kwargs)
        name, source, class_names = str(target), "registry", None
    size = tuple(img_size or model.img_size)
    used = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {
        "model": name,
        "source": source,
        "variant": model.variant,
        "encoder": model.config.encoder,
        "encoder_channels": list(model.encoder.channels),
        "in_channels": model.config.in_channels,
        "num_classes": model.num_classes,
        "class_names": class_names,
        "img_size": list(size),
        "params_used": used,
        "gflops": count_flops(model, size) / 1e9,
    }
    if model.config.encoder == OFFICIAL_ENCODER:
        info["params_official_tree"] = official_parameter_count(model)
    return info


def format_info(info: dict[str, Any]) -> str:
    lines = [
        f"model            {info['model']} ({info['variant']} variant; from {info['source']})",
        f"encoder          {info['encoder']} (channels {info['encoder_channels']})",
        f"input            {info['in_channels']} x {info['img_size'][0]} x {info['img_size'][1]}",
        f"classes          {info['num_classes']}" + (f" {info['class_names']}" if info["class_names"] else ""),
        f"parameters used  {info['params_used'] / 1e6:.2f} M ({info['params_used']:,})",
    ]
    if "params_official_tree" in info:
        p = info["params_official_tree"]
        lines.append(f"official tree    {p / 1e6:.2f} M ({p:,}; includes modules that never run)")
    lines.append(
        f"GFLOPs           {info['gflops']:.2f} at 1x{info['in_channels']}x{info['img_size'][0]}x"
        f"{info['img_size'][1]} ({info['gflops'] / 2:.2f} GMac; torch.utils.flop_counter)"
    )
    return "\n".join(lines)
