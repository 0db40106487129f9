"""The one prediction path: :class:`Predictor` loads a model once and segments files, SimpleITK images and arrays.

>>> predictor = Predictor.from_pretrained("runs/synapse", device="auto", amp="bf16")  # doctest: +SKIP
>>> result = predictor.predict("case0001.nii.gz", probabilities=True)  # doctest: +SKIP
>>> result.label_image()  # a SimpleITK image in the input's geometry  # doctest: +SKIP

``msa2net predict`` writes files from the :class:`Prediction` objects of one :class:`Predictor`, and ``evaluate``
applies the same post-processing (:mod:`msa2net.engine.postprocess`).

Orientation: a model trained on volumes records their axis code (``slice_orientation``, e.g. ``"AIR"``: sagittal
slices); a volume stored in another layout is re-indexed to it before slicing (permutations and flips, no
resampling) and its mask moved back (``reorient=False`` segments as stored). Intensity check: the preprocessing says
what input values mean; a CT model refuses unsigned-integer pictures and values already scaled to [0, 1], an RGB
model floats in [0, 1], unless ``allow_mismatched_input``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..config import AMP_MODES
from ..data.image_file import Geometry
from ..data.io import RASTER_SUFFIXES, image_suffix, read_image, resolve_max_pixels
from ..data.orientation import Reorientation, axis_code, check_axis_code, reorientation
from ..data.preprocessing import Preprocessing
from ..models import MSA2Net
from .backends import BACKENDS, PRECISIONS, load_backend
from .checkpoint import load_model_source, model_from_checkpoint
from .distributed import resolve_device
from .inference import predict_volume
from .postprocess import keep_largest, parse_keep_largest

__all__ = ["PredictOptions", "Prediction", "Predictor"]


@dataclass(frozen=True)
class PredictOptions:
    """How a :class:`Predictor` segments; one frozen object, shared by the Python API and ``msa2net predict``.

    Attributes:
        batch_size: Slices per step (and per forward pass on a GPU; one slice per pass on a CPU).
        tta: Flip test-time augmentation.
        amp: None (float32), ``"bf16"`` or ``"fp16"`` autocast.
        reorient: Re-index volumes to the model's ``slice_orientation`` before slicing (the mask goes back).
        allow_mismatched_input: Segment inputs whose values do not fit the model's preprocessing.
        max_pixels: Largest raster decoded (None: ``MSA2NET_MAX_PIXELS`` or the default).
        keep_largest: ``"all"``, class names or ids whose largest connected component alone is kept; None: the
            model's recorded choice (a published folder's ``postprocessing``), else none. ``()``: none.
        progress: Show a progress bar per volume.
        backend: ``"torch"``, ``"onnxruntime"`` or ``"openvino"`` (:mod:`msa2net.engine.backends`).
        precision: ``"fp32"``, ``"bf16"`` (torch: autocast) or ``"int8"`` (OpenVINO, after ``export --int8``).
    """

    batch_size: int = 8
    tta: bool = False
    amp: str | None = None
    reorient: bool = True
    allow_mismatched_input: bool = False
    max_pixels: int | None = None
    keep_largest: str | Sequence[str | int] | None = None
    progress: bool = False
    backend: str = "torch"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        amp = None if self.amp == "none" else self.amp
        if amp not in (None, *AMP_MODES[1:]):
            raise ValueError(f"amp must be None, {', '.join(repr(m) for m in AMP_MODES[1:])}, got {self.amp!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.backend not in BACKENDS or self.precision not in PRECISIONS:
            raise ValueError(
                f"backend must be one of {', '.join(BACKENDS)} and precision one of {', '.join(PRECISIONS)}, got "
                f"{self.backend!r} and {self.precision!r}"
            )
        if amp is not None and (self.backend != "torch" or self.precision != "fp32"):
            raise ValueError(f"amp is torch autocast; with backend {self.backend!r} choose the precision instead")
        if self.backend == "torch" and self.precision == "bf16":
            amp = "bf16"  # torch's bf16 is autocast
        object.__setattr__(self, "amp", amp)
        object.__setattr__(self, "max_pixels", resolve_max_pixels(self.max_pixels))


@dataclass
class Prediction:
    """One segmented input.

    Attributes:
        labels: Class ids in the input's array layout: ``(Z, Y, X)`` for volumes, ``(Y, X)`` for 2D images.
        geometry: The input's spacing, origin and direction (SimpleITK order); identity for rasters and arrays
            given without spacing.
        class_names: Names by class id, background first.
        image: The input values as read (channels last), which :meth:`statistics` summarises.
        probabilities: ``(C, *labels.shape)`` float16, before post-processing (their argmax is the labels when
            ``keep_largest`` removed nothing); None unless asked for.
        physical: Whether ``geometry`` holds real millimetres (False for rasters and bare arrays).
        ct: Whether the values are Hounsfield units (the model's preprocessing is a CT window).
        axis_code: The volume's axis code (None for 2D inputs and unknown layouts).
        segmented_as: The layout the model segmented (``slice_orientation`` when re-indexed, else ``axis_code``).
        keep_largest: The class ids reduced to their largest connected component.
    """

    labels: np.ndarray
    geometry: Geometry
    class_names: list[str]
    image: np.ndarray
    probabilities: np.ndarray | None = None
    physical: bool = True
    ct: bool = False
    axis_code: str | None = None
    segmented_as: str | None = None
    keep_largest: tuple[int, ...] = ()
    move: Reorientation | None = field(default=None, repr=False)

    def label_image(self) -> sitk.Image:
        """The labels as a SimpleITK image (uint8, or int16 beyond 256 classes) with the input's geometry."""
        return self.geometry.to_sitk(sitk.GetImageFromArray(self.labels))

    def in_model_plane(self, array: np.ndarray) -> np.ndarray:
        """``array`` (in the input's layout, like :attr:`labels`) re-indexed to the plane the model segmented."""
        return array if self.move is None else np.ascontiguousarray(self.move.apply(array))

    @property
    def voxel_volume(self) -> float | None:
        """Volume of one voxel in mm^3 (area of one pixel in mm^2 for 2D inputs); None without real spacing."""
        return float(np.prod(self.geometry.spacing)) if self.physical else None

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per foreground class: ``voxels``, ``volume_ml`` (``voxels`` x voxel volume / 1000; for 2D inputs
        ``area_mm2``; None without real spacing), ``mean``/``median``/``std`` of the input values inside the class
        (HU for CT; the first channel of colour images; None when the class is empty), and ``touches_border``: the
        mask reaches the first or last index of an axis, so the structure may extend beyond the image and its size
        is a lower bound."""
        values = self.image[..., 0] if self.image.ndim > self.labels.ndim else self.image
        cell = self.voxel_volume
        out: dict[str, dict[str, Any]] = {}
        for class_id, name in enumerate(self.class_names[1:], start=1):
            mask = self.labels == class_id
            n = int(mask.sum())
            inside = values[mask].astype(np.float64)
            size_key, scale = ("volume_ml", 1e-3) if self.labels.ndim == 3 else ("area_mm2", 1.0)
            border = any(
                mask.take(index, axis=axis).any() for axis in range(mask.ndim) for index in (0, mask.shape[axis] - 1)
            )
            out[str(name)] = {
                "id": class_id,
                "voxels": n,
                size_key: None if cell is None else n * cell * scale,
                "mean": float(inside.mean()) if n else None,
                "median": float(np.median(inside)) if n else None,
                "std": float(inside.std()) if n else None,
                "unit": "HU" if self.ct else "input value",
                "touches_border": bool(border),
            }
        return out


class Predictor:
    """A model loaded once, segmenting inputs one at a time (see the module docstring).

    Build it with :meth:`from_pretrained`; ``Predictor(model, ckpt)`` takes a model and its checkpoint record
    (:func:`~msa2net.engine.checkpoint.load_model_source` form) as they are.
    """

    def __init__(
        self, model: MSA2Net | torch.nn.Module, ckpt: Mapping[str, Any], options: PredictOptions | None = None
    ) -> None:
        self.model = model.eval()
        self.ckpt = ckpt
        self.options = options or PredictOptions()
        self.class_names = [str(c) for c in ckpt["class_names"]]
        self.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
        code = ckpt.get("slice_orientation")
        self.slice_orientation = check_axis_code(code) if (self.options.reorient and code) else None
        recorded = ((ckpt.get("pretrained") or {}).get("postprocessing") or {}).get("keep_largest")
        spec = self.options.keep_largest if self.options.keep_largest is not None else recorded
        self.keep_largest = parse_keep_largest(spec, self.class_names)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Any],
        *,
        device: str | torch.device = "cpu",
        options: PredictOptions | None = None,
        **option_values: Any,
    ) -> Predictor:
        """Load a model from a published folder, a hub repo id, a checkpoint or run folder, or the authors' ``.pth``
        (see :func:`~msa2net.engine.checkpoint.load_model_source`), on ``device`` (``"auto"``, ``"cpu"``,
        ``"cuda"``, ...). Options come as an :class:`PredictOptions` or as its fields (``amp="bf16"``, ``tta=True``).
        """
        if options is not None and option_values:
            raise TypeError("give either options=PredictOptions(...) or its fields as keywords, not both")
        opts = options or PredictOptions(**option_values)
        ckpt = load_model_source(source)
        device = resolve_device(device) if isinstance(device, str) else device
        if opts.backend != "torch":
            device = torch.device("cpu")  # the runtimes run on the CPU
        model = model_from_checkpoint(ckpt, device)
        return cls(load_backend(model, opts.backend, opts.precision, folder=ckpt.get("pretrained_folder")), ckpt, opts)

    @property
    def model_name(self) -> str:
        return str(self.ckpt["model_name"])

    def predict(
        self,
        x: str | os.PathLike[str] | sitk.Image | np.ndarray,
        spacing: Sequence[float] | None = None,
        *,
        probabilities: bool = False,
        name: str | None = None,
    ) -> Prediction:
        """Segment one input.

        Args:
            x: An image file or DICOM series folder (see :func:`msa2net.data.io.read_image`), a ``SimpleITK.Image``,
                or an array: ``(Z, Y, X)`` volume or ``(Y, X)`` image, channels last for multi-channel models.
            spacing: For an array: voxel size in mm in the array's axis order (``(sz, sy, sx)``); None: unknown
                (volumes are then reported in voxels). Arrays are segmented as stored (no re-indexing).
            probabilities: Also return the class probabilities.
            name: The input's name in progress bars and messages (default: the file name).

        Raises:
            ImageReadError: a file that cannot be read (the message names it and the fix).
            ValueError: an input that does not fit the model (channels, value range; see
                :class:`PredictOptions`'s ``allow_mismatched_input``), or ``spacing`` that does not fit the array.
        """
        raster = False
        if isinstance(x, (str, os.PathLike)):
            path = Path(x)
            image, geometry = read_image(path, max_pixels=self.options.max_pixels)
            suffix = image_suffix(path) if path.is_file() else None
            raster = suffix in RASTER_SUFFIXES
            what = "a raster image" if raster else ("a DICOM series" if suffix is None else f"a {suffix} volume")
            name, physical, oriented = name or path.name, not raster, True
        elif isinstance(x, sitk.Image):
            image, geometry = sitk.GetArrayFromImage(x), Geometry.from_sitk(x)
            what, name, physical, oriented = "a SimpleITK image", name or "image", True, True
        else:
            image = np.asarray(x)
            spatial = image.ndim - (1 if self.preprocessing.in_channels > 1 and image.ndim in (3, 4) else 0)
            if spacing is not None and len(spacing) != spatial:
                raise ValueError(f"spacing {tuple(spacing)} does not fit an array of shape {image.shape}")
            sizes = tuple(reversed([float(s) for s in spacing])) if spacing is not None else (1.0,) * spatial
            geometry = dataclasses.replace(Geometry.identity(spatial), spacing=sizes)
            what, name, physical, oriented = "an array", name or "array", spacing is not None, False
        return self._segment(image, geometry, what, name, raster, physical, oriented, probabilities)

    def _segment(
        self,
        image: np.ndarray,
        geometry: Geometry,
        what: str,
        name: str,
        raster: bool,
        physical: bool,
        oriented: bool,
        want_probabilities: bool,
    ) -> Prediction:
        prep, opts = self.preprocessing, self.options
        spatial = geometry.ndim
        if spatial not in (2, 3) or image.ndim not in (spatial, spatial + 1):
            raise ValueError(f"expected a 2D or 3D image, found array shape {image.shape} with a {spatial}D geometry")
        if spatial == 2:
            image = prep.arrange_channels(image)  # e.g. a grey raster segmented as RGB by an RGB model
        mismatch = None if opts.allow_mismatched_input else prep.input_mismatch(image, what, raster=raster)
        if mismatch is not None:
            raise ValueError(
                f"{mismatch}. If you are sure it fits, pass allow_mismatched_input=True "
                "(msa2net predict --allow-mismatched-input)"
            )
        code = move = None
        if spatial == 3 and oriented:
            try:
                code = axis_code(geometry)
            except ValueError as err:
                if self.slice_orientation:
                    raise ValueError(
                        f"its layout cannot be matched to the training volumes' ({self.slice_orientation}): {err}; or "
                        "segment it as stored with --no-reorient (reorient=False)"
                    ) from err
            if code and self.slice_orientation:
                move = reorientation(code, self.slice_orientation)
                move = None if move.is_identity else move
        volume = image[None] if spatial == 2 else image  # a 2D image is a one-slice volume from here on
        if move is not None:
            volume = np.ascontiguousarray(move.apply(volume))
        kwargs: dict[str, Any] = {"progress": opts.progress and spatial == 3, "desc": name}
        result = predict_volume(
            self.model,
            volume,
            preprocessing=prep,
            batch_size=opts.batch_size,
            tta=opts.tta,
            amp=opts.amp,
            probabilities=want_probabilities,
            **kwargs,
        )
        labels, probs = result if want_probabilities else (result, None)
        labels = keep_largest(labels, self.keep_largest) if self.keep_largest else labels
        if move is not None:
            back = move.inverse()
            labels = np.ascontiguousarray(back.apply(labels))
            if probs is not None:
                probs = np.stack([back.apply(channel) for channel in probs])
        if spatial == 2:
            labels = labels[0]
            probs = None if probs is None else probs[:, 0]
        return Prediction(
            labels=labels,
            geometry=geometry,
            class_names=list(self.class_names),
            image=image,
            probabilities=probs,
            physical=physical,
            ct=prep.kind == "ct_window",
            axis_code=code,
            segmented_as=self.slice_orientation if move is not None else code,
            keep_largest=self.keep_largest,
            move=move,
        )
