"""Surface distances with bounded work: the engine behind :func:`~msa2net.metrics.hd95` and
:func:`~msa2net.metrics.surface_dice` (see the comment below for how it decides what to compute exactly)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ._masks import _bounding_box, _surface

# ----------------------------------------------------------------------------------------------
# Surface distances with bounded work
# ----------------------------------------------------------------------------------------------
#
# HD95 is an order statistic of the surface distances of both directions pooled (the values at two neighbouring
# ranks, interpolated) and NSD a count of distances within the tolerance. Neither needs every distance exactly:
# a distance whose bounds put it certainly below (or above) the values at the deciding ranks, or certainly on one
# side of the tolerance, can be replaced by one of its bounds without changing the figure. Per direction (the
# surface voxels of one mask, the *queries*, to the surface of the other, the *targets*) and per metric (voxels,
# millimetres):
#
# 1. Bounds. Small crops: exact distances from one feature transform of the crop. Otherwise, when the queries are
#    compact (a ground-truth organ against a noisy prediction), a feature transform of their bounding box padded
#    by a margin: exact for each query whose distance is within the margin, at least the margin for the others.
#    When the queries are spread over the crop (a noisy prediction), bounds per block of voxels, shared by the
#    queries of the block: a distance transform of the blocks that hold a target, on the grid of blocks, gives the
#    distance between block centres, and every voxel is within half a block diagonal of its block's centre.
# 2. Selection: the entries (queries or blocks of queries, weighted by their number of queries) whose bounds
#    straddle the values at the ranks that decide the 95th percentile (a few ranks around numpy's interpolation
#    index, so that its rounding does not matter), or the tolerance.
# 3. Exact distances for the queries of those entries: a feature transform of their bounding box padded by the
#    largest upper bound (which holds every nearest target) or a k-d tree of the target voxels, whichever is
#    cheaper.
# 4. The figures from the decided bounds (each repeated for its queries) with the exact distances added:
#    np.percentile of an array with the same size and the same values at the deciding ranks as the array of all
#    distances, so the result is bit-for-bit that of the full computation.
#
# Exact distances use distance_transform_edt's arithmetic (integer offsets to the nearest target, times the
# spacing, squared, summed over axes in order, square root), so values in voxels are bit-for-bit those of a full
# distance transform (and of MedPy). In millimetres two targets at the same real distance may differ in the last
# bit after rounding, and the feature transform and the k-d tree may pick different ones: a difference of one
# unit in the last place at most, far below 1e-9.

#: A metric: ``None`` for voxels (unit spacing), else the spacing per axis in mm.
_Sampling = tuple[float, ...] | None

#: Relative costs, in units of one voxel of a feature transform (measured on x86 CPUs).
_TREE_BUILD_COST = 2.0
_TREE_QUERY_COST = 8.0


@dataclass(frozen=True)
class _Plan:
    """How surface distances are computed (tests force each path); every plan gives the same figures.

    Crops under small_crop_voxels get one feature transform; bounds and exact choose the paths ("auto":
    the cheaper); block and margin are in voxels along the finest axis; a speculative window is used when it
    holds at most window_share of the crop.
    """

    small_crop_voxels: int = 1 << 21
    bounds: str = "auto"
    exact: str = "auto"
    block: int = 4
    margin: int = 8
    window_share: float = 0.5


_DEFAULT_PLAN = _Plan()


def _spacing_array(sampling: _Sampling, ndim: int) -> np.ndarray:
    return np.ones(ndim) if sampling is None else np.asarray(sampling, dtype=np.float64)


def _offset_norms(offsets: np.ndarray, sampling: _Sampling) -> np.ndarray:
    """Lengths of integer offset vectors ``(ndim, n)``, with the arithmetic of ``distance_transform_edt``."""
    squares = offsets.astype(np.float64)
    if sampling is not None:
        squares *= np.asarray(sampling, dtype=np.float64)[:, None]
    np.multiply(squares, squares, out=squares)
    return np.sqrt(np.add.reduce(squares, axis=0))


def _box(points: np.ndarray, pad: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of ``points`` padded by ``pad`` voxels per axis, clipped to ``shape``: (starts, stops)."""
    starts = np.maximum(points.min(axis=1) - pad, 0)
    stops = np.minimum(points.max(axis=1) + 1 + pad, np.asarray(shape))
    return starts, stops


class _Side:
    """The surface of one mask, as a mask (targets) and, computed when first asked for, as points (queries)."""

    def __init__(self, mask: np.ndarray, box: tuple[slice, ...] | None = None) -> None:
        self.mask = _surface(mask)
        self.count = int(np.count_nonzero(self.mask))
        self._points: np.ndarray | None = None
        self._blocks: dict[tuple[int, ...], np.ndarray] = {}
        self._box = box  # the mask's bounding box is its surface's

    @property
    def box(self) -> tuple[slice, ...]:
        """Bounding box of the surface (non-empty)."""
        if self._box is None:
            box = _bounding_box(self.mask)
            assert box is not None  # the surface of a non-empty mask
            self._box = box
        return self._box

    @property
    def points(self) -> np.ndarray:
        """Coordinates ``(ndim, n)`` of the surface voxels, in C order."""
        if self._points is None:
            mask = self.mask
            self._points = np.stack(np.unravel_index(np.flatnonzero(mask), mask.shape)).reshape(mask.ndim, -1)
        return self._points

    def blocked(self, factors: np.ndarray) -> np.ndarray:
        """The surface zero-padded to whole blocks, viewed as ``(g0, f0, g1, f1, ...)`` (kept for reuse)."""
        key = tuple(int(f) for f in factors)
        if key not in self._blocks:
            grid = [-(-n // f) for n, f in zip(self.mask.shape, key)]
            padded = np.zeros([g * f for g, f in zip(grid, key)], dtype=bool)
            padded[tuple(slice(0, n) for n in self.mask.shape)] = self.mask
            self._blocks[key] = padded.reshape([v for pair in zip(grid, key) for v in pair])
        return self._blocks[key]


def _window_distances(
    queries: np.ndarray, target: np.ndarray, sampling: _Sampling, starts: np.ndarray, stops: np.ndarray
) -> np.ndarray | None:
    """Distance from each query (inside the window) to the nearest target voxel inside the window.

    ``None`` when the window holds no target voxel.
    """
    window = tuple(slice(int(a), int(b)) for a, b in zip(starts, stops))
    sub = target[window]
    if not sub.any():
        return None
    features = ndimage.distance_transform_edt(~sub, sampling=sampling, return_distances=False, return_indices=True)
    local = queries - starts[:, None]
    return _offset_norms(features[(slice(None), *local)] - local, sampling)


def _tree_distances(queries: np.ndarray, target_points: np.ndarray, sampling: _Sampling) -> np.ndarray:
    """Distance from each query to the nearest of ``target_points`` ``(ndim, m)``, via a k-d tree."""
    scale = _spacing_array(sampling, queries.shape[0])
    tree = cKDTree(target_points.T * scale, balanced_tree=False)
    _, nearest = tree.query(queries.T * scale)
    return _offset_norms(target_points[:, nearest] - queries, sampling)


@dataclass
class _Bounds:
    """Bounds of the distances of one direction, per entry (a query voxel, or a block of them with its weight,
    cells index and block factors); upper == lower where a distance is exact."""

    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray | None = None
    cells: np.ndarray | None = None
    factors: np.ndarray | None = None

    def weights(self) -> np.ndarray:
        return np.ones(self.lower.size, dtype=np.int64) if self.weight is None else self.weight

    def queries(self, side: _Side, entries: np.ndarray) -> np.ndarray:
        """Coordinates ``(ndim, n)`` of the query voxels of ``entries``."""
        if self.weight is None:
            return side.points[:, entries]
        assert self.cells is not None and self.factors is not None
        blocked = side.blocked(self.factors)
        grid = blocked.shape[0::2]
        cells = np.unravel_index(self.cells[entries], grid)
        index = tuple(v for axis_cells in cells for v in (axis_cells, slice(None)))
        found = np.nonzero(blocked[index])  # (entry, offset per axis)
        return np.stack([cells[axis][found[0]] * self.factors[axis] + found[axis + 1] for axis in range(len(grid))])


def _exact_bounds(side: _Side, target: np.ndarray, sampling: _Sampling) -> _Bounds:
    shape = target.shape
    found = _window_distances(side.points, target, sampling, np.zeros(len(shape), np.intp), np.asarray(shape))
    assert found is not None  # the crop holds the target surface
    return _Bounds(found, found)


def _window_bounds(side: _Side, target: np.ndarray, sampling: _Sampling, pad: np.ndarray) -> _Bounds:
    """Bounds from a feature transform of the queries' box padded by ``pad``: exact within the margin.

    A target outside the window is farther than ``margin = min(pad * spacing)`` from every query, so a distance
    found within the margin is exact, and any other distance is at least the margin.
    """
    starts, stops = _box(side.points, pad, target.shape)
    margin = float(np.min(pad * _spacing_array(sampling, target.ndim))) * (1.0 - 1e-12)
    found = _window_distances(side.points, target, sampling, starts, stops)
    if found is None:
        return _Bounds(np.full(side.count, margin), np.full(side.count, np.inf))
    if not starts.any() and np.array_equal(stops, target.shape):
        return _Bounds(found, found)  # the window is the whole crop
    return _Bounds(np.where(found <= margin, found, margin), found)


def _block_counts(blocked: np.ndarray) -> np.ndarray:
    """Voxels set per block of a ``(g0, f0, g1, f1, ...)`` view: ``sum(axis=(1, 3, ...))``, one axis at a time.

    Adding whole slabs is an order of magnitude faster than numpy's reduction over the small interleaved axes.
    """
    counts = blocked.view(np.uint8)
    for axis in range(1, blocked.ndim // 2 + 1):  # the next block axis, once the previous ones are summed
        slabs = [counts[(slice(None),) * axis + (i,)] for i in range(counts.shape[axis])]
        total = slabs[0].astype(np.int32)
        for slab in slabs[1:]:
            total += slab
        counts = total
    return counts.astype(np.int64)


def _block_factors(sampling: _Sampling, shape: tuple[int, ...], block: int) -> np.ndarray:
    spacing = _spacing_array(sampling, len(shape))
    factors = np.maximum(np.rint(block * spacing.min() / spacing), 1).astype(np.intp)
    return np.minimum(factors, np.maximum(np.asarray(shape, dtype=np.intp), 1))


def _block_bounds(side: _Side, targets: _Side, sampling: _Sampling, block: int) -> _Bounds:
    """Bounds per block of queries, from a distance transform of the blocks that hold a target voxel.

    A voxel lies within half the block diagonal ``h`` of its block's centre (in partial blocks at the border
    too), so the distance from any query of a block to the nearest target is within ``2h`` of the distance from
    the block's centre to the nearest centre of a block holding a target.
    """
    shape = side.mask.shape
    factors = _block_factors(sampling, shape, block)
    spacing = _spacing_array(sampling, len(shape))
    counts = _block_counts(side.blocked(factors))
    if targets.count * 64 < int(np.prod(shape)):  # sparse targets: from their points
        occupied = np.zeros(counts.shape, dtype=bool)
        occupied[tuple(targets.points // factors[:, None])] = True
    else:
        occupied = _block_counts(targets.blocked(factors)) > 0
    block_sampling = tuple(float(v) for v in factors * spacing)
    centre = ndimage.distance_transform_edt(~occupied, sampling=block_sampling).ravel()
    cells = np.flatnonzero(counts)
    centre = centre[cells]
    slack = float(np.sqrt(np.sum(((factors - 1) * spacing) ** 2)))
    guard = 1e-9 * (centre + slack + 1.0)  # rounding of both computations
    lower = np.maximum(centre - slack - guard, 0.0)
    return _Bounds(lower, centre + slack + guard, counts.ravel()[cells], cells, factors)


def _directed_bounds(queries: _Side, targets: _Side, sampling: _Sampling, plan: _Plan) -> _Bounds:
    """Bounds of the distances from the surface voxels of ``queries`` to the surface of ``targets`` (step 1)."""
    shape = targets.mask.shape
    volume = int(np.prod(shape))
    if volume < plan.small_crop_voxels:
        return _exact_bounds(queries, targets.mask, sampling)
    spacing = _spacing_array(sampling, len(shape))
    pad = np.ceil(plan.margin * spacing.min() / spacing).astype(np.intp)
    if plan.bounds == "window":
        return _window_bounds(queries, targets.mask, sampling, pad)
    if plan.bounds == "auto":
        padded = [min(b.stop + p, n) - max(b.start - p, 0) for b, p, n in zip(queries.box, pad, shape)]
        if math.prod(padded) <= plan.window_share * volume:
            return _window_bounds(queries, targets.mask, sampling, pad)
    return _block_bounds(queries, targets, sampling, plan.block)


def _rank_bound(values: np.ndarray, weights: np.ndarray | None, k: int, above: bool, bins: int = 4096) -> float:
    """A bound of the ``k``-th smallest (0-based) of ``values`` (each repeated ``weights`` times): at most it
    (``above=False``) or at least it (``above=True``), within about ``max(values) / bins``.

    A histogram instead of a sort: any bound on the safe side is valid for the selection, a slightly loose one
    only adds a few entries to compute exactly.
    """
    finite = np.isfinite(values)
    top = float(values[finite].max()) if finite.any() else 0.0
    if top <= 0.0:
        return float(np.partition(values, k)[k]) if weights is None else (0.0 if not above else math.inf)
    scale = bins / top
    index = np.where(finite, np.minimum(values * scale, bins - 1), bins).astype(np.intp)  # last bin: infinite
    hist = np.bincount(index, weights=weights, minlength=bins + 1)
    found = int(np.searchsorted(np.cumsum(hist), k, side="right"))
    if found >= bins:
        return math.inf if above else top
    # one bin of slack on each side covers the rounding of ``values * scale``
    return (found + 2) / scale if above else max(found - 1, 0) / scale


def _resolve(queries: np.ndarray, reach: float, targets: _Side, sampling: _Sampling, plan: _Plan) -> np.ndarray:
    """Exact distances of ``queries`` whose nearest target is at most ``reach`` away (``inf``: unknown)."""
    shape = targets.mask.shape
    spacing = _spacing_array(sampling, len(shape))
    if math.isfinite(reach):
        starts, stops = _box(queries, np.ceil(reach / spacing).astype(np.intp) + 1, shape)
    else:
        starts, stops = np.zeros(len(shape), np.intp), np.asarray(shape)
    engine = plan.exact
    if engine == "auto":
        tree_cost = _TREE_BUILD_COST * targets.count + _TREE_QUERY_COST * queries.shape[1]
        engine = "tree" if tree_cost < float(np.prod(stops - starts)) else "window"
    if engine == "tree":
        return _tree_distances(queries, targets.points, sampling)
    found = _window_distances(queries, targets.mask, sampling, starts, stops)
    if found is None:  # cannot happen: the window holds every nearest target
        raise AssertionError("no target voxel in a window that must hold one")
    return found


def _surface_figures(
    pred: np.ndarray,
    gt: np.ndarray,
    requests: dict[_Sampling, tuple[bool, float | None]],
    plan: _Plan | None = None,
    boxes: tuple[tuple[slice, ...] | None, tuple[slice, ...] | None] = (None, None),
) -> dict[_Sampling, tuple[float, float]]:
    """{sampling: (hd95, nsd)} of two non-empty cropped boolean masks for requests
    {sampling: (hd95_wanted, nsd_tolerance)}; NaN for a figure not asked for. plan changes only the work."""
    plan = plan or _DEFAULT_PLAN
    sides = (_Side(pred, boxes[0]), _Side(gt, boxes[1]))
    results: dict[_Sampling, tuple[float, float]] = {}
    for sampling, (want_hd95, tolerance) in requests.items():
        bounds = [_directed_bounds(sides[a], sides[1 - a], sampling, plan) for a in (0, 1)]
        lower = np.concatenate([b.lower for b in bounds])
        upper = np.concatenate([b.upper for b in bounds])
        weighted = any(b.weight is not None for b in bounds)
        weight = np.concatenate([b.weights() for b in bounds]) if weighted else None
        total = sides[0].count + sides[1].count
        needed = np.zeros(lower.size, dtype=bool)
        if want_hd95:
            low_rank, high_rank = _deciding_ranks(total)
            floor = _rank_bound(lower, weight, low_rank, above=False)
            ceiling = _rank_bound(upper, weight, high_rank, above=True)
            needed |= (upper >= floor) & (lower <= ceiling)
        if tolerance is not None:
            needed |= (lower <= tolerance) & (upper > tolerance)
        needed &= lower < upper
        known = lower == upper
        exact = [lower[known] if weight is None else np.repeat(lower[known], weight[known])]
        offset = 0
        for a, direction in enumerate(bounds):
            entries = np.flatnonzero(needed[offset : offset + direction.lower.size])
            if entries.size:
                queries = direction.queries(sides[a], entries)
                reach = float(direction.upper[entries].max())
                exact.append(_resolve(queries, reach, sides[1 - a], sampling, plan))
            offset += direction.lower.size
        values = np.concatenate(exact)
        rest = ~(needed | known)  # certainly below or above the deciding values, and on one side of the tolerance
        hd = nsd = float("nan")
        if want_hd95:
            below, above = _count(rest & (upper < floor), weight), _count(rest & (lower > ceiling), weight)
            assert below + above + values.size == total
            # placeholders: -1 is below every distance, inf above; neither lands on a deciding rank
            hd = float(np.percentile(np.concatenate((np.full(below, -1.0), values, np.full(above, np.inf))), 95))
        if tolerance is not None:
            within = _count(rest & (upper <= tolerance), weight) + int(np.count_nonzero(values <= tolerance))
            nsd = float(within / total)
        results[sampling] = (hd, nsd)
    return results


def _count(entries: np.ndarray, weight: np.ndarray | None) -> int:
    """Number of queries in the selected ``entries`` (a boolean mask)."""
    return int(np.count_nonzero(entries)) if weight is None else int(weight[entries].sum())


def _deciding_ranks(n: int, q: float = 95.0) -> tuple[int, int]:
    """Ranks around numpy's linear-interpolation index ``q / 100 * (n - 1)``, with a margin for its rounding."""
    position = int(math.floor(q / 100.0 * (n - 1)))
    return max(position - 1, 0), min(position + 2, n - 1)


def _check_tolerance(tolerance_mm: float) -> float:
    value = float(tolerance_mm)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance_mm must be a finite non-negative distance, found {tolerance_mm!r}")
    return value
