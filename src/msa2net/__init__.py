"""msa2net: MSA2Net (Kolahi et al., BMVC 2024) for 2D medical image segmentation.

import msa2net
model = msa2net.create_model("msa2net_paper", num_classes=9, in_channels=1)
msa2net.load_official_weights(model, "best_model.pth")   # the authors' checkpoint
labels = msa2net.predict_volume(model, volume)           # (D, H, W) numpy in, labels out
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .models import MSA2Net, create_model, list_models, load_official_weights  # noqa: E402

__all__ = ["MSA2Net", "create_model", "list_models", "load_official_weights", "predict_volume", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "predict_volume":  # engine code loads on first use
        from .engine.inference import predict_volume

        return predict_volume
    raise AttributeError(f"module 'msa2net' has no attribute {name!r}")
