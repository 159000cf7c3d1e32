"""The RoAE adapter of one attention block: ``S = SiLU(B(A H))`` per target state."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
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
        if states.shape[heads_axis] != n_heads or states.shape[-1] != self.dim:
            raise RuntimeError(
                f"RoAE layer {self.layer_index}: expected {n_heads} '{target}' heads of {self.dim} dims on axis "
                f"{heads_axis}, got states of shape {tuple(states.shape)}; rebuild the RoSA model after "
                "changing the base model's config."
            )
        signal = self.signals[target](hidden).unflatten(-1, (n_heads, self.d_low))  # [b, s, h, d_low]
        if heads_axis == 1:
            signal = signal.transpose(1, 2)
        return _ScaleLowDims.apply(states, self.alpha * signal, self.low_dims)


class _ScaleLowDims(torch.autograd.Function):
    """``states`` with the dims ``low_dims`` replaced by ``low + low * scale``, computed in ``scale``'s
    dtype and rounded once to the states' dtype.

    The backward is written by hand because autograd through the plain ``index_select`` /
    ``index_copy`` formulation allocates two full-size gradients of the states per call (the
    incoming gradient with the low dims zeroed, and the low dims scattered into zeros) and makes a
    third full pass to sum them; here the states' gradient is one ``index_copy`` of the incoming
    gradient, since ``d out / d low = 1 + scale`` on the low dims and 1 elsewhere. Forward and
    gradients are bitwise those of the plain formulation, and only the (small) low dims are kept
    for backward.
    """

    @staticmethod
    def forward(ctx, states, scale, low_dims):
        low = states.index_select(-1, low_dims)
        ctx.save_for_backward(low if ctx.needs_input_grad[1] else None, scale, low_dims)
        return states.index_copy(-1, low_dims, _scaled(low, scale))

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad):
        low, scale, low_dims = ctx.saved_tensors
        grad_low = grad.index_select(-1, low_dims)
        grad_states = grad.index_copy(-1, low_dims, _scaled(grad_low, scale)) if ctx.needs_input_grad[0] else None
        grad_scale = grad_low.to(scale.dtype) * low.to(scale.dtype) if ctx.needs_input_grad[1] else None
        return grad_states, grad_scale, None


def _scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x + x * scale`` in ``scale``'s dtype, back in ``x``'s."""
    x32 = x.to(scale.dtype)
    return (x32 + x32 * scale).to(x.dtype)
