"""Configuration of RoAE (`RoSAConfig`) and of Dynamic Layer Selection (`DLSConfig`).

Every default marked **[choice]** in the spec (``shared/docs/ROSA-SPEC.md``) is a field here, so
nothing the paper leaves open is a hidden constant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from peft import PeftConfig

from rosa.errors import RoSAConfigError
from rosa.model_card import write_model_card
from rosa.registration import require_peft_method

VALID_TARGETS = ("q", "k")
DLS_MODES = ("skip", "zero", "freeze")


def round_half_up(x: float) -> int:
    """Python's round() is banker's rounding; the spec's counts round .5 up."""
    return math.floor(x + 0.5)


@dataclass
class RoSAConfig(PeftConfig):
    """RoAE: modulate the low-frequency RoPE dimensions of query (and optionally key) states.

    ``S = SiLU(B(A H))`` is computed from the attention input ``H`` and applied after RoPE as
    ``Z_low + Z_low * (alpha * S)``. ``B`` starts at zero so the wrapped model is the base model
    at step 0. A PEFT config: ``peft.get_peft_model(model, RoSAConfig(...))`` once ``rosa`` is
    imported (see :mod:`rosa.registration`).

    ``base_geometry`` and ``dls`` are not settings: the tuner records the base model's rotary geometry
    when it injects an adapter (and checks it when the saved adapter is loaded again), and a
    ``DynamicLayerSelector`` records its settings, so a saved adapter says what it was trained on and how.
    """

    rank: int = 8
    alpha: float = 1.0
    r_low: float = 0.25
    targets: tuple[str, ...] = ("q",)
    layers: Optional[tuple[int, ...]] = None
    adapter_dtype: str = "float32"
    init_seed: Optional[int] = None
    base_geometry: Optional[dict] = None
    dls: Optional[dict] = None

    # PEFT's injection reads this; RoSA wraps the attention blocks it measures, never modules chosen by name.
    target_modules: ClassVar[None] = None
    # The method's own settings: what a run's ``rosa:`` section holds, what --set rosa.<field> may change.
    SETTINGS: ClassVar[tuple[str, ...]] = ("rank", "alpha", "r_low", "targets", "layers", "adapter_dtype", "init_seed")

    def __post_init__(self):
        self.peft_type = require_peft_method()
        if self.task_type is None:
            self.task_type = "CAUSAL_LM"  # RoAE adapts causal LMs only
        super().__post_init__()
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise RoSAConfigError(f"rank must be a positive integer, got {self.rank!r}; use e.g. rank=8.")
        if not (0.0 < float(self.r_low) <= 1.0):
            raise RoSAConfigError(
                f"r_low must be in (0, 1] (the fraction of rotary pairs adapted), got {self.r_low!r}; "
                "the paper's default is 0.25."
            )
        if not math.isfinite(float(self.alpha)):
            raise RoSAConfigError(f"alpha must be a finite number, got {self.alpha!r}.")
        if not self.targets or any(t not in VALID_TARGETS for t in self.targets):
            raise RoSAConfigError(
                f"targets must be a non-empty subset of {VALID_TARGETS}, got {self.targets!r}; "
                "use ('q',) (the paper's evidence) or ('q', 'k')."
            )
        if len(set(self.targets)) != len(self.targets):
            raise RoSAConfigError(f"targets has duplicates: {self.targets!r}.")
        if self.adapter_dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise RoSAConfigError(
                f"adapter_dtype must be float32, bfloat16, float16 or auto, got {self.adapter_dtype!r}."
            )
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise RoSAConfigError(
                f"layers must be None (all layers) or non-negative layer indices, got {self.layers!r}."
            )
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            repeated = sorted({i for i in self.layers if self.layers.count(i) > 1})
            raise RoSAConfigError(
                f"layers has duplicates: {list(self.layers)} names layer(s) {repeated} more than once; list each "
                f"layer once, e.g. layers={sorted(set(self.layers))}."
            )

    def settings(self) -> dict[str, Any]:
        """The method's settings alone (no PEFT bookkeeping, nothing recorded), as plain JSON/YAML values."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in self.SETTINGS}

    def n_low_pairs(self, n_pairs: int) -> int:
        return max(1, round_half_up(self.r_low * n_pairs))

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """PEFT saves each adapter's config last; the model card is written beside it (PEFT has no other
        hook for a method's card), updating the card PEFT has just written rather than replacing it."""
        super().save_pretrained(save_directory, **kwargs)
        write_model_card(save_directory, self)


@dataclass
class DLSConfig:
    """Dynamic Layer Selection: train only ``k`` layers, re-chosen every ``interval`` steps.

    Scores are the gradient norms of each layer's norm weights; with probability ``p_exploit`` the
    top-k layers are chosen, otherwise k uniformly random ones (seeded by ``seed``).
    ``mode`` says what happens to the layers that are not selected (see the README's DLS section).
    """

    k_ratio: float = 0.5
    p_exploit: float = 0.8
    warmup: int = 100
    interval: int = 50
    mode: str = "skip"
    seed: int = 0
    norm_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.norm_names is not None:
            self.norm_names = tuple(self.norm_names)
        if not (0.0 < float(self.k_ratio) <= 1.0):
            raise RoSAConfigError(
                f"k_ratio must be in (0, 1] (the fraction of layers trained at a time), got {self.k_ratio!r}."
            )
        if not (0.0 <= float(self.p_exploit) <= 1.0):
            raise RoSAConfigError(f"p_exploit must be a probability in [0, 1], got {self.p_exploit!r}.")
        if not isinstance(self.warmup, int) or self.warmup < 1:
            raise RoSAConfigError(
                f"warmup must be an integer >= 1, got {self.warmup!r}: the first selection needs the "
                "scores of at least one backward pass."
            )
        if not isinstance(self.interval, int) or self.interval < 1:
            raise RoSAConfigError(f"interval must be an integer >= 1, got {self.interval!r}.")
        if self.mode not in DLS_MODES:
            raise RoSAConfigError(f"mode must be one of {DLS_MODES}, got {self.mode!r}.")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RoSAConfigError(
                f"{cls.__name__} got unknown field(s) {unknown}; valid fields are {sorted(known)}."
            )
        return cls(**data)

    def k(self, n_layers: int) -> int:
        return min(n_layers, max(1, round_half_up(self.k_ratio * n_layers)))
