"""Resizing, augmentation and the training/evaluation transform pipeline for 2D slices.

Everything random here draws from an explicit ``numpy.random.Generator`` passed by the caller, never from
the global RNG. A dataset can therefore build ``rng = np.random.default_rng([seed, epoch, index])`` per item
and get the same augmentation for the same item and epoch whatever the number of data-loader workers.

Conventions shared by all functions in this module:

* ``image`` is ``(H, W)`` (one channel) or ``(H, W, C)`` (channels last), either ``uint8`` in ``[0, 255]`` or
  floating point (usually ``[0, 1]``, the output of :meth:`msa2net.data.preprocessing.Preprocessing.to_unit`).
* ``label`` is ``(H, W)`` with integer class ids (any integer dtype, or floats holding whole numbers as in the
  TransUNet Synapse release).
* Geometric transforms act about the image centre ``((H - 1) / 2, (W - 1) / 2)`` in ``(row, col)`` pixel
  coordinates. Area moved in from outside the image is filled with 0 in both image and label (background).
  Images are resampled with linear interpolation (order 1, the default of the augmentation library the
  authors used, which never overshoots the input range); labels with nearest neighbour (order 0), so no new
  label values appear.

The augmentation recipes are:

* :class:`MSA2NetAugment`: the authors' recipe (see ``PROTOCOLS.md``), 0-4 of ten operations in random order.
* :class:`TransUNetAugment`: TransUNet's random rot90+flip or small rotation (defined but unused by MSA2Net).
* :class:`FlipAugment`: horizontal flip only (the ISIC 2018 recipe).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

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
    """Callable contract of every augmentation: ``aug(image, label, rng) -> (image, label)``.

    The output image has the input's shape and dtype; the output label has the input's shape and dtype and
    only values that were present in the input label, plus 0 where area came in from outside.
    """

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...


# ----------------------------------------------------------------------------------------------------------
# Resizing (the legacy protocol: scipy zoom, cubic spline for images, nearest for labels)
# ----------------------------------------------------------------------------------------------------------


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be two positive integers (height, width), got {tuple(size)!r}")
    return int(size[0]), int(size[1])


def resize_image(image: np.ndarray, size: Sequence[int], order: int = 3) -> np.ndarray:
    """Resize an image the way the legacy TransUNet/MSA2Net pipeline does.

    Calls ``scipy.ndimage.zoom(x, (size_h / h, size_w / w), order=order)`` with scipy's defaults
    (``mode="constant"``, prefiltered spline), once per channel for ``(H, W, C)`` input. As in the legacy
    code, an image that already has the target size is returned unchanged (as a copy), not resampled.
    Cubic interpolation may overshoot the input range slightly; values are not clipped (the legacy code
    does not clip either).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array. Floating-point input keeps its dtype; integer input (e.g.
            ``uint8``) is converted to ``float32`` first so that overshoot cannot wrap around.
        size: Target ``(height, width)`` in pixels.
        order: Spline order (3 = cubic, the legacy choice for images).

    Returns:
        Array of shape ``(size_h, size_w)`` or ``(size_h, size_w, C)``.
    """
    size_h, size_w = _check_size(size)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    h, w = image.shape[:2]
    if (h, w) == (size_h, size_w):
        return image.copy()
    factors = (size_h / h, size_w / w)
    if image.ndim == 2:
        out = ndimage.zoom(image, factors, order=order)
    else:
        # Per channel: a 3-axis zoom would also spline-filter across the channel axis.
        out = np.stack([ndimage.zoom(image[..., c], factors, order=order) for c in range(image.shape[2])], axis=-1)
    if out.shape[:2] != (size_h, size_w):  # scipy rounds h * (size_h / h); guard against float surprises
        raise RuntimeError(f"zoom produced {out.shape[:2]} instead of {(size_h, size_w)} from {(h, w)}")
    return out


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a label map with nearest neighbour (``scipy.ndimage.zoom`` order 0), as the legacy protocol.

    Args:
        label: ``(H, W)`` label map of any dtype.
        size: Target ``(height, width)``.

    Returns:
        ``(size_h, size_w)`` array of the input dtype holding only values present in the input.
    """
    size_h, size_w = _check_size(size)
    if label.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {label.shape}")
    h, w = label.shape
    if (h, w) == (size_h, size_w):
        return label.copy()
    out = ndimage.zoom(label, (size_h / h, size_w / w), order=0)
    if out.shape != (size_h, size_w):
        raise RuntimeError(f"zoom produced {out.shape} instead of {(size_h, size_w)} from {(h, w)}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Geometric building blocks
# ----------------------------------------------------------------------------------------------------------


def rotation_matrix(degrees: float) -> np.ndarray:
    """Forward ``(row, col)`` matrix of a rotation by ``degrees``.

    Positive angles turn the image the same way as ``np.rot90`` (counter-clockwise as displayed with row 0
    at the top): ``warp_affine`` with ``rotation_matrix(90)`` equals ``np.rot90`` on a square image.
    """
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


def warp_affine(
    image: np.ndarray,
    label: np.ndarray,
    matrix: np.ndarray,
    translation: Sequence[float] = (0.0, 0.0),
    image_order: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one affine map about the image centre to an image and its label.

    A pixel at ``p`` (``(row, col)``) moves to ``matrix @ (p - centre) + centre + translation``. Implemented
    with ``scipy.ndimage.affine_transform`` (which needs the inverse, output -> input, map) and
    ``mode="grid-constant"``, so content moved in from outside is 0 in both image and label.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``; integer images are converted to ``float32``.
        label: ``(H, W)`` label map.
        matrix: ``(2, 2)`` forward matrix in ``(row, col)`` coordinates (see :func:`rotation_matrix`).
        translation: Shift in pixels ``(rows, cols)``.
        image_order: Spline order for the image (labels always use 0).

    Returns:
        ``(image, label)``: float image of the input shape, label of the input dtype.
    """
    _check_pair(image, label)
    h, w = label.shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    inverse = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    # input = inverse @ (output - centre - translation) + centre
    offset = centre - inverse @ (centre + np.asarray(translation, dtype=np.float64))

    def warp(x: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(x, inverse, offset=offset, order=order, mode="grid-constant", cval=0.0)

    return _per_channel(_float_image(image), lambda x: warp(x, image_order)), warp(label, 0)


def warp_displacement(
    image: np.ndarray, label: np.ndarray, displacement: np.ndarray, image_order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Resample image and label through a dense backward displacement field.

    Output pixel ``(r, c)`` takes the input value at ``(r + displacement[0, r, c], c + displacement[1, r, c])``
    (``scipy.ndimage.map_coordinates``, ``mode="grid-constant"``, fill 0).

    Args:
        image: ``(H, W)`` or ``(H, W, C)``.
        label: ``(H, W)``.
        displacement: ``(2, H, W)`` row and column displacements in pixels.
        image_order: Spline order for the image (labels always use 0).

    Returns:
        ``(image, label)`` as in :func:`warp_affine`.
    """
    _check_pair(image, label)
    h, w = label.shape
    if displacement.shape != (2, h, w):
        raise ValueError(f"displacement must have shape (2, {h}, {w}), got {displacement.shape}")
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = np.stack([rows + displacement[0], cols + displacement[1]])  # (2, H, W)

    def warp(x: np.ndarray, order: int) -> np.ndarray:
        return ndimage.map_coordinates(x, coords, order=order, mode="grid-constant", cval=0.0)

    return _per_channel(_float_image(image), lambda x: warp(x, image_order)), warp(label, 0)


def _smooth_displacement(shape: tuple[int, int], grid: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """(2, H, W) field: normal displacements (std ``scale`` * size) on a grid x grid lattice, cubic-upsampled."""
    h, w = shape
    coarse = rng.normal(0.0, 1.0, size=(2, grid, grid))
    coarse[0] *= scale * h
    coarse[1] *= scale * w
    # Sample the cubic spline through the control points at every pixel (control points span the image).
    rr = np.linspace(0.0, grid - 1.0, h)
    cc = np.linspace(0.0, grid - 1.0, w)
    pos = np.stack(np.meshgrid(rr, cc, indexing="ij"))  # (2, H, W) in control-point units
    return np.stack([ndimage.map_coordinates(coarse[i], pos, order=3, mode="nearest") for i in range(2)])


# ----------------------------------------------------------------------------------------------------------
# Augmentation recipes
# ----------------------------------------------------------------------------------------------------------


def _restore_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return image.astype(dtype, copy=False)


class MSA2NetAugment:
    """The MSA2Net authors' augmentation: 0-4 of ten operations, sampled without replacement, random order.

    Per call, ``k`` is drawn uniformly from ``min_ops..max_ops`` (default 0..4) and ``k`` distinct operations
    are drawn from :attr:`OPS` and applied in the drawn order. The operations and their defaults:

    ==================  ==============================================================================
    ``vertical_flip``    flips rows with probability ``flip_p`` (0.5) once chosen
    ``horizontal_flip``  flips columns with probability ``flip_p`` (0.5) once chosen
    ``gaussian_noise``   adds N(0, ``noise_sigma``) per pixel (shared by channels); the default
                         0.005 * 255 = 1.275 is in data units, i.e. huge on [0, 1] data. This quirk of the
                         released code is kept on purpose; pass e.g. ``noise_sigma=0.005`` to fix it.
    ``gaussian_blur``    Gaussian filter, sigma ``blur_sigma`` (1) in pixels, per channel, mirrored borders
    ``linear_contrast``  multiplies by f ~ U(``contrast_range``) = U(0.5, 1.5) (centred at 0: x * f)
    ``scale``            scales rows and columns independently by U(``scale_range``) = U(0.5, 2)
    ``rotate``           rotates by U(``rotate_range``) = U(-40, 40) degrees
    ``shear``            shears by U(``shear_range``) = U(-16, 16) degrees
    ``piecewise_affine`` smooth local warp: a ``piecewise_grid`` x ``piecewise_grid`` (4 x 4) lattice of
                         control points displaced by N(0, s * size) with s ~ U(``piecewise_scale_range``)
                         = U(0.008, 0.03), cubic-interpolated to a dense field
    ``translate``        shifts rows and columns independently by U(``translate_range``) = U(-0.2, 0.2)
                         times the image height / width
    ==================  ==============================================================================

    Geometric operations move image and label together about the image centre (see the module docstring);
    the image is resampled with ``image_order`` (1, linear), the label with nearest neighbour. Intensity
    operations leave the label untouched. ``uint8`` images are clipped to [0, 255] after every operation and
    rounded back to ``uint8``; floating-point images keep their dtype and are not clipped.
    """

    OPS: tuple[str, ...] = (
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

    def __init__(
        self,
        min_ops: int = 0,
        max_ops: int = 4,
        flip_p: float = 0.5,
        noise_sigma: float = 0.005 * 255,
        blur_sigma: float = 1.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        scale_range: tuple[float, float] = (0.5, 2.0),
        rotate_range: tuple[float, float] = (-40.0, 40.0),
        shear_range: tuple[float, float] = (-16.0, 16.0),
        piecewise_scale_range: tuple[float, float] = (0.008, 0.03),
        piecewise_grid: int = 4,
        translate_range: tuple[float, float] = (-0.2, 0.2),
        image_order: int = 1,
    ) -> None:
        if not 0 <= min_ops <= max_ops <= len(self.OPS):
            raise ValueError(
                f"need 0 <= min_ops <= max_ops <= {len(self.OPS)}, got min_ops={min_ops}, max_ops={max_ops}"
            )
        if piecewise_grid < 2:
            raise ValueError(f"piecewise_grid must be >= 2 control points per axis, got {piecewise_grid}")
        self.min_ops = min_ops
        self.max_ops = max_ops
        self.flip_p = flip_p
        self.noise_sigma = noise_sigma
        self.blur_sigma = blur_sigma
        self.contrast_range = contrast_range
        self.scale_range = scale_range
        self.rotate_range = rotate_range
        self.shear_range = shear_range
        self.piecewise_scale_range = piecewise_scale_range
        self.piecewise_grid = piecewise_grid
        self.translate_range = translate_range
        self.image_order = image_order

    def sample_ops(self, rng: np.random.Generator) -> list[str]:
        """Draw the operation names for one image, in application order."""
        k = int(rng.integers(self.min_ops, self.max_ops + 1))
        return [self.OPS[i] for i in rng.choice(len(self.OPS), size=k, replace=False)]

    def apply_op(
        self, name: str, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply one named operation (drawing its random parameters from ``rng``).

        Returns a floating-point image (integer input is converted to ``float32``) and a label of the
        input dtype; shapes are unchanged.
        """
        _check_pair(image, label)
        image = _float_image(image)
        h, w = label.shape
        if name == "vertical_flip":
            if rng.random() < self.flip_p:
                return image[::-1].copy(), label[::-1].copy()
            return image, label
        if name == "horizontal_flip":
            if rng.random() < self.flip_p:
                return image[:, ::-1].copy(), label[:, ::-1].copy()
            return image, label
        if name == "gaussian_noise":
            noise = rng.normal(0.0, self.noise_sigma, size=(h, w)).astype(image.dtype)
            return image + (noise if image.ndim == 2 else noise[..., None]), label
        if name == "gaussian_blur":
            sigma = self.blur_sigma if image.ndim == 2 else (self.blur_sigma, self.blur_sigma, 0.0)
            return ndimage.gaussian_filter(image, sigma=sigma, mode="mirror"), label
        if name == "linear_contrast":
            return image * image.dtype.type(rng.uniform(*self.contrast_range)), label
        if name == "scale":
            sy, sx = rng.uniform(*self.scale_range, size=2)
            return warp_affine(image, label, scale_matrix(sy, sx), image_order=self.image_order)
        if name == "rotate":
            angle = rng.uniform(*self.rotate_range)
            return warp_affine(image, label, rotation_matrix(angle), image_order=self.image_order)
        if name == "shear":
            angle = rng.uniform(*self.shear_range)
            return warp_affine(image, label, shear_matrix(angle), image_order=self.image_order)
        if name == "piecewise_affine":
            scale = rng.uniform(*self.piecewise_scale_range)
            field = _smooth_displacement((h, w), self.piecewise_grid, scale, rng)
            return warp_displacement(image, label, field, image_order=self.image_order)
        if name == "translate":
            ty, tx = rng.uniform(*self.translate_range, size=2)
            return warp_affine(image, label, np.eye(2), (ty * h, tx * w), image_order=self.image_order)
        raise ValueError(f"unknown augmentation operation {name!r}; choose one of {', '.join(self.OPS)}")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment one image/label pair; output shapes and dtypes equal the input's."""
        _check_pair(image, label)
        is_int = np.issubdtype(image.dtype, np.integer)
        out_image, out_label = image, label
        for name in self.sample_ops(rng):
            out_image, out_label = self.apply_op(name, out_image, out_label, rng)
            if is_int:
                info = np.iinfo(image.dtype)
                out_image = np.clip(out_image, info.min, info.max)
        return _restore_dtype(out_image, image.dtype), out_label.astype(label.dtype, copy=False)


class TransUNetAugment:
    """TransUNet's training augmentation (its ``RandomGenerator``), re-implemented with an explicit RNG.

    With probability ``p_rot_flip`` (0.5) the pair is turned by ``k * 90`` degrees (``k`` uniform in 0..3)
    and then mirrored along a randomly chosen axis (rows or columns). Otherwise, with probability
    ``p_rotate`` (0.5, so 0.25 overall) it is rotated about the centre by an integer angle drawn uniformly
    from ``-max_angle .. max_angle - 1`` degrees (TransUNet's integer draw) with ``scipy.ndimage.rotate``
    (``reshape=False``, constant 0 fill). The label always uses nearest neighbour; TransUNet also resamples
    the image with nearest neighbour (``image_order=0``, the faithful default); pass ``image_order=3`` for
    cubic image interpolation. Otherwise the pair is returned unchanged.
    """

    def __init__(
        self, p_rot_flip: float = 0.5, p_rotate: float = 0.5, max_angle: int = 20, image_order: int = 0
    ) -> None:
        self.p_rot_flip = p_rot_flip
        self.p_rotate = p_rotate
        self.max_angle = int(max_angle)
        self.image_order = image_order

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
            angle = int(rng.integers(-self.max_angle, self.max_angle))
            rotated = ndimage.rotate(_float_image(image), angle, axes=(1, 0), reshape=False, order=self.image_order)
            label = ndimage.rotate(label, angle, axes=(1, 0), reshape=False, order=0)
            return _restore_dtype(rotated, image.dtype), label
        return image, label


class FlipAugment:
    """Horizontal flip (columns reversed) with probability ``p``: the ISIC 2018 recipe."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Flip or return the pair unchanged; shapes and dtypes are kept."""
        _check_pair(image, label)
        if rng.random() < self.p:
            return image[:, ::-1].copy(), label[:, ::-1].copy()
        return image, label


# ----------------------------------------------------------------------------------------------------------
# Full pipeline
# ----------------------------------------------------------------------------------------------------------


class SegmentationTransform:
    """Training/evaluation pipeline: augment, resize, normalise, convert to tensors.

    Called as ``transform(image, label, rng)`` and returns ``(image_tensor, label_tensor)``:

    1. ``augment(image, label, rng)`` at the source resolution (skipped when ``augment`` is None);
    2. resize the image with a cubic spline (order 3) and the label with nearest neighbour to ``size``
       (:func:`resize_image`, :func:`resize_label`; skipped when ``size`` is None or already matching);
    3. ``preprocessing.normalize`` (the model-space step of the :class:`Preprocessing` that checkpoints store and
       prediction re-applies; skipped when ``preprocessing`` is None);
    4. channels first.

    Args:
        augment: Any :class:`Augment` callable, or None.
        size: Output ``(height, width)``, or None to keep the input size.
        preprocessing: The dataset's :class:`~msa2net.data.preprocessing.Preprocessing`; None leaves the unit data.

    Input contract: ``image`` is the unit representation (:meth:`Preprocessing.to_unit` output), floating point
    ``(H, W)`` or ``(H, W, C)``, all values finite; ``label`` ``(H, W)`` with whole-number values. Output:
    ``float32`` tensor ``(C, h, w)`` (``C`` = 1 for ``(H, W)`` input) and ``int64`` tensor ``(h, w)`` whose values
    are a subset of the input label's values plus possibly 0 (background moved in by geometric augmentation).
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
        if not np.issubdtype(label.dtype, np.integer):
            if not np.array_equal(label, np.round(label)):
                raise ValueError(
                    f"label (dtype {label.dtype}) holds non-integer values; labels must be whole class ids"
                )
        if self.augment is not None and rng is None:
            raise ValueError("an rng (numpy.random.Generator) is required when the transform augments")

        if self.augment is not None:
            image, label = self.augment(image, label, rng)
        if self.size is not None:
            image = resize_image(image, self.size, order=3)
            label = resize_label(label, self.size)

        unit = image.astype(np.float32, copy=False)
        model_input = unit if self.preprocessing is None else self.preprocessing.normalize(unit)
        if model_input.ndim == 2:
            model_input = model_input[None]  # (H, W) -> (1, H, W)
        else:
            model_input = model_input.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
        label_out = np.rint(label).astype(np.int64) if not np.issubdtype(label.dtype, np.integer) else label
        return (
            torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(label_out, dtype=np.int64)),
        )


def build_transform(
    recipe: str, size: Sequence[int] | None = (224, 224), preprocessing: Preprocessing | None = None
) -> SegmentationTransform:
    """Build the pipeline for a named augmentation recipe.

    Args:
        recipe: ``"msa2net"`` (:class:`MSA2NetAugment`, Synapse training), ``"transunet"``
            (:class:`TransUNetAugment`), ``"flip"`` (:class:`FlipAugment`, ISIC training) or ``"none"``
            (evaluation).
        size: Output ``(height, width)`` (None keeps the input size).
        preprocessing: The dataset's :class:`~msa2net.data.preprocessing.Preprocessing`, whose ``normalize`` maps
            unit data to model input (None: outputs stay in the unit representation).

    Returns:
        A :class:`SegmentationTransform` that augments before resizing (the legacy order).

    Raises:
        ValueError: ``recipe`` is not one of :data:`RECIPES`.
    """
    augments: dict[str, Callable[[], Augment | None]] = {
        "msa2net": MSA2NetAugment,
        "transunet": TransUNetAugment,
        "flip": FlipAugment,
        "none": lambda: None,
    }
    if recipe not in augments:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return SegmentationTransform(augment=augments[recipe](), size=size, preprocessing=preprocessing)
