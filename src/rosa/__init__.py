"""rosa: RoPE-aware Selective Adaptation (Pan et al., AAAI 2026) for Hugging Face causal LMs."""

from rosa import registration

registration.register()  # before any RoSAConfig exists: RoSA becomes a PEFT method

from rosa.config import DLSConfig, RoSAConfig  # noqa: E402
from rosa.dls import DLSCallback, DynamicLayerSelector  # noqa: E402
from rosa.errors import AdapterLoadError, RoSAConfigError, RoSAError, UnsupportedModelError  # noqa: E402
from rosa.model import RoSAModel, get_rosa_model  # noqa: E402
from rosa.registration import UnsupportedPeftError  # noqa: E402
from rosa.version import __version__  # noqa: E402

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
