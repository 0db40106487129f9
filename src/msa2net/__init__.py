"""msa2net: MSA2Net (Kolahi et al., BMVC 2024) for 2D medical image segmentation.

import msa2net
predictor = msa2net.Predictor.from_pretrained("runs/synapse")  # a run, checkpoint, published folder or hub id
result = predictor.predict("case.nii.gz")                      # labels in the input's geometry, statistics, ...
model = msa2net.create_model("msa2net_paper", num_classes=9, in_channels=1)
msa2net.load_official_weights(model, "best_model.pth")   # the authors' checkpoint
labels = msa2net.predict_volume(model, volume)           # (D, H, W) numpy in, labels out

Names load on first use, so that ``msa2net --help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _hooks
from ._version import __version__

__all__ = [
    "MSA2Net",
    "PredictOptions",
    "Predictor",
    "create_model",
    "list_models",
    "load_official_weights",
    "predict_volume",
    "__version__",
]

_LAZY = {
    "MSA2Net": ".models",
    "PredictOptions": ".engine.predictor",
    "Predictor": ".engine.predictor",
    "create_model": ".models",
    "list_models": ".models",
    "load_official_weights": ".models",
    "predict_volume": ".engine.inference",
}


def _model_card(config: Any, *, repo_id: str | None = None) -> str:
    """The model card of ``MSA2Net.save_pretrained``; its module (and the hub client) loads on the first save."""
    from .reporting.card import build_model_card

    return build_model_card(config, repo_id=repo_id)


# models sit below reporting and never import it: the top package hands them the card builder
_hooks.model_card_builder = _model_card


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'msa2net' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
