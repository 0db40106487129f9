"""Post-processing of predicted label maps, applied the same way by the Predictor, ``predict`` and ``evaluate``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest", "parse_keep_largest"]


def parse_keep_largest(spec: str | Sequence[str | int] | None, class_names: Sequence[str]) -> tuple[int, ...]:
    """The foreground class ids named by ``spec``: ``"all"``, class names or ids (a list, or one comma-separated
    string such as ``"liver,spleen"`` or ``"1,3"``); None or empty: none.

    Raises:
        ValueError: a name or id that is not a foreground class of the model (the message lists them).
    """
    if spec is None:
        return ()
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    foreground = {str(name): i for i, name in enumerate(class_names) if i > 0}
    if items == ["all"]:
        return tuple(foreground.values())
    ids: set[int] = set()
    for item in items:
        class_id = foreground.get(item, int(item) if item.isdigit() else None)
        if class_id is None or not 0 < class_id < len(class_names):
            raise ValueError(
                f"keep-largest: {item!r} is not a foreground class of this model; give 'all', or names or ids among "
                + ", ".join(f"{i}={n}" for n, i in foreground.items())
            )
        ids.add(class_id)
    return tuple(sorted(ids))


def keep_largest(labels: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """``labels`` with every class in ``class_ids`` reduced to its largest connected component (the rest becomes
    background, 0).

    Components are face-connected in the label map's own dimensions (6-neighbourhood for a volume, 4 for an
    image); of two equally large components the first in array order is kept. Returns a new array; ``labels`` is
    not changed.
    """
    out = np.array(labels, copy=True)
    for class_id in class_ids:
        components, count = ndimage.label(out == class_id)
        if count > 1:
            largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))  # label 0 is the background
            out[(components != largest) & (components > 0)] = 0
    return out
