"""Which head dimensions are "low-frequency": read from the model's own rotary embedding.

Reading ``inv_freq`` (after any RoPE scaling) instead of assuming index positions handles partial
rotary (Phi, GPT-NeoX: only the first ``d_rot`` dimensions rotate) and scaled RoPE alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rosa.architecture import text_config
from rosa.errors import UnsupportedModelError


@dataclass(frozen=True)
class RotarySpec:
    """Rotary geometry of one model: ``n_pairs`` rotated pairs and their frequencies."""

    inv_freq: tuple[float, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.inv_freq)

    @property
    def rotary_dim(self) -> int:
        return 2 * self.n_pairs

    def low_frequency_pairs(self, n_low: int) -> list[int]:
        """Indices of the ``n_low`` pairs with the lowest frequency, ascending.

        Ties go to the higher index, so standard RoPE gives the last ``n_low`` pairs exactly.
        """
        return sorted(self.frequency_rank()[:n_low])

    def frequency_rank(self) -> tuple[int, ...]:
        """Pair indices from lowest to highest frequency."""
        return tuple(sorted(range(self.n_pairs), key=lambda i: (self.inv_freq[i], -i)))

    def low_frequency_dims(self, n_low: int) -> list[int]:
        """Head dimensions of those pairs in the rotate-half layout: pair ``i`` is ``(i, i + n_pairs)``.

        Every RoPE family in ``transformers`` uses this layout; the dimensions past ``rotary_dim``
        (partial rotary) are never chosen.
        """
        pairs = self.low_frequency_pairs(n_low)
        return pairs + [i + self.n_pairs for i in pairs]


def rotary_spec(model: nn.Module) -> RotarySpec:
    """The model's rotary frequencies, or a clear refusal for models without RoPE.

    Models with several rotary embeddings (local and global layers, say) are accepted when the
    embeddings rank their pairs by frequency in the same order, because then every layer agrees on
    which pairs are low-frequency whatever ``r_low`` is.
    """
    config = text_config(model)
    specs = {
        name: RotarySpec(tuple(float(f) for f in module.inv_freq.detach().float().cpu()))
        for name, module in model.named_modules()
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor) and module.inv_freq.ndim == 1
    }
    if not specs:
        raise UnsupportedModelError(
            f"model type '{getattr(config, 'model_type', type(model).__name__)}' has no rotary position "
            "embedding (it uses learned/absolute positions, ALiBi or none), so RoAE has no RoPE-rotated "
            "dimensions to adapt. Use a RoPE model (Llama, Qwen, Mistral, Gemma, Phi, GPT-NeoX, ...) or "
            "use DynamicLayerSelector alone on a PEFT LoRA model."
        )
    ranks = {name: spec.frequency_rank() for name, spec in specs.items()}
    if len(set(ranks.values())) > 1:
        raise UnsupportedModelError(
            f"the model's rotary embeddings {sorted(specs)} order their frequencies differently, so no "
            "single set of low-frequency dimensions fits every layer; RoAE does not support this model."
        )
    return next(iter(specs.values()))
