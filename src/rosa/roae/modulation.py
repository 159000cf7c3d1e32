"""``Z_low + Z_low * alpha * SiLU(signal)`` on the low-frequency dims of rotated states, at the least memory traffic.

Per generated token and layer this runs twice (q and k) on states of one token, so its cost is
mostly per-op overhead; in training it runs on every token and its cost is memory passes. Both
shrink when the low dims are reached as a strided *view* instead of gathered and scattered: under
the two layouts nearly every family uses, they are equal runs at a fixed period (rotate-half: the
last ``d_low/2`` dims of each half of the head; interleaved: the last ``d_low`` dims), and
:class:`LowDims` addresses them with one ``as_strided`` as ``[batch, seq, heads, runs, length]``, the
layout the signal has when computed from the ``[batch, seq, hidden]`` input, so neither needs a
transpose or a copy. Any other set of dims
(a permuted or partial layout) falls back to ``index_select``/``index_copy``. Either way the
arithmetic is the same: computed in the adapter's dtype and rounded once to the states' dtype, so
outputs and gradients are bitwise those of the plain autograd formulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class LowDims:
    """Where the low dims of a ``dim``-wide head are, and how to read and write them."""

    def __init__(self, dims: list[int], dim: int):
        self.dim = dim
        self.runs = _as_runs(dims, dim)
        # The signal's last axis is unflattened to this (runs of equal length, or one axis of dims).
        self.shape = (self.runs[2], self.runs[4]) if self.runs else (len(dims),)

    def read(self, states: torch.Tensor, index: torch.Tensor | None, heads_axis: int) -> torch.Tensor:
        """The low dims of ``states`` (``[batch, heads, seq, dim]`` when ``heads_axis`` is 1, ``[batch, seq,
        heads, dim]`` when 2) as ``[batch, seq, heads, *shape]``, the layout of the signal computed from the
        ``[batch, seq, hidden]`` input: one strided view under a regular layout, else a copy gathered with
        ``index`` (the dims as a tensor, needed only then)."""
        if self.runs is None:
            return _seq_major(states, heads_axis).index_select(-1, index)
        period, first, count, offset, length = self.runs
        if torch.compiler.is_compiling():  # as_strided would bake the traced strides into the graph
            grouped = _seq_major(states, heads_axis).unflatten(-1, (self.dim // period, period))
            return grouped[..., first : first + count, offset : offset + length]
        batch, seq, heads = states.shape[0], states.shape[3 - heads_axis], states.shape[heads_axis]
        step = states.stride(-1)
        return states.as_strided(
            (batch, seq, heads, count, length),
            (states.stride(0), states.stride(3 - heads_axis), states.stride(heads_axis), period * step, step),
            states.storage_offset() + (first * period + offset) * step,
        )

    def write_(self, states: torch.Tensor, index: torch.Tensor | None, values: torch.Tensor, heads_axis: int) -> None:
        """Write ``values`` (shaped like :meth:`read`'s result) into the low dims of ``states``."""
        if self.runs is None:
            _seq_major(states, heads_axis).index_copy_(-1, index, values)
        else:
            self.read(states, index, heads_axis).copy_(values)


def _seq_major(states: torch.Tensor, heads_axis: int) -> torch.Tensor:
    return states.transpose(1, 2) if heads_axis == 1 else states


def _as_runs(dims: list[int], dim: int) -> tuple[int, int, int, int, int] | None:
    """``(period, first, count, offset, length)`` when ``dims`` are ``count`` runs of ``length``
    consecutive dims starting at ``offset`` in periods ``first .. first + count - 1`` of a head split
    into ``period``-wide periods; ``None`` for any other set."""
    runs: list[list[int]] = []
    for d in dims:
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    length = len(runs[0])
    starts = [run[0] for run in runs]
    period = starts[1] - starts[0] if len(runs) > 1 else dim
    if any(len(run) != length for run in runs) or period <= 0 or dim % period:
        return None
    first, offset = divmod(starts[0], period)
    if offset + length > period or starts != [starts[0] + i * period for i in range(len(runs))]:
        return None
    return period, first, len(runs), offset, length


def scale_low_dims(
    states: torch.Tensor, signal: torch.Tensor, alpha: float, low: LowDims, index: torch.Tensor | None, heads_axis: int
) -> torch.Tensor:
    """``states`` with its low dims ``x`` replaced by ``x + x * scale``, ``scale = alpha * SiLU(signal)`` (``signal``,
    the projections' output before the SiLU, shaped like ``low.read(states, index, heads_axis)``). Without autograd
    the result is written into ``states`` itself when it is a fresh tensor (what a rotary function returns), so
    generation copies nothing but the low dims."""
    if torch.is_grad_enabled() and (states.requires_grad or signal.requires_grad):
        return _ScaleLowDims.apply(states, signal, alpha, low, index, heads_axis)
    scale = _scale_of(signal, alpha)
    out = states if _writable(states) else states.clone()
    if low.runs is None:
        low.write_(out, index, _scaled(low.read(out, index, heads_axis), scale), heads_axis)
    else:
        view = low.read(out, index, heads_axis)
        if view.dtype == scale.dtype:
            view.add_(view * scale)  # x + x * scale without a copy of x
        else:
            # A reduced-precision base: _scaled's arithmetic (computed in scale's dtype, rounded once on the way
            # back) on a contiguous copy of the low dims. Mixed-dtype kernels on the strided view would cast
            # through temporaries in both operations: 1.7x-1.9x this time at 60-480 rows, bf16 states.
            wide = view.to(scale.dtype)
            view.copy_(wide.add_(wide * scale))
    return out


def _scale_of(signal: torch.Tensor, alpha: float) -> torch.Tensor:
    scale = F.silu(signal)
    return scale if alpha == 1.0 else alpha * scale  # x * 1.0 == x: the same bits, one kernel less


def _writable(states: torch.Tensor) -> bool:
    """A tensor that is no view of another (which may be read elsewhere) and no leaf autograd tracks.

    Under ``torch.inference_mode`` views do not record their base, so there only a tensor that spans its
    whole storage counts. Never while dynamo traces: its functionalisation of an in-place autograd
    Function loses the gradient's path (torch 2.13), and inductor fuses the copy away anyway."""
    if torch.compiler.is_compiling():
        return False
    if states.is_inference():
        return states.untyped_storage().nbytes() == states.numel() * states.element_size()
    return states._base is None and not (states.is_leaf and states.requires_grad)


class _ScaleLowDims(torch.autograd.Function):
    """:func:`scale_low_dims` under autograd, with the backward written by hand.

    Autograd through ``index_select``/``index_copy`` would allocate two full-size gradients of the
    states per call (the incoming gradient with the low dims zeroed, and the low dims scattered into
    zeros) and sum them in a third pass; here the states' gradient is one copy of the incoming
    gradient with its low dims rescaled, since ``d out / d low = 1 + scale`` there and 1 elsewhere.
    The forward writes into the freshly rotated states (``mark_dirty``) instead of into a full copy.
    What it keeps for the backward is small: the original low dims and the signal before the SiLU; the
    scale is recomputed from the signal (two elementwise ops on the low dims) rather than kept beside it,
    and the SiLU's and alpha's backward run here, as the same ops autograd would run (so the same bits).
    """

    @staticmethod
    def forward(ctx, states, signal, alpha, low, index, heads_axis):
        in_place = _writable(states)
        out = states if in_place else states.clone()
        original = low.read(out, index, heads_axis)
        if ctx.needs_input_grad[1] and low.runs is not None:
            original = original.clone()  # the view is overwritten below
        low.write_(out, index, _scaled(original, _scale_of(signal, alpha)), heads_axis)
        if in_place:
            ctx.mark_dirty(states)
        ctx.alpha, ctx.low, ctx.heads_axis = alpha, low, heads_axis
        ctx.save_for_backward(original if ctx.needs_input_grad[1] else None, signal, index)
        return out

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad):
        original, signal, index = ctx.saved_tensors
        alpha, low, heads_axis = ctx.alpha, ctx.low, ctx.heads_axis
        grad_low = low.read(grad, index, heads_axis)
        grad_signal = None
        if ctx.needs_input_grad[1]:
            grad_scale = grad_low.to(signal.dtype) * original.to(signal.dtype)
            grad_scale = grad_scale if alpha == 1.0 else grad_scale * alpha
            # contiguous, as autograd's reshape back to the projection's rows made it: the SiLU's backward then
            # runs the same (vectorised) loop over the same layout, which keeps its bits
            grad_signal = torch.ops.aten.silu_backward(grad_scale.contiguous(), signal)
        grad_states = None
        if ctx.needs_input_grad[0]:
            grad_states = grad.clone()
            low.write_(grad_states, index, _scaled(grad_low, _scale_of(signal, alpha)), heads_axis)
        return grad_states, grad_signal, None, None, None, None


def _scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x + x * scale`` in ``scale``'s dtype, back in ``x``'s."""
    x32 = x.to(scale.dtype)
    return (x32 + x32 * scale).to(x.dtype)
