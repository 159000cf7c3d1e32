"""rosa: RoPE-aware Selective Adaptation (Pan et al., AAAI 2026) for Hugging Face causal LMs."""

from rosa.config import DLSConfig, RoSAConfig
from rosa.dls import DLSCallback, DynamicLayerSelector
from rosa.errors import AdapterLoadError, RoSAConfigError, RoSAError, UnsupportedModelError
from rosa.model import RoSAModel, get_rosa_model
from rosa.registration import UnsupportedPeftError, register
from rosa.version import __version__

register(RoSAConfig, RoSAModel)  # from here on PEFT's loaders and get_peft_model know RoSA

__all__ = [
    "AdapterLoadError",
    "DLSCallback",
    "DLSConfig",
    "DynamicLayerSelector",
    "RoSAConfig",
    "RoSAConfigError",
    "RoSAError",
    "RoSAModel",
    "UnsupportedModelError",
    "UnsupportedPeftError",
    "__version__",
    "get_rosa_model",
]
