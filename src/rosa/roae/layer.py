"""The RoAE adapter of one attention block: ``S = SiLU(B(A H))`` per target state."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LowRankSignal(nn.Module):
    """``S = SiLU(B(A H))``. ``B`` starts at zero so ``S = 0`` and the base model is unchanged."""

    def __init__(self, d_model: int, rank: int, out_features: int, generator: torch.Generator | None = None):
        super().__init__()
        self.A = nn.Linear(d_model, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        with torch.no_grad():
            # LoRA's A initialisation (Kaiming-uniform with a=sqrt(5), i.e. nn.Linear's default).
            bound = 1.0 / math.sqrt(d_model)
            self.A.weight.uniform_(-bound, bound, generator=generator)
            self.B.weight.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.silu(self.B(self.A(hidden.to(self.A.weight.dtype))))


class RoAE(nn.Module):
    """RoAE for one attention block: adapts the low-frequency dims of RoPE-rotated q and/or k.

    Lives as a child of the attention module (``<attn>.roae``) so the adapter parameters are named
    after the decoder block that owns them, which is how DLS finds each layer's parameters.
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
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.layer_index = layer_index
        self.alpha = float(alpha)
        self.heads = dict(heads)
        self.d_low = len(low_dims)
        self.signals = nn.ModuleDict(
            {target: LowRankSignal(d_model, rank, n * self.d_low, generator) for target, n in heads.items()}
        ).to(dtype)
        self.register_buffer("low_dims", torch.tensor(low_dims, dtype=torch.long), persistent=False)
        self.enabled = True

    def modulate(self, target: str, states: torch.Tensor, hidden: torch.Tensor, heads_axis: int) -> torch.Tensor:
        """``Z_low + Z_low * (alpha * S)`` on the low-frequency dims; all other dims untouched.

        ``states`` is ``[batch, heads, seq, dim]`` (``heads_axis=1``) or ``[batch, seq, heads, dim]``
        (``heads_axis=2``), already rotated. The product is computed in the adapter's dtype (fp32 by
        default) and cast back, so a bf16/fp16 base keeps full-precision adapter math.
        """
        n_heads = self.heads[target]
        if states.shape[heads_axis] != n_heads:
            raise RuntimeError(
                f"RoAE layer {self.layer_index}: expected {n_heads} '{target}' heads on axis {heads_axis}, "
                f"got states of shape {tuple(states.shape)}; this model's attention layout is not supported."
            )
        signal = self.signals[target](hidden).unflatten(-1, (n_heads, self.d_low))  # [b, s, h, d_low]
        if heads_axis == 1:
            signal = signal.transpose(1, 2)
        low = states.index_select(-1, self.low_dims)
        low32 = low.to(signal.dtype)
        adapted = (low32 + low32 * (self.alpha * signal)).to(states.dtype)
        return states.index_copy(-1, self.low_dims, adapted)
