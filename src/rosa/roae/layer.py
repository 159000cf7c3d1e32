"""The RoAE adapter of one attention block: ``S = SiLU(B(A H))`` per target state."""

from __future__ import annotations

import math

import torch
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
        # What modulate reads per call, fixed here: each target's weight names and the shape its signal
        # unflattens to. One tuple of constants keeps a compiled model's guards on it few.
        self._targets = tuple((target, f"{target}_A", f"{target}_B", (n, *self.low.shape)) for target, n in heads.items())
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
        bf16/fp16 base keeps full-precision adapter math; ``hidden`` is cast and flattened to rows once for
        both targets, so under a bf16 base the backward keeps one fp32 copy of it per layer, not two. Both
        targets in one call: at decode this runs once per token and layer, where every Python call shows.
        """
        parameters = self._parameters
        dtype = parameters[self._targets[0][1]].dtype
        rows = (hidden if hidden.dtype == dtype else hidden.to(dtype)).reshape(-1, hidden.shape[-1])
        summed = torch.compiler.is_compiling() and not torch.is_grad_enabled() and rows.shape[0] <= SUMMED_ROWS
        project = _summed_products if summed else _matmul
        index = self.low_dims if self.low.runs is None else None  # only a gathered layout needs the dims' index
        states = {"q": q, "k": k}
        for target, A, B, signal_shape in self._targets:
            rotated = states[target]
            if rotated.shape[heads_axis] != signal_shape[0] or rotated.shape[-1] != self.dim:
                raise RuntimeError(
                    f"RoAE layer {self.layer_index}: expected {signal_shape[0]} '{target}' heads of {self.dim} dims on "
                    f"axis {heads_axis}, got states of shape {tuple(rotated.shape)}; rebuild the RoSA model after "
                    "changing the base model's config."
                )
            signal = project(project(rows, parameters[A]), parameters[B]).view(*hidden.shape[:-1], *signal_shape)
            states[target] = scale_low_dims(rotated, signal, self.alpha, self.low, index, heads_axis)
        return states["q"], states["k"]


# Up to this many rows (tokens across the batch: a decode step), a compiled adapter without autograd forms
# its two projections as products summed, which inductor fuses into the rotary kernels around them,
# instead of as two matmul calls per target that cost more than their arithmetic. Beyond it (prefill) the
# matmul is faster: in a one-off measurement on this project's CPU the two crossed between 128 and 512
# rows. Training keeps the matmuls, whose backward needs no product of rows and weights.
SUMMED_ROWS = 128


def _matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(rows, weight)`` as the one ``mm`` it dispatches to, without its dispatch layers: the same bits."""
    return torch.mm(rows, weight.t())


def _summed_products(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(rows, weight)`` as a product and a sum, for inductor to fuse (see ``SUMMED_ROWS``); the
    sum runs in another order than a matmul's, so the result differs from eager in the last bits."""
    return (rows.unsqueeze(-2) * weight).sum(-1)
