"""The RoAE adapter of one attention block: ``S = SiLU(B(A H))`` per target state."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rosa.roae.modulation import LowDims, scale_low_dims


class RoAE(nn.Module):
    """RoAE for one attention block: adapts the low-frequency dims of RoPE-rotated q and/or k.

    Lives inside the attention block's :class:`rosa.roae.attention.RoSALayer` so the adapter
    parameters are named after the decoder block that owns them, which is how DLS finds each layer's
    parameters. They are plain parameters (``q_A``, ``q_B``, ``k_A``, ``k_B``), not submodules, so the
    adapter name is the second-to-last part of their keys (``...rosa_roae.default.q_A``), where every
    PEFT release looks for it when saving and loading under any adapter name.
    """

    def __init__(
        self,
        *,
        layer_index: int,
        d_model: int,
        rank: int,
        alpha: float,
        heads: dict[str, int],
        low_dims: list[int],
        low_frequencies: list[float],
        dim: int,
        rotary_function: str,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.layer_index = layer_index
        self.alpha = float(alpha)
        self.heads = dict(heads)
        self.d_low = len(low_dims)
        self.dim = dim
        self.rotary_function = rotary_function
        for target, n in heads.items():
            A = torch.empty(rank, d_model)
            # LoRA's A initialisation (Kaiming-uniform with a=sqrt(5), i.e. nn.Linear's default); B = 0.
            A.uniform_(-1.0 / math.sqrt(d_model), 1.0 / math.sqrt(d_model), generator=generator)
            self.register_parameter(f"{target}_A", nn.Parameter(A.to(dtype)))
            self.register_parameter(f"{target}_B", nn.Parameter(torch.zeros(n * self.d_low, rank, dtype=dtype)))
        self.register_buffer("low_dims", torch.tensor(low_dims, dtype=torch.long), persistent=False)
        self.low = LowDims(low_dims, dim)
        # Saved with the weights: the rotary frequencies of the adapted dims, so weights loaded into an
        # existing adapter (which PEFT does without reading their config) are checked against this base.
        self.register_buffer("low_frequencies", torch.tensor(low_frequencies, dtype=torch.float32))

    def adapter_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` in the adapter's dtype, cast once for all targets: under a bf16 base, q and k would
        otherwise each keep an fp32 copy of it for the backward pass (one hidden state per token and layer)."""
        dtype = getattr(self, f"{next(iter(self.heads))}_A").dtype
        return hidden if hidden.dtype == dtype else hidden.to(dtype)

    def signal(self, target: str, hidden: torch.Tensor) -> torch.Tensor:
        """``S = SiLU(B(A H))``; ``B`` starts at zero so ``S = 0`` and the base model is unchanged."""
        A, B = getattr(self, f"{target}_A"), getattr(self, f"{target}_B")
        return F.silu(F.linear(F.linear(hidden if hidden.dtype == A.dtype else hidden.to(A.dtype), A), B))

    def modulate(self, target: str, states: torch.Tensor, hidden: torch.Tensor, heads_axis: int) -> torch.Tensor:
        """``Z_low + Z_low * (alpha * S)`` on the low-frequency dims; all other dims untouched.

        ``states`` is ``[batch, heads, seq, dim]`` (``heads_axis=1``) or ``[batch, seq, heads, dim]``
        (``heads_axis=2``), already rotated. The product is computed in the adapter's dtype (fp32 by
        default) and cast back, so a bf16/fp16 base keeps full-precision adapter math.
        """
        n_heads = self.heads[target]
        if states.shape[heads_axis] != n_heads or states.shape[-1] != self.dim:
            raise RuntimeError(
                f"RoAE layer {self.layer_index}: expected {n_heads} '{target}' heads of {self.dim} dims on axis "
                f"{heads_axis}, got states of shape {tuple(states.shape)}; rebuild the RoSA model after "
                "changing the base model's config."
            )
        signal = self.signal(target, hidden).unflatten(-1, (n_heads, *self.low.shape))  # [b, s, h, *low]
        if heads_axis == 1:
            signal = signal.transpose(1, 2)
        scale = signal if self.alpha == 1.0 else self.alpha * signal  # x * 1.0 == x: the same bits, one kernel less
        return scale_low_dims(states, scale, self.low, self.low_dims)
