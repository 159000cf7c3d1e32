"""RoAE: RoPE-aware Attention Enhancement (spec sections 1-2)."""

from rosa.roae.frequencies import RotarySpec, rotary_spec
from rosa.roae.layer import RoAE

__all__ = ["RoAE", "RotarySpec", "rotary_spec"]
