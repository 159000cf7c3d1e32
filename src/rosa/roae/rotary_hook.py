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

The same point serves observation (:func:`observe_rotary_states`, used by ``rosa analyze``): an
observer published for a block sees that block's states as attention will receive them, that is
after RoPE and after RoAE when an adapter is attached.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from rosa.architecture import find_decoder_stack
from rosa.errors import UnsupportedModelError
from rosa.roae.layer import RoAE

ROTARY_FUNCTION = "apply_rotary_pos_emb"


@dataclass
class _ActiveBlock:
    adapter: RoAE
    hidden: torch.Tensor
    applied: bool = field(default=False)


_ACTIVE: contextvars.ContextVar[_ActiveBlock | None] = contextvars.ContextVar("rosa_active_block", default=None)

# How many blocks publish an adapter or an observer right now, in any thread. The wrapper reads it
# first: zero means plain RoPE, a check torch.compile can trace (it cannot trace ContextVar.get), so
# a model without RoAE in the same process as a RoSA model compiles without graph breaks. A lock
# keeps it exact: zero is only ever read while no block publishes anywhere.
_publishing = threading.Lock()
_published = 0


def _count_published(change: int) -> None:
    global _published
    with _publishing:
        _published += change

# ``callback(layer_index, q, k, heads_axis)`` given to observe_rotary_states.
RotaryObserver = Callable[[int, torch.Tensor, torch.Tensor, int], None]
# The observer of the block now running, with its layer index already bound.
_OBSERVER: contextvars.ContextVar[Callable[[torch.Tensor, torch.Tensor, int], None] | None] = contextvars.ContextVar(
    "rosa_rotary_observer", default=None
)


def _wrap(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def apply_rotary_pos_emb_with_roae(q, k, cos, sin, *args, **kwargs):
        q, k = original(q, k, cos, sin, *args, **kwargs)
        if not _published:
            return q, k
        active, observer = _ACTIVE.get(), _OBSERVER.get()
        modulate = active is not None and active.adapter.enabled
        if not modulate and observer is None:
            return q, k
        heads_axis = 1  # the default of every transformers family: states are [batch, heads, seq, dim]
        if args or kwargs:
            bound = signature.bind(q, k, cos, sin, *args, **kwargs)
            heads_axis = bound.arguments.get("unsqueeze_dim", 1)
        if modulate:
            adapter = active.adapter
            if "q" in adapter.heads:
                q = adapter.modulate("q", q, active.hidden, heads_axis)
            if "k" in adapter.heads:
                k = adapter.modulate("k", k, active.hidden, heads_axis)
            active.applied = True
        if observer is not None:
            observer(q, k, heads_axis)
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
        _count_published(1)
        try:
            output = inner(*args, **kwargs)
        finally:
            _count_published(-1)
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


@contextlib.contextmanager
def observe_rotary_states(model: nn.Module, callback: RotaryObserver) -> Iterator[list[int]]:
    """While active, every forward calls ``callback(layer_index, q, k, heads_axis)`` in each RoPE layer.

    ``q`` and ``k`` are exactly what RoPE hands on to attention and the KV cache: rotated, and
    modulated when a RoAE adapter is attached (so a RoSAModel shows its adapted states; a PEFT LoRA
    on ``q_proj``/``k_proj`` is included too, since it acts before RoPE). They are the tensors the
    modeling code passes through ``apply_rotary_pos_emb``: all head dimensions for most families, only
    the rotated ones where the family splits the head before RoPE (Phi). ``heads_axis`` is the heads
    dimension (1: ``[batch, heads, seq, dim]``). Do not modify them in place.

    Yields the observed layer indices; NoPE layers are left out. Forward hooks (removed on exit,
    exceptions included) publish the block's observer; the module-level rotary wrapper they rely on
    is RoAE's and stays installed, a no-op when nothing is published. Outputs are unchanged.
    """
    # Imported here because inject imports this module.
    from rosa.roae.inject import find_attention, rope_layers

    stack = find_decoder_stack(model)
    layers = rope_layers(model)
    handles = []
    try:
        for index in layers:
            attention = find_attention(stack.layers[index])
            install_rotary_wrapper(attention)
            handles += _publish_observer(attention, functools.partial(callback, index))
        yield layers
    finally:
        for handle in handles:
            handle.remove()


def _publish_observer(attention: nn.Module, observer: Callable[[torch.Tensor, torch.Tensor, int], None]) -> list:
    """Publish ``observer`` while ``attention`` runs.

    The closing hook uses ``always_call`` so a forward that raises still withdraws the observer, and
    it is registered as a hook rather than an instance-``forward`` wrapper so it cannot interfere with
    :func:`attach`/:func:`detach`.
    """
    tokens: list[contextvars.Token] = []

    def enter(module, args):
        tokens.append(_OBSERVER.set(observer))
        _count_published(1)

    def leave(module, args, output):
        if tokens:  # empty when an earlier pre-hook raised before ``enter`` ran
            _count_published(-1)
            _OBSERVER.reset(tokens.pop())

    return [attention.register_forward_pre_hook(enter), attention.register_forward_hook(leave, always_call=True)]
