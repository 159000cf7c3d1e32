"""DLS: Dynamic Layer Selection (spec section 3)."""

from rosa.dls.callback import DLSCallback
from rosa.dls.selector import DynamicLayerSelector

__all__ = ["DLSCallback", "DynamicLayerSelector"]
