"""MSA2Net models: the network, its registry, and the converter for the authors' checkpoints."""

from .encoder import EncoderWeightsError, MaxViTEncoder
from .msa2net import MSA2Net, MSA2NetConfig, create_model, list_models, register_model
from .official import OfficialCheckpointError, load_official_weights, official_parameter_count
from .pretrained import HubUnavailableError, PretrainedError

__all__ = [
    "MSA2Net",
    "MSA2NetConfig",
    "MaxViTEncoder",
    "EncoderWeightsError",
    "HubUnavailableError",
    "OfficialCheckpointError",
    "PretrainedError",
    "create_model",
    "list_models",
    "load_official_weights",
    "official_parameter_count",
    "register_model",
]
