"""Label maps drawn over images: the overlay colours, blended pixels, and captioned PNG panels with a legend.

:data:`OVERLAY_COLORS` are the class colours of every picture msa2net draws (PNG overlays, ``report.html``,
prediction previews), so a class has one colour everywhere.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path

__all__ = ["OVERLAY_COLORS", "OVERLAY_PAD", "overlay_rgb", "write_overlay_png"]

#: Overlay colours (RGB uint8) for label ids 0..15; id 0 (background) is never drawn.
OVERLAY_COLORS: np.ndarray = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
    ],
    dtype=np.uint8,
)


def _to_uint8_rgb(image2d: np.ndarray) -> np.ndarray:
    image = np.asarray(image2d, dtype=np.float64)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"overlay image must be (H, W) or (H, W, 3), got shape {image.shape}")
    finite = np.isfinite(image)
    values = image[finite]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    scaled = np.where(finite, (image - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    grey = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)


def overlay_rgb(
    image2d: np.ndarray, labels2d: np.ndarray, alpha: float = 0.4, num_classes: int | None = None
) -> np.ndarray:
    """The colour overlay of a label map (ids 0..15, 0 uncoloured) on a 2D image, as ``(H, W, 3)`` uint8 pixels.

    The image is min-max scaled over its finite values; label pixels are ``(1 - alpha) * image + alpha * colour``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _to_uint8_rgb(image2d)
    limit = _colour_limit(num_classes)
    labels = _check_labels(labels2d, rgb.shape[:2], limit, num_classes is not None)
    colours = OVERLAY_COLORS[labels].astype(np.float64)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colours
    return np.where((labels > 0)[..., None], np.round(blended), rgb).astype(np.uint8)


def _colour_limit(num_classes: int | None) -> int:
    limit = len(OVERLAY_COLORS) if num_classes is None else int(num_classes)
    if limit > len(OVERLAY_COLORS):
        raise ValueError(f"the overlay colour table has {len(OVERLAY_COLORS)} entries; got num_classes={limit}")
    return limit


def _check_labels(labels2d: np.ndarray, shape: tuple[int, ...], limit: int, explicit: bool) -> np.ndarray:
    """``labels2d`` as int64 after checking its shape and ids (0..limit-1)."""
    labels = np.asarray(labels2d)
    if labels.shape != tuple(shape):
        raise ValueError(f"labels shape {labels.shape} differs from image shape {tuple(shape)}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError("labels must be integer ids; got non-integer values (pass an argmax, not probabilities)")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= limit):
        raise ValueError(
            f"label ids must be in 0..{limit - 1}, found {int(labels.min())}..{int(labels.max())}"
            + ("" if explicit else f"; overlays support at most {len(OVERLAY_COLORS)} classes")
        )
    return labels


#: Blank border around the panels of an overlay PNG, and between them, in pixels.
OVERLAY_PAD = 8
_TEXT = (34, 34, 34)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px; Pillow's default font when it cannot be found."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            return ImageFont.truetype(str(Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _legend_entries(
    limit: int, class_names: Sequence[str] | None, present: Sequence[np.ndarray]
) -> list[tuple[str, tuple[int, int, int]]]:
    """``(name, colour)`` of every foreground class: all named classes, else ids 1..max id present."""
    if class_names is not None:
        count = min(len(class_names), limit)
    else:
        count = max([int(p.max()) + 1 for p in present if p.size] + [1])
    return [
        (str(class_names[i]) if class_names is not None else f"class {i}", tuple(int(v) for v in OVERLAY_COLORS[i]))
        for i in range(1, count)
    ]


def _legend_rows(entries: Sequence[tuple[str, tuple[int, int, int]]], width: int, draw: Any, font: Any) -> list[Any]:
    """Entries packed into rows that fit ``width`` pixels: ``[[(x, name, colour), ...], ...]``."""
    rows: list[list[tuple[int, str, tuple[int, int, int]]]] = [[]]
    x = 0
    for name, colour in entries:
        step = 16 + int(math.ceil(draw.textlength(name, font=font))) + 14
        if rows[-1] and x + step - 14 > width:
            rows.append([])
            x = 0
        rows[-1].append((x, name, colour))
        x += step
    return rows if rows[0] else []


def write_overlay_png(
    image2d: np.ndarray,
    labels2d: np.ndarray,
    path: str | os.PathLike[str],
    alpha: float = 0.4,
    num_classes: int | None = None,
    reference: np.ndarray | None = None,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    caption: str = "prediction",
    min_size: int = 256,
) -> Path:
    """Write :func:`overlay_rgb` panels (``reference`` as "ground truth" left of ``labels2d``) as a PNG, atomically.

    On white: an optional ``title``, the captioned panels enlarged by an integer factor to at least ``min_size``
    pixels, and a legend of the foreground classes (``class_names``, else "class 1" .. the largest id present).
    """
    from PIL import Image, ImageDraw

    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    panels = [(caption, overlay_rgb(image2d, labels2d, alpha, num_classes))]
    maps = [np.asarray(labels2d)]
    if reference is not None:
        panels.insert(0, ("ground truth", overlay_rgb(image2d, reference, alpha, num_classes)))
        maps.append(np.asarray(reference))
    height, width = panels[0][1].shape[:2]
    scale = max(1, math.ceil(min_size / max(height, width, 1)))
    panels = [(text, np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)) for text, rgb in panels]
    ph, pw = height * scale, width * scale

    title_font, font = _font(15), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = OVERLAY_PAD
    canvas_w = 2 * pad + len(panels) * pw + (len(panels) - 1) * pad
    if title:
        canvas_w = max(canvas_w, 2 * pad + int(math.ceil(probe.textlength(title, font=title_font))))
    entries = _legend_entries(_colour_limit(num_classes), class_names, maps)
    legend = _legend_rows(entries, canvas_w - 2 * pad, probe, font)
    title_h, caption_h, line_h = (22 if title else 0), 18, 18
    top = pad + title_h + caption_h
    canvas_h = top + ph + (pad + line_h * len(legend) if legend else 0) + pad

    canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=_TEXT, font=title_font)
    for i, (text, rgb) in enumerate(panels):
        x = pad + i * (pw + pad)
        draw.text((x, pad + title_h), text, fill=_TEXT, font=font)
        canvas.paste(Image.fromarray(rgb), (x, top))
    y = top + ph + pad
    for row in legend:
        for x, name, colour in row:
            draw.rectangle([pad + x, y + 3, pad + x + 11, y + 14], fill=colour, outline=_TEXT)
            draw.text((pad + x + 16, y), name, fill=_TEXT, font=font)
        y += line_h
    target = Path(path)
    with atomic_path(target) as tmp:
        canvas.save(tmp, format="PNG")
    return target
