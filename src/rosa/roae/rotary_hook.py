"""Apply RoAE right after RoPE, before the KV cache and before any attention kernel.

Every RoPE family in ``transformers`` rotates q and k with its modeling module's
``apply_rotary_pos_emb`` and only then writes keys to the cache and calls the attention function
chosen through ``AttentionInterface`` (eager, sdpa, flash). Wrapping that one function is therefore
the single point where:

- the states are already rotated (the spec adapts rotated states),
- a modulated key is what enters the KV cache, so cached and uncached generation agree,
- the attention implementation is irrelevant: eager, sdpa and flash attention all see the result.

The wrapper is a no-op unless an attention block carrying a RoAE adapter is running: that block's
forward publishes ``(adapter, hidden_states)`` in a context variable for the duration of the call,
and checks afterwards that RoPE actually ran (so a NoPE layer cannot silently skip its adapter).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from rosa.errors import UnsupportedModelError
from rosa.roae.layer import RoAE

ROTARY_FUNCTION = "apply_rotary_pos_emb"


@dataclass
class _ActiveBlock:
    adapter: RoAE
    hidden: torch.Tensor
    applied: bool = field(default=False)


_ACTIVE: contextvars.ContextVar[_ActiveBlock | None] = contextvars.ContextVar("rosa_active_block", default=None)


def _wrap(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def apply_rotary_pos_emb_with_roae(q, k, cos, sin, *args, **kwargs):
        q, k = original(q, k, cos, sin, *args, **kwargs)
        active = _ACTIVE.get()
        if active is None or not active.adapter.enabled:
            return q, k
        heads_axis = 1  # the default of every transformers family: states are [batch, heads, seq, dim]
        if args or kwargs:
            bound = signature.bind(q, k, cos, sin, *args, **kwargs)
            heads_axis = bound.arguments.get("unsqueeze_dim", 1)
        adapter = active.adapter
        if "q" in adapter.heads:
            q = adapter.modulate("q", q, active.hidden, heads_axis)
        if "k" in adapter.heads:
            k = adapter.modulate("k", k, active.hidden, heads_axis)
        active.applied = True
        return q, k

    apply_rotary_pos_emb_with_roae.__rosa_original__ = original
    return apply_rotary_pos_emb_with_roae


def install_rotary_wrapper(attention: nn.Module) -> None:
    """Wrap ``apply_rotary_pos_emb`` in the modeling module of ``attention``'s class (idempotent)."""
    cls = type(attention)
    forward = inspect.unwrap(cls.forward)
    module = sys.modules[cls.__module__]
    function = getattr(module, ROTARY_FUNCTION, None)
    if function is None or ROTARY_FUNCTION not in forward.__code__.co_names:
        raise UnsupportedModelError(
            f"{cls.__name__} ({cls.__module__}) does not apply RoPE through '{ROTARY_FUNCTION}', so RoAE "
            "cannot reach its rotated query/key states. Supported: the transformers RoPE families that "
            "rotate with apply_rotary_pos_emb (Llama, Mistral, Qwen2/3, Gemma/Gemma2, Phi/Phi3, OLMo2, "
            "Granite, GPT-NeoX, ...)."
        )
    if not hasattr(function, "__rosa_original__"):
        setattr(module, ROTARY_FUNCTION, _wrap(function))


def _hidden_states(args, kwargs) -> torch.Tensor:
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(hidden, torch.Tensor):
        raise RuntimeError("RoAE could not find the attention block's hidden_states input.")
    return hidden


def attach(attention: nn.Module, adapter: RoAE) -> None:
    """Publish ``adapter`` while ``attention`` runs, by wrapping its instance ``forward``.

    A wrapper with ``try/finally`` (rather than forward hooks, which PyTorch skips when the forward
    raises) guarantees the context is withdrawn on every exit, so a failed call can never leave a
    stale adapter active for the next block.
    """
    if hasattr(attention, "_rosa_unwrapped_forward"):
        raise RuntimeError(f"attention block {adapter.layer_index} already carries a RoAE adapter.")
    inner = attention.forward

    @functools.wraps(inner)
    def forward_with_roae(*args, **kwargs):
        block = _ActiveBlock(adapter, _hidden_states(args, kwargs))
        token = _ACTIVE.set(block)
        try:
            output = inner(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)
        if adapter.enabled and not block.applied:
            raise RuntimeError(
                f"RoAE layer {adapter.layer_index}: the attention block ran without applying RoPE, so the "
                "adapter was not used. Exclude this layer with RoSAConfig(layers=...)."
            )
        return output

    attention._rosa_unwrapped_forward = inner
    attention.forward = forward_with_roae


def detach(attention: nn.Module) -> None:
    """Undo :func:`attach`."""
    inner = attention.__dict__.pop("_rosa_unwrapped_forward")
    if inner == getattr(type(attention), "forward").__get__(attention):
        attention.__dict__.pop("forward", None)
    else:
        attention.forward = inner
