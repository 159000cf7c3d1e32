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
        self._weight_names = [(f"{target}_A", f"{target}_B") for target in heads]
        self.register_buffer("low_dims", torch.tensor(low_dims, dtype=torch.long), persistent=False)
        self.low = LowDims(low_dims, dim)
        # Saved with the weights: the rotary frequencies of the adapted dims, so weights loaded into an
        # existing adapter (which PEFT does without reading their config) are checked against this base.
        self.register_buffer("low_frequencies", torch.tensor(low_frequencies, dtype=torch.float32))

    def modulate(
        self, q: torch.Tensor, k: torch.Tensor, hidden: torch.Tensor, heads_axis: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``Z_low + Z_low * (alpha * S)`` on the low-frequency dims of each target; all other dims untouched.

        ``q`` and ``k`` are ``[batch, heads, seq, dim]`` (``heads_axis=1``) or ``[batch, seq, heads, dim]``
        (``heads_axis=2``), already rotated; ``hidden`` is the block's ``[batch, seq, d_model]`` input.
        ``S = SiLU(B(A H))``, and ``B`` starts at zero so ``S = 0`` and the base model is unchanged. The
        adapter math runs in the adapter's dtype (fp32 by default) and the result is cast back, so a
        bf16/fp16 base keeps full-precision adapter math; ``hidden`` is cast once for both targets, so
        under a bf16 base the backward keeps one fp32 copy of it per layer, not two. Both targets in one
        call: at decode this runs once per token and layer, where every Python call shows.
        """
        parameters = self._parameters
        dtype = parameters[self._weight_names[0][0]].dtype
        if hidden.dtype != dtype:
            hidden = hidden.to(dtype)
        states = {"q": q, "k": k}
        for (A, B), (target, n_heads) in zip(self._weight_names, self.heads.items()):
            rotated = states[target]
            if rotated.shape[heads_axis] != n_heads or rotated.shape[-1] != self.dim:
                raise RuntimeError(
                    f"RoAE layer {self.layer_index}: expected {n_heads} '{target}' heads of {self.dim} dims on axis "
                    f"{heads_axis}, got states of shape {tuple(rotated.shape)}; rebuild the RoSA model after "
                    "changing the base model's config."
                )
            signal = F.silu(F.linear(F.linear(hidden, parameters[A]), parameters[B])).unflatten(-1, (n_heads, *self.low.shape))
            scale = signal if self.alpha == 1.0 else self.alpha * signal  # x * 1.0 == x: the same bits, one kernel less
            states[target] = scale_low_dims(rotated, scale, self.low, self.low_dims, heads_axis)
        return states["q"], states["k"]
