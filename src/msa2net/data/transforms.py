"""Resizing, augmentation and the training/evaluation transform pipeline for 2D slices.

Everything random draws from a ``numpy.random.Generator`` passed by the caller (never the global RNG), so a
dataset seeding ``np.random.default_rng([seed, epoch, index])`` per item gets the same augmentation whatever
the number of loader workers. ``image`` is ``(H, W)`` or ``(H, W, C)``; ``label`` is ``(H, W)`` of class ids.
Geometric transforms act about the centre ``((H - 1) / 2, (W - 1) / 2)`` in ``(row, col)`` coordinates, fill
0 (background) from outside, resample images linearly (never overshooting) and labels by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
from scipy import ndimage

from .preprocessing import Preprocessing

__all__ = [
    "Augment",
    "FlipAugment",
    "MSA2NetAugment",
    "RECIPES",
    "SegmentationTransform",
    "TransUNetAugment",
    "build_transform",
    "resize_image",
    "resize_label",
    "rotation_matrix",
    "scale_matrix",
    "shear_matrix",
    "warp_affine",
    "warp_displacement",
]

RECIPES = ("msa2net", "transunet", "flip", "none")


class Augment(Protocol):
    """``aug(image, label, rng) -> (image, label)``, shapes and dtypes kept, no new label values but 0."""

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be two positive integers (height, width), got {tuple(size)!r}")
    return int(size[0]), int(size[1])


def _zoom(x: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    size_h, size_w = _check_size(size)
    h, w = x.shape[:2]
    if (h, w) == (size_h, size_w):
        return x.copy()  # the legacy code does not resample an image of the target size
    # Per channel: a 3-axis zoom would also spline-filter across the channel axis.
    return _per_channel(x, lambda c: ndimage.zoom(c, (size_h / h, size_w / w), order=order))


def resize_image(image: np.ndarray, size: Sequence[int], order: int = 3) -> np.ndarray:
    """Resize as the legacy TransUNet/MSA2Net pipeline: ``scipy.ndimage.zoom`` per channel, no clipping.

    Integer images are converted to ``float32`` first so that spline overshoot cannot wrap around.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    return _zoom(_float_image(image), size, order)


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a label map with nearest neighbour (``scipy.ndimage.zoom`` order 0), as the legacy protocol."""
    if label.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {label.shape}")
    return _zoom(label, size, 0)


def rotation_matrix(degrees: float) -> np.ndarray:
    """Forward ``(row, col)`` rotation matrix; ``warp_affine`` with ``rotation_matrix(90)`` equals ``np.rot90``."""
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def shear_matrix(degrees: float) -> np.ndarray:
    """Forward ``(row, col)`` matrix of a horizontal shear: ``col' = col + tan(degrees) * row``."""
    return np.array([[1.0, 0.0], [np.tan(np.deg2rad(degrees)), 1.0]])


def scale_matrix(scale_rows: float, scale_cols: float) -> np.ndarray:
    """Forward ``(row, col)`` matrix scaling rows and columns independently (> 1 enlarges the content)."""
    return np.array([[float(scale_rows), 0.0], [0.0, float(scale_cols)]])


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"label shape {label.shape} does not match image shape {image.shape[:2]} (H, W); "
            "image and label must be the same slice"
        )


def _per_channel(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if image.ndim == 2:
        return fn(image)
    return np.stack([fn(image[..., c]) for c in range(image.shape[2])], axis=-1)


def _float_image(image: np.ndarray) -> np.ndarray:
    return image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float32)


def _warp(image: np.ndarray, label: np.ndarray, image_order: int, fn: Callable) -> tuple[np.ndarray, np.ndarray]:
    return _per_channel(_float_image(image), lambda x: fn(x, image_order)), fn(label, 0)


def warp_affine(
    image: np.ndarray,
    label: np.ndarray,
    matrix: np.ndarray,
    translation: Sequence[float] = (0.0, 0.0),
    image_order: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Move pixel ``p`` to ``matrix @ (p - centre) + centre + translation`` in image and label (fill 0).

    ``scipy.ndimage.affine_transform`` with the inverse map and ``mode="grid-constant"``; the label uses
    order 0. Returns a float image of the input shape and a label of the input dtype.
    """
    _check_pair(image, label)
    h, w = label.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    inverse = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    # input = inverse @ (output - centre - translation) + centre
    offset = centre - inverse @ (centre + np.asarray(translation, dtype=np.float64))

    def warp(x: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(x, inverse, offset=offset, order=order, mode="grid-constant", cval=0.0)

    return _warp(image, label, image_order, warp)


def warp_displacement(
    image: np.ndarray, label: np.ndarray, displacement: np.ndarray, image_order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Output ``(r, c)`` takes the input at ``(r, c) + displacement[:, r, c]`` (``map_coordinates``, fill 0)."""
    _check_pair(image, label)
    h, w = label.shape
    if displacement.shape != (2, h, w):
        raise ValueError(f"displacement must have shape (2, {h}, {w}), got {displacement.shape}")
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = np.stack([rows + displacement[0], cols + displacement[1]])  # (2, H, W)

    def warp(x: np.ndarray, order: int) -> np.ndarray:
        return ndimage.map_coordinates(x, coords, order=order, mode="grid-constant", cval=0.0)

    return _warp(image, label, image_order, warp)


def _smooth_displacement(shape: tuple[int, int], grid: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """(2, H, W) field: normal displacements (std ``scale`` * size) on a grid x grid lattice, cubic-upsampled."""
    h, w = shape
    coarse = rng.normal(0.0, 1.0, size=(2, grid, grid)) * np.array([scale * h, scale * w])[:, None, None]
    # Sample the cubic spline through the control points at every pixel (control points span the image).
    pos = np.stack(np.meshgrid(np.linspace(0.0, grid - 1.0, h), np.linspace(0.0, grid - 1.0, w), indexing="ij"))
    return np.stack([ndimage.map_coordinates(coarse[i], pos, order=3, mode="nearest") for i in range(2)])


def _restore_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return image.astype(dtype, copy=False)


@dataclass
class MSA2NetAugment:
    """The MSA2Net authors' augmentation: ``min_ops..max_ops`` of :attr:`OPS`, without replacement, random order.

    Flips happen with ``flip_p`` once chosen; ``gaussian_noise`` adds N(0, ``noise_sigma``) shared by channels
    (the released code's 0.005 * 255 is in data units, huge on [0, 1] data: kept on purpose); ``gaussian_blur``
    uses mirrored borders; ``linear_contrast`` multiplies by U(``contrast_range``); ``scale``, ``rotate``,
    ``shear`` and ``translate`` (fraction of the size) draw from their ranges; ``piecewise_affine`` displaces a
    ``piecewise_grid``-square lattice by N(0, s * size), s ~ U(``piecewise_scale_range``), cubic-upsampled.
    ``uint8`` images are clipped to [0, 255] after every operation and rounded back to ``uint8``.
    """

    OPS: ClassVar[tuple[str, ...]] = (
        "vertical_flip",
        "horizontal_flip",
        "gaussian_noise",
        "gaussian_blur",
        "linear_contrast",
        "scale",
        "rotate",
        "shear",
        "piecewise_affine",
        "translate",
    )

    min_ops: int = 0
    max_ops: int = 4
    flip_p: float = 0.5
    noise_sigma: float = 0.005 * 255
    blur_sigma: float = 1.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    scale_range: tuple[float, float] = (0.5, 2.0)
    rotate_range: tuple[float, float] = (-40.0, 40.0)
    shear_range: tuple[float, float] = (-16.0, 16.0)
    piecewise_scale_range: tuple[float, float] = (0.008, 0.03)
    piecewise_grid: int = 4
    translate_range: tuple[float, float] = (-0.2, 0.2)
    image_order: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.min_ops <= self.max_ops <= len(self.OPS):
            raise ValueError(
                f"need 0 <= min_ops <= max_ops <= {len(self.OPS)}, got min_ops={self.min_ops}, max_ops={self.max_ops}"
            )
        if self.piecewise_grid < 2:
            raise ValueError(f"piecewise_grid must be >= 2 control points per axis, got {self.piecewise_grid}")

    def sample_ops(self, rng: np.random.Generator) -> list[str]:
        """Draw the operation names for one image, in application order."""
        k = int(rng.integers(self.min_ops, self.max_ops + 1))
        return [self.OPS[i] for i in rng.choice(len(self.OPS), size=k, replace=False)]

    def apply_op(
        self, name: str, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply one named operation; returns a float image and a label of the input dtype, shapes unchanged."""
        _check_pair(image, label)
        image = _float_image(image)
        h, w = label.shape
        if name in ("vertical_flip", "horizontal_flip"):
            if rng.random() < self.flip_p:
                axis = 0 if name == "vertical_flip" else 1
                return np.flip(image, axis).copy(), np.flip(label, axis).copy()
            return image, label
        if name == "gaussian_noise":
            noise = rng.normal(0.0, self.noise_sigma, size=(h, w)).astype(image.dtype)
            return image + (noise if image.ndim == 2 else noise[..., None]), label
        if name == "gaussian_blur":
            sigma = self.blur_sigma if image.ndim == 2 else (self.blur_sigma, self.blur_sigma, 0.0)
            return ndimage.gaussian_filter(image, sigma=sigma, mode="mirror"), label
        if name == "linear_contrast":
            return image * image.dtype.type(rng.uniform(*self.contrast_range)), label
        if name == "piecewise_affine":
            scale = rng.uniform(*self.piecewise_scale_range)
            field = _smooth_displacement((h, w), self.piecewise_grid, scale, rng)
            return warp_displacement(image, label, field, image_order=self.image_order)
        matrix, shift = np.eye(2), (0.0, 0.0)
        if name == "scale":
            matrix = scale_matrix(*rng.uniform(*self.scale_range, size=2))
        elif name == "rotate":
            matrix = rotation_matrix(rng.uniform(*self.rotate_range))
        elif name == "shear":
            matrix = shear_matrix(rng.uniform(*self.shear_range))
        elif name == "translate":
            ty, tx = rng.uniform(*self.translate_range, size=2)
            shift = (ty * h, tx * w)
        else:
            raise ValueError(f"unknown augmentation operation {name!r}; choose one of {', '.join(self.OPS)}")
        return warp_affine(image, label, matrix, shift, image_order=self.image_order)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment one image/label pair; output shapes and dtypes equal the input's."""
        _check_pair(image, label)
        out_image, out_label = image, label
        for name in self.sample_ops(rng):
            out_image, out_label = self.apply_op(name, out_image, out_label, rng)
            if np.issubdtype(image.dtype, np.integer):
                out_image = np.clip(out_image, np.iinfo(image.dtype).min, np.iinfo(image.dtype).max)
        return _restore_dtype(out_image, image.dtype), out_label.astype(label.dtype, copy=False)


@dataclass
class TransUNetAugment:
    """TransUNet's ``RandomGenerator`` with an explicit RNG.

    With ``p_rot_flip`` a ``k * 90`` degree turn then a mirror along a random axis; else with ``p_rotate`` an
    integer-degree rotation in ``-max_angle .. max_angle - 1`` (``scipy.ndimage.rotate``, fill 0). The image
    uses ``image_order`` (0, TransUNet's nearest neighbour), the label always 0.
    """

    p_rot_flip: float = 0.5
    p_rotate: float = 0.5
    max_angle: int = 20
    image_order: int = 0

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment one pair; output shapes (square images for rot90) and dtypes equal the input's."""
        _check_pair(image, label)
        if rng.random() < self.p_rot_flip:
            k = int(rng.integers(0, 4))
            axis = int(rng.integers(0, 2))
            image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
            label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
            return np.ascontiguousarray(image), np.ascontiguousarray(label)
        if rng.random() < self.p_rotate:
            angle = int(rng.integers(-int(self.max_angle), int(self.max_angle)))
            rotated = ndimage.rotate(_float_image(image), angle, axes=(1, 0), reshape=False, order=self.image_order)
            label = ndimage.rotate(label, angle, axes=(1, 0), reshape=False, order=0)
            return _restore_dtype(rotated, image.dtype), label
        return image, label


@dataclass
class FlipAugment:
    """Horizontal flip (columns reversed) with probability ``p``: the ISIC 2018 recipe."""

    p: float = 0.5

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Flip or return the pair unchanged; shapes and dtypes are kept."""
        _check_pair(image, label)
        if rng.random() < self.p:
            return image[:, ::-1].copy(), label[:, ::-1].copy()
        return image, label


class SegmentationTransform:
    """Training/evaluation pipeline: augment, resize, normalise, convert to tensors.

    ``transform(image, label, rng)`` augments at the source resolution (when ``augment`` is set), resizes the
    image with a cubic spline and the label with nearest neighbour to ``size`` (None keeps it), applies
    ``preprocessing.normalize`` (the model-space step checkpoints store; None leaves the unit data) and returns a
    ``float32`` ``(C, h, w)`` tensor and an ``int64`` ``(h, w)`` tensor. ``image`` must be the finite floating
    point output of :meth:`Preprocessing.to_unit`; ``label`` whole-number class ids.
    """

    def __init__(
        self,
        augment: Augment | None = None,
        size: Sequence[int] | None = (224, 224),
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.augment = augment
        self.size = None if size is None else _check_size(size)
        self.preprocessing = preprocessing

    def __repr__(self) -> str:
        return (
            f"SegmentationTransform(augment={type(self.augment).__name__ if self.augment else None}, "
            f"size={self.size}, preprocessing={self.preprocessing})"
        )

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform one slice; see the class docstring for the contract."""
        image = np.asarray(image)
        label = np.asarray(label)
        _check_pair(image, label)
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(
                f"image dtype {image.dtype} is not the unit representation: map raw intensities (CT in HU, 8-bit "
                "pixels, ...) with msa2net.data.preprocessing.Preprocessing.to_unit first"
            )
        n_bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        if n_bad:
            raise ValueError(
                f"image holds {n_bad} NaN/infinite values (shape {image.shape}); check the source file "
                "and the preprocessing that produced it"
            )
        if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(label, np.round(label)):
            raise ValueError(f"label (dtype {label.dtype}) holds non-integer values; labels must be whole class ids")
        if self.augment is not None:
            if rng is None:
                raise ValueError("an rng (numpy.random.Generator) is required when the transform augments")
            image, label = self.augment(image, label, rng)
        if self.size is not None:
            image = resize_image(image, self.size, order=3)
            label = resize_label(label, self.size)

        unit = image.astype(np.float32, copy=False)
        model_input = unit if self.preprocessing is None else self.preprocessing.normalize(unit)
        model_input = model_input[None] if model_input.ndim == 2 else model_input.transpose(2, 0, 1)
        label_out = np.rint(label).astype(np.int64) if not np.issubdtype(label.dtype, np.integer) else label
        return (
            torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(label_out, dtype=np.int64)),
        )


def build_transform(
    recipe: str, size: Sequence[int] | None = (224, 224), preprocessing: Preprocessing | None = None
) -> SegmentationTransform:
    """The pipeline of a named recipe (:data:`RECIPES`): augment before resizing, the legacy order."""
    augments: dict[str, Callable[[], Augment | None]] = {
        "msa2net": MSA2NetAugment,
        "transunet": TransUNetAugment,
        "flip": FlipAugment,
        "none": lambda: None,
    }
    if recipe not in augments:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return SegmentationTransform(augment=augments[recipe](), size=size, preprocessing=preprocessing)
