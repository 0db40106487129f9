"""Anatomical orientation of volume grids: axis codes, and exact re-indexing (permutation and flips) between them.

Slicing cuts along the first array axis, so a grid's layout decides the anatomical plane a model sees. An axis
code names, per SimpleITK index axis ``(x, y, z)``, the LPS world direction it points toward (``"LPS"`` is the
identity, the MNI templates are ``"RAS"``), as SimpleITK's ``DICOMOrientImageFilter`` names it.
:class:`Reorientation` moves voxels between layouts without resampling, each keeping its world position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .io import Geometry

__all__ = ["AXIS_LETTERS", "Reorientation", "axis_code", "check_axis_code", "reorientation"]

#: ``(toward +world axis, toward -world axis)`` letters for LPS world axes x, y, z.
AXIS_LETTERS: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("S", "I"))
_LETTER = {letter: (world, 1 - 2 * side) for world, pair in enumerate(AXIS_LETTERS) for side, letter in enumerate(pair)}


def check_axis_code(code: str) -> str:
    """``code`` in upper case when it is a valid 3-letter axis code (one letter of each pair L/R, P/A, S/I)."""
    text = str(code).strip().upper()
    worlds = [_LETTER[c][0] for c in text if c in _LETTER]
    if len(text) != 3 or len(worlds) != 3 or sorted(worlds) != [0, 1, 2]:
        raise ValueError(
            f"axis code {code!r} is not valid: expected 3 letters, one of each pair L/R, P/A, S/I (e.g. 'RAS', 'LPS')"
        )
    return text


def _direction_matrix(geometry: Geometry) -> np.ndarray:
    if geometry.ndim != 3:
        raise ValueError(f"axis codes are defined for 3D grids; got a {geometry.ndim}D geometry")
    return np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)


def axis_code(geometry: Geometry) -> str:
    """The axis code of a 3D grid, e.g. ``"RAS"`` for the MNI templates; two index axes on one world axis: refused."""
    nearest = np.argmax(np.abs(_direction_matrix(geometry)), axis=0)  # the world axis closest to each column
    if sorted(nearest.tolist()) != [0, 1, 2]:
        # ITK would still name a code here (it resolves the clash), so the clash is refused before asking it
        raise ValueError(
            f"direction {geometry.direction} does not map its index axes to three distinct world axes (nearest "
            f"world axes {''.join('xyz'[w] for w in nearest)}); resample the image onto an axis-aligned grid first"
        )
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(geometry.direction)


@dataclass(frozen=True)
class Reorientation:
    """An exact re-indexing of a 3D grid: new index axis ``a`` is old index axis ``axes[a]``, reversed if ``flips[a]``.

    Indices are in SimpleITK order ``(x, y, z)``; arrays are ``(Z, Y, X)`` (optionally with a trailing channel
    axis), so array axis ``2 - a`` is index axis ``a``. Applying it moves voxels, never resamples: values are kept
    and :meth:`geometry` gives the grid on which each voxel keeps its world position.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        """True when nothing moves."""
        return self.axes == (0, 1, 2) and not any(self.flips)

    def inverse(self) -> Reorientation:
        """The re-indexing that undoes this one."""
        axes = tuple(self.axes.index(old) for old in range(3))  # the inverse permutation
        return Reorientation(axes, tuple(self.flips[new] for new in axes))  # type: ignore[arg-type]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Re-index a ``(Z, Y, X)`` or ``(Z, Y, X, C)`` array (a view where numpy allows; copy it to own it)."""
        array = np.asarray(array)
        if array.ndim not in (3, 4):
            raise ValueError(f"expected a (Z, Y, X) or (Z, Y, X, C) array, got shape {array.shape}")
        # new array axis (2 - a) is old array axis (2 - axes[a])
        order = [2 - self.axes[2 - k] for k in range(3)] + ([3] if array.ndim == 4 else [])
        out = array.transpose(order)
        flip_axes = tuple(2 - a for a in range(3) if self.flips[a])
        return np.flip(out, axis=flip_axes) if flip_axes else out

    def geometry(self, geometry: Geometry, size: tuple[int, int, int]) -> Geometry:
        """The geometry of the re-indexed grid, from the old one and its size ``(nx, ny, nz)``."""
        direction = _direction_matrix(geometry)
        spacing = np.asarray(geometry.spacing, dtype=np.float64)
        origin = np.asarray(geometry.origin, dtype=np.float64)
        for new, old in enumerate(self.axes):
            if self.flips[new]:  # the new first voxel is the old last one along this axis
                origin = origin + (size[old] - 1) * spacing[old] * direction[:, old]
        axes = list(self.axes)
        new_direction = direction[:, axes] * np.where(self.flips, -1.0, 1.0) + 0.0  # no negative zeros in headers
        return Geometry(tuple(spacing[axes]), tuple(origin), tuple(new_direction.ravel()))


def reorientation(source: str, target: str) -> Reorientation:
    """The re-indexing that turns a grid with axis code ``source`` into one with axis code ``target``.

    Example: ``reorientation("RAS", "AIR")`` makes an axial-first brain sagittal-first.
    """
    source, target = check_axis_code(source), check_axis_code(target)
    axes, flips = [], []
    for letter in target:
        world, sign = _LETTER[letter]
        old = next(i for i, c in enumerate(source) if _LETTER[c][0] == world)
        axes.append(old)
        flips.append(_LETTER[source[old]][1] != sign)
    return Reorientation(tuple(axes), tuple(flips))  # type: ignore[arg-type]
