"""How raw image intensities become model input: :meth:`Preprocessing.to_unit` (raw -> [0, 1], where augmentation
works) then :meth:`Preprocessing.normalize` (``(x - mean) / std``). Checkpoints record it and prediction re-applies
it. One-channel data have no channel axis; several channels are channels-last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "CT_PREPROCESSING",
    "DEFAULT_CT_WINDOW",
    "ISIC_PREPROCESSING",
    "KINDS",
    "SYNAPSE_PREPROCESSING",
    "UNIT_TOLERANCE",
    "Preprocessing",
]

#: Supported preprocessing kinds.
KINDS: tuple[str, ...] = ("ct_window", "unit", "zscore", "rgb")
#: The abdominal CT window of the TransUNet Synapse release, in Hounsfield units.
DEFAULT_CT_WINDOW: tuple[float, float] = (-125.0, 275.0)
#: Kinds whose raw input is 8-bit (0..255) data.
_EIGHT_BIT_KINDS: tuple[str, ...] = ("rgb",)
#: How far outside [0, 1] ``unit`` data may lie before it is rejected as not being [0, 1] data at all.
UNIT_TOLERANCE: float = 0.1


def _float_tuple(value: float | Sequence[float], name: str) -> tuple[float, ...]:
    values = (float(value),) if np.isscalar(value) else tuple(float(v) for v in value)  # type: ignore[union-attr]
    if not values or not all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite numbers, got {value!r}")
    return values


def _check_finite(array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    n_nan = int(np.count_nonzero(np.isnan(array)))
    n_inf = int(array.size - np.count_nonzero(finite) - n_nan)
    raise ValueError(
        f"input holds {n_nan} NaN and {n_inf} infinite values (array shape {array.shape}); check the file: it is "
        "probably corrupt or was written with an invalid scaling; fix or re-export it before training or prediction"
    )


@dataclass(frozen=True)
class Preprocessing:
    """Intensity mapping from raw image values to model input.

    ``ct_window`` clips to ``window`` HU and scales to [0, 1]; ``unit`` passes [0, 1] data through (within
    :data:`UNIT_TOLERANCE`); ``zscore`` is a robust per-channel min-max between the ``clip_percentiles`` of the
    whole array given (pass a whole volume); ``rgb`` divides 8-bit data by 255 (RGBA loses alpha, grey is repeated
    for 3 channels). ``mean``/``std`` are per channel (one value is broadcast).
    """

    kind: str
    in_channels: int = 1
    window: tuple[float, float] | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown preprocessing kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if int(self.in_channels) != self.in_channels or self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        n = int(self.in_channels)
        object.__setattr__(self, "in_channels", n)
        if self.kind == "rgb" and n not in (1, 3):
            raise ValueError(f"kind 'rgb' needs in_channels 3 (colour) or 1 (8-bit grey), got {n}")

        window = self.window
        if self.kind == "ct_window":
            window = DEFAULT_CT_WINDOW if window is None else _float_tuple(window, "window")
            if len(window) != 2 or not window[0] < window[1]:
                raise ValueError(f"window must be (lo, hi) with lo < hi in HU, got {self.window!r}")
            object.__setattr__(self, "window", (float(window[0]), float(window[1])))
        elif window is not None:
            raise ValueError(f"window is only used by kind 'ct_window'; got window={window!r} with kind {self.kind!r}")

        for name in ("mean", "std"):
            values = _float_tuple(getattr(self, name), name)
            if len(values) == 1:
                values = values * n
            if len(values) != n:
                raise ValueError(f"{name} needs 1 or in_channels={n} values, got {len(values)}: {values}")
            object.__setattr__(self, name, values)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

        percentiles = _float_tuple(self.clip_percentiles, "clip_percentiles")
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError(
                f"clip_percentiles must be (low, high) with 0 <= low < high <= 100, got {self.clip_percentiles!r}"
            )
        object.__setattr__(self, "clip_percentiles", percentiles)

    # ------------------------------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (lists for tuples, ``window`` may be None)."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a ValueError."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        missing = [k for k in ("kind", "in_channels") if k not in data]
        problems = [f"unknown keys {unknown}"] if unknown else []
        if missing:
            problems.append(f"missing required keys {missing}")
        if problems:
            raise ValueError(
                f"invalid preprocessing record: {'; '.join(problems)}. Expected keys: {', '.join(known)} "
                "(kind and in_channels required). Was the checkpoint written by another msa2net version?"
            )
        kwargs = dict(data)
        for key in ("window", "mean", "std", "clip_percentiles"):
            if kwargs.get(key) is not None and not np.isscalar(kwargs[key]):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    # ------------------------------------------------------------------------------------------ mapping

    def arrange_channels(self, array: np.ndarray) -> np.ndarray:
        """Bring ``array`` to the channel layout of this preprocessing (see the class docstring)."""
        n = self.in_channels
        colour_raster = array.ndim == 3 and array.dtype == np.uint8 and array.shape[-1] in (3, 4)
        if n == 1:
            if colour_raster:
                raise ValueError(
                    f"got a colour image of shape {array.shape} for a 1-channel model ({self.kind}); convert it to "
                    "grey first, or train a 3-channel model (dataset.json channel_names R, G, B)"
                )
            return array
        if self.kind == "rgb":
            if array.ndim == 2:  # grey raster -> repeat into R, G, B
                return np.repeat(array[..., None], 3, axis=-1)
            if array.ndim == 3 and array.shape[-1] == 1:
                return np.repeat(array, 3, axis=-1)
            if array.ndim == 3 and array.shape[-1] == 4:  # RGBA: alpha carries no image content
                return array[..., :3]
        if array.ndim < 3 or array.shape[-1] != n:
            raise ValueError(
                f"expected a channels-last array with {n} channels (shape (..., {n})), got shape {array.shape}; "
                f"the model was trained with {n} input channels ({self.kind})"
            )
        return array

    def to_unit(self, array: np.ndarray) -> np.ndarray:
        """Map raw intensities to ``float32`` in [0, 1]; NaN/inf, a wrong channel layout or range are a ValueError."""
        array = np.asarray(array)
        if array.dtype == bool or not (np.issubdtype(array.dtype, np.number)):
            raise ValueError(f"expected a numeric image array, got dtype {array.dtype}")
        _check_finite(array)
        array = self.arrange_channels(array)

        if self.kind == "ct_window":
            lo, hi = self.window  # type: ignore[misc]
            x = array.astype(np.float32)  # the one float32 copy of the volume; the steps below work in place
            np.clip(x, lo, hi, out=x)
            x -= np.float32(lo)
            x /= np.float32(hi - lo)
            return x
        if self.kind == "unit":
            x = array.astype(np.float32)
            vmin, vmax = float(x.min(initial=0.0)), float(x.max(initial=0.0))
            if vmin < -UNIT_TOLERANCE or vmax > 1.0 + UNIT_TOLERANCE:
                raise ValueError(
                    f"'unit' preprocessing expects values in [0, 1] but found [{vmin:g}, {vmax:g}]; raw CT in HU "
                    "needs kind 'ct_window', 8-bit images kind 'rgb', other scanners kind 'zscore'"
                )
            return x
        if self.kind == "rgb":
            vmin, vmax = float(array.min(initial=0)), float(array.max(initial=0))
            if vmin < 0 or vmax > 255:
                raise ValueError(
                    f"'rgb' preprocessing expects 8-bit values 0..255 but found [{vmin:g}, {vmax:g}] "
                    f"(dtype {array.dtype}); convert 16-bit or float images to 8 bit, or use kind 'zscore'"
                )
            x = array.astype(np.float32)
            x /= np.float32(255.0)
            return x
        return self._robust_minmax(array)

    def _robust_minmax(self, array: np.ndarray) -> np.ndarray:
        x = array.astype(np.float32)
        channels = [x] if self.in_channels == 1 else [x[..., c] for c in range(self.in_channels)]
        out = []
        for channel in channels:
            lo, hi = np.percentile(channel, self.clip_percentiles)
            if hi > lo:
                out.append((np.clip(channel, lo, hi) - np.float32(lo)) / np.float32(hi - lo))
            else:
                out.append(np.zeros_like(channel))
        result = out[0] if self.in_channels == 1 else np.stack(out, axis=-1)
        return result.astype(np.float32, copy=False)

    def normalize(self, unit: np.ndarray) -> np.ndarray:
        """Model-space normalisation ``(x - mean) / std`` of :meth:`to_unit` output (channels last), float32."""
        unit = np.asarray(unit, dtype=np.float32)
        if self.in_channels > 1 and unit.shape[-1:] != (self.in_channels,):
            raise ValueError(f"expected channels-last data with {self.in_channels} channels, got shape {unit.shape}")
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((unit - mean) / std).astype(np.float32)

    def input_mismatch(self, image: np.ndarray, what: str = "the input", raster: bool = False) -> str | None:
        """Why ``image`` (named ``what``; ``raster``: from a PNG/JPEG/BMP/TIFF) does not look like this mapping's input.

        An input of another kind maps to values the model never saw: ``ct_window`` refuses unsigned integers, 0..255
        rasters and [0, 1] floats (HU are negative for air and fat); ``rgb`` refuses [0, 1] floats. None: it fits.
        """

        if image.size == 0 or image.dtype == np.bool_ or not np.issubdtype(image.dtype, np.number):
            return None
        lo, hi = float(image.min()), float(image.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return None  # NaN/inf: to_unit names them
        found = f"{what} of dtype {image.dtype} with values {lo:g}..{hi:g}"
        floats_in_unit = np.issubdtype(image.dtype, np.floating) and 0.0 <= lo and hi <= 1.0
        if self.window is not None:  # only ct_window has a window
            if floats_in_unit:
                why = "values already scaled to [0, 1]"
            elif np.issubdtype(image.dtype, np.unsignedinteger):
                why = (
                    "unsigned integers cannot hold HU below 0: an 8-bit (0..255) or 16-bit picture, or HU with an "
                    "offset"
                )
            elif raster and 0.0 <= lo and hi <= 255.0:
                why = "raster values within 0..255 are an 8-bit (0..255) picture, not HU"
            else:
                return None
            return (
                f"the checkpoint expects CT intensities in Hounsfield units (preprocessing 'ct_window' {self.window}) "
                f"from a volume file (NIfTI, NRRD, MHA or DICOM), but this input is {found} ({why}); segment the "
                "original CT volume instead"
            )
        if self.kind in _EIGHT_BIT_KINDS and floats_in_unit:
            return (
                f"the checkpoint expects 8-bit intensities 0..255 (preprocessing {self.kind!r}), but this input is "
                f"{found}, which looks already scaled to [0, 1]; segment the original 8-bit image instead"
            )
        return None

    def describe(self) -> str:
        """What this mapping takes as input, in words (for messages and reports)."""
        if self.kind == "ct_window":
            lo, hi = self.window  # type: ignore[misc]
            return f"CT in Hounsfield units, windowed to [{lo:g}, {hi:g}] HU (ct_window)"
        if self.kind == "rgb":
            return "8-bit values 0..255 divided by 255 (rgb)"
        if self.kind == "unit":
            return "values already scaled to [0, 1] (unit)"
        return "any intensity range, by robust per-case min-max (zscore)"

    def input_difference(self, other: Preprocessing) -> str | None:
        """Why data mapped by ``other`` are not the input this mapping was built for, or None when they are.

        Only what raw intensities mean is compared (kind, CT window, channels); the model-space ``mean``/``std``
        and ``clip_percentiles`` do not change what a file must hold.
        """

        def meaning(prep: Preprocessing) -> tuple[Any, ...]:
            # "unit" data are the Synapse release: CT already windowed to the default window and scaled to [0, 1]
            if prep.kind == "unit":
                return ("ct_window", DEFAULT_CT_WINDOW, prep.in_channels)
            return (prep.kind, prep.window, prep.in_channels)

        if meaning(self) == meaning(other):
            return None
        return (
            f"it takes {self.in_channels}-channel {self.describe()}, but the data are {other.in_channels}-channel "
            f"{other.describe()}"
        )

    def unit_input(self) -> Preprocessing:
        """The same model-space step for data already mapped by :meth:`to_unit`: a ``unit`` pass-through with this
        mapping's ``mean``/``std`` (what inference applies to :class:`~msa2net.data.source.Case` images)."""
        return Preprocessing(kind="unit", in_channels=self.in_channels, mean=self.mean, std=self.std)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """Raw intensities -> ``float32`` model input: ``normalize(to_unit(array))``."""
        return self.normalize(self.to_unit(array))


#: The TransUNet Synapse release (already windowed and scaled to [0, 1]); one channel.
SYNAPSE_PREPROCESSING = Preprocessing(kind="unit", in_channels=1)
#: Raw abdominal CT in HU, windowed to [-125, 275] like the Synapse release; one channel.
CT_PREPROCESSING = Preprocessing(kind="ct_window", in_channels=1, window=DEFAULT_CT_WINDOW)
#: 8-bit RGB dermoscopy (ISIC 2018); three channels, mean = std = 0.5.
ISIC_PREPROCESSING = Preprocessing(kind="rgb", in_channels=3)
