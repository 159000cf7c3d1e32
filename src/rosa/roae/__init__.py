"""RoAE: RoPE-aware Attention Enhancement (spec sections 1-2)."""

from rosa.roae.layer import RoAE
from rosa.roae.layout import RotaryLayout
from rosa.roae.probe import LayerRotary, RotaryGeometry, rotary_geometry

__all__ = ["LayerRotary", "RoAE", "RotaryGeometry", "RotaryLayout", "rotary_geometry"]
