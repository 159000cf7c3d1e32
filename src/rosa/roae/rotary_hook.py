"""Apply RoAE right after RoPE, before the KV cache and before any attention kernel.

Every RoPE family in ``transformers`` that RoAE supports rotates q and k together with a
module-level function of its modeling file (``apply_rotary_pos_emb``, DeepSeek-V3's
``apply_rotary_pos_emb_interleave``, ...) and only then writes keys to the cache and calls the
attention function chosen through ``AttentionInterface`` (eager, sdpa, flash). Wrapping that function
is therefore the single point where:

- the states are already rotated (the spec adapts rotated states),
- a modulated key is what enters the KV cache, so cached and uncached generation agree,
- the attention implementation is irrelevant: eager, sdpa and flash attention all see the result.

The wrapper is a no-op unless an attention block carrying a RoAE adapter is running: that block's
forward publishes ``(adapter, hidden_states)`` for the duration of the call (in a context variable;
while ``torch.compile`` traces, on a plain stack it can trace: see :class:`_BlockScoped`),
and checks afterwards that RoPE actually ran (so a NoPE layer cannot silently skip its adapter).

The same point serves probing (:func:`probe_rotary_call`: which function a block rotates with and
on what shapes, see :mod:`rosa.roae.probe`) and observation (:func:`observe_rotary_states`, used by ``rosa analyze``): an
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
from dataclasses import dataclass

import torch
from torch import nn

from rosa.architecture import find_decoder_stack
from rosa.errors import UnsupportedModelError
from rosa.roae.layer import RoAE

# Every transformers RoPE family rotates with a module-level function of its modeling file whose
# name starts with this: apply_rotary_pos_emb, apply_rotary_pos_emb_interleave (DeepSeek-V3), ...
ROTARY_FUNCTION_PREFIX = "apply_rotary"
# The arguments such a function must start with for RoAE to tell the query from the key.
ROTARY_SIGNATURE = ("q", "k", "cos", "sin")


@dataclass
class RotaryCall:
    """What one probed attention block handed its rotary function (see :func:`probe_rotary_call`)."""

    function: str
    query_shape: tuple[int, ...]
    key_shape: tuple[int, ...]
    heads_axis: int
    options: dict


class _ProbeFinished(Exception):
    """Raised by the wrapper to stop a probed block right after its rotary function."""


# How many values of the slots below are set outside a trace right now, in any thread. While it is zero a
# slot's value is its default without a ContextVar lookup, which torch.compile cannot trace; a lock keeps
# it exact, so zero is only ever read while nothing is set anywhere.
_publishing = threading.Lock()
_published = 0


def _count_published(change: int) -> None:
    global _published
    with _publishing:
        _published += change


class _BlockScoped:
    """A value set for the duration of one module call and read by the rotary wrapper inside it.

    Outside a trace it is a ``ContextVar``, so threads and async tasks running models at once each see
    their own. While dynamo traces (``torch.compile``), which cannot trace a ``ContextVar``, it is a plain
    stack: setting and reading both happen inside the traced call, so dynamo resolves the value while
    tracing and the compiled graph holds no break and no lookup. A value set outside a trace is still
    seen inside one (then the lookup is a graph break), so compiling only part of a model never skips
    an adapter. One cost of the stack: when a graph break splits a block, the value sits on it between
    the compiled pieces, where eager code in another thread would read it too.
    """

    def __init__(self, name: str, default=None):
        self.var = contextvars.ContextVar(name, default=default)
        self.default = default
        self.traced: list = []

    def set(self, value) -> contextvars.Token | None:
        if torch.compiler.is_compiling():
            self.traced.append(value)
            return None
        _count_published(1)
        return self.var.set(value)

    def reset(self, token: contextvars.Token | None) -> None:
        if token is None:
            self.traced.pop()
        else:
            _count_published(-1)
            self.var.reset(token)

    def get(self):
        if self.traced:
            return self.traced[-1]
        return self.var.get() if _published else self.default


# The attention block now running with an adapter (a ``publishing``).
_ACTIVE = _BlockScoped("rosa_active_block")
# The list a probe collects its ``RotaryCall`` in.
_PROBE = _BlockScoped("rosa_rotary_probe")
# True while a module nested in an attention block runs RoPE of its own (the token indexer of
# DeepSeek-V3.2-style sparse attention, say): those states select tokens, they are not the block's
# queries and keys, so the wrapper leaves them alone.
_NESTED = _BlockScoped("rosa_nested_rotary", default=False)

# ``callback(layer_index, q, k, heads_axis)`` given to observe_rotary_states.
RotaryObserver = Callable[[int, torch.Tensor, torch.Tensor, int], None]
# The observer of the block now running, with its layer index already bound.
_OBSERVER = _BlockScoped("rosa_rotary_observer")


def _wrap(original, name: str):
    """``original`` (the modeling file's rotary function, or its kernels module) followed by RoAE. It stays the
    object called, so a hub kernel that ``kernels.kernelize`` put in its place still runs; its arguments are
    named after the plain function's signature."""
    plain = plain_function(original)
    signature = inspect.signature(plain)

    @functools.wraps(plain)
    def apply_rotary_with_roae(q, k, cos, sin, *args, **kwargs):
        rotated_q, rotated_k = original(q, k, cos, sin, *args, **kwargs)
        if _NESTED.get():
            return rotated_q, rotated_k
        active, observer, probe = _ACTIVE.get(), _OBSERVER.get(), _PROBE.get()
        modulate = active is not None
        if not modulate and observer is None and probe is None:
            return rotated_q, rotated_k
        options = {}
        if args or kwargs:
            bound = signature.bind(q, k, cos, sin, *args, **kwargs).arguments
            options = {key: value for key, value in list(bound.items())[4:] if not isinstance(value, torch.Tensor)}
        heads_axis = options.get("unsqueeze_dim", 1)  # every family's default: [batch, heads, seq, dim]
        if probe is not None:
            probe.append(RotaryCall(name, tuple(rotated_q.shape), tuple(rotated_k.shape), heads_axis, options))
            raise _ProbeFinished
        if modulate:
            adapter = active.adapter
            if adapter.rotary_function != name:
                raise RuntimeError(
                    f"RoAE layer {adapter.layer_index}: the block rotated with {name}, but its adapter was "
                    f"measured on {adapter.rotary_function}; rebuild the RoSA model after changing the config."
                )
            rotated_q, rotated_k = adapter.modulate(rotated_q, rotated_k, active.hidden, heads_axis)
            active.applied = True
        if observer is not None:
            observer(rotated_q, rotated_k, heads_axis)
        return rotated_q, rotated_k

    apply_rotary_with_roae.__rosa_original__ = original
    return apply_rotary_with_roae


def plain_function(rotary) -> Callable | None:
    """The Python function behind a modeling file's rotary function, ``None`` if it is neither.

    From transformers 5.25 on, with the ``kernels`` package (a dependency from then on), a function decorated with
    ``@use_kernel_forward_from_hub`` (``apply_rotary_pos_emb`` of most families) is an ``nn.Module`` instance whose
    forward calls the function, so a hub kernel can take its place; the function is the one its forward closes
    over. Its signature (``q, k, cos, sin, ...``) is what tells RoAE the query from the key."""
    if inspect.isfunction(rotary):
        return rotary
    if isinstance(rotary, nn.Module):
        cells = getattr(type(rotary).forward, "__closure__", None) or ()
        functions = [cell.cell_contents for cell in cells if inspect.isfunction(cell.cell_contents)]
        if len(functions) == 1:
            return functions[0]
    return None


def rotary_functions(attention: nn.Module) -> dict[str, Callable]:
    """The rotary functions ``attention``'s forward calls, by name, as plain functions."""
    cls = type(attention)
    code = getattr(inspect.unwrap(cls.forward), "__code__", None)
    module = sys.modules[cls.__module__]
    names = [n for n in (code.co_names if code else ()) if n.startswith(ROTARY_FUNCTION_PREFIX)]
    found = {n: getattr(module, n, None) for n in names}
    functions = {n: plain_function(getattr(f, "__rosa_original__", f)) for n, f in found.items()}
    return {n: f for n, f in functions.items() if f is not None}


def check_rotary_signature(attention: nn.Module) -> None:
    """Refuse rotary functions that do not say which state is the query and which the key."""
    for name, function in rotary_functions(attention).items():
        parameters = tuple(inspect.signature(function).parameters)
        if parameters[:4] != ROTARY_SIGNATURE:
            cls = type(attention)
            raise UnsupportedModelError(
                f"{cls.__name__} ({cls.__module__}) rotates with {name}{tuple(parameters)}, not with "
                f"{name}{ROTARY_SIGNATURE}: it rotates the query and the key in separate calls (GPT-J, CodeGen) "
                "or with complex frequencies (DeepSeek-V2), so RoAE cannot tell which state it is given. "
                "RoAE does not support this family; DynamicLayerSelector alone works on a PEFT LoRA model."
            )


def install_rotary_wrapper(attention: nn.Module) -> None:
    """Wrap the rotary functions of ``attention``'s modeling module, and of the modules nested in it
    (idempotent)."""
    for module in attention.modules():
        check_rotary_signature(module)
        modeling = sys.modules[type(module).__module__]
        for name in rotary_functions(module):
            if not hasattr(getattr(modeling, name), "__rosa_original__"):
                setattr(modeling, name, _wrap(getattr(modeling, name), name))


def shield_nested_rotary(attention: nn.Module) -> None:
    """While the modules nested in ``attention`` that apply RoPE of their own run, the wrapper leaves
    their states alone, so only the block's own call is seen. Shields are counted per module, so a
    probe, an adapter and an observer of one block each hold one, and :func:`release_nested_rotary`
    leaves the model without hooks when all are released. The count lives on the nested module
    itself, so a deep copy of the model carries its own."""
    for nested in attention.modules():
        if nested is attention or not rotary_functions(nested):
            continue
        shield = nested.__dict__.get("_rosa_shield")
        if shield is None:
            tokens: list[contextvars.Token | None] = []
            handles = [
                nested.register_forward_pre_hook(lambda _module, _args: tokens.append(_NESTED.set(True))),
                nested.register_forward_hook(
                    lambda _module, _args, _output: _NESTED.reset(tokens.pop()) if tokens else None, always_call=True
                ),
            ]
            shield = nested._rosa_shield = {"handles": handles, "holders": 0}
        shield["holders"] += 1


def release_nested_rotary(attention: nn.Module) -> None:
    """Give back one shield of :func:`shield_nested_rotary` on ``attention``'s nested rotary modules."""
    for nested in attention.modules():
        shield = nested.__dict__.get("_rosa_shield") if nested is not attention else None
        if shield is None:
            continue
        shield["holders"] -= 1
        if not shield["holders"]:
            for handle in shield["handles"]:
                handle.remove()
            del nested._rosa_shield


def probe_rotary_call(attention: nn.Module, **inputs) -> RotaryCall | None:
    """Run ``attention(**inputs)`` until it rotates q and k, and say how; ``None`` if it never does.

    The block stops right after its rotary function, before any cache write or attention kernel;
    a block that does not rotate (a NoPE layer) runs to its end.
    """
    install_rotary_wrapper(attention)
    shield_nested_rotary(attention)
    calls: list[RotaryCall] = []
    token = _PROBE.set(calls)
    try:
        with torch.no_grad():
            attention(**inputs)
    except _ProbeFinished:
        pass
    finally:
        _PROBE.reset(token)
        release_nested_rotary(attention)
    return calls[0] if calls else None


class publishing:
    """Publish ``adapter`` while its attention block runs (:class:`rosa.roae.attention.RoSALayer`).

    On exit (exceptions included) the context is withdrawn, so a failed call can never leave a stale
    adapter active for the next block; on a normal exit a block that never applied RoPE raises, so
    a NoPE layer cannot silently skip its adapter. A class rather than a generator context manager:
    it runs once per layer and generated token, where a generator's overhead shows.
    """

    __slots__ = ("adapter", "hidden", "applied", "token")

    def __init__(self, adapter: RoAE, hidden: torch.Tensor):
        self.adapter, self.hidden, self.applied = adapter, hidden, False

    def __enter__(self) -> None:
        self.token = _ACTIVE.set(self)

    def __exit__(self, kind, error, traceback) -> None:
        _ACTIVE.reset(self.token)
        if kind is None and not self.applied:
            raise RuntimeError(
                f"RoAE layer {self.adapter.layer_index}: the attention block ran without applying RoPE, so the "
                "adapter was not used. Exclude this layer with RoSAConfig(layers=...)."
            )


@contextlib.contextmanager
def observe_rotary_states(model: nn.Module, callback: RotaryObserver) -> Iterator[list[int]]:
    """While active, every forward calls ``callback(layer_index, q, k, heads_axis)`` in each RoPE layer.

    ``q`` and ``k`` are exactly what RoPE hands on to attention and the KV cache: rotated, and
    modulated when a RoAE adapter is attached (so a RoSA model shows its adapted states; a PEFT LoRA
    on ``q_proj``/``k_proj`` is included too, since it acts before RoPE). They are the tensors the
    modeling code passes through its rotary function: all head dimensions for most families, only
    the rotated ones where the family splits the head before RoPE (Phi). ``heads_axis`` is the heads
    dimension (1: ``[batch, heads, seq, dim]``). Do not modify them in place.

    Yields the observed layer indices; NoPE layers are left out. Forward hooks (removed on exit,
    exceptions included) publish the block's observer; the module-level rotary wrapper they rely on
    is RoAE's and stays installed, a no-op when nothing is published. Outputs are unchanged.
    """
    # Imported here because the probe imports this module.
    from rosa.roae.probe import find_attention, rotary_geometry

    stack = find_decoder_stack(model)
    layers = sorted(rotary_geometry(model).layers)
    handles, shielded = [], []
    try:
        for index in layers:
            attention = find_attention(stack.layers[index])
            install_rotary_wrapper(attention)
            shield_nested_rotary(attention)
            shielded.append(attention)
            handles += _publish_observer(attention, functools.partial(callback, index))
        yield layers
    finally:
        for handle in handles:
            handle.remove()
        for attention in shielded:
            release_nested_rotary(attention)


def _publish_observer(attention: nn.Module, observer: Callable[[torch.Tensor, torch.Tensor, int], None]) -> list:
    """Publish ``observer`` while ``attention`` runs.

    The closing hook uses ``always_call`` so a forward that raises still withdraws the observer, and
    it is a hook on the attention block itself, inside any :class:`rosa.roae.attention.RoSALayer`
    wrapping it, so it sees the states of whichever adapter that layer publishes.
    """
    tokens: list[contextvars.Token | None] = []

    def enter(module, args):
        tokens.append(_OBSERVER.set(observer))

    def leave(module, args, output):
        if tokens:  # empty when an earlier pre-hook raised before ``enter`` ran
            _OBSERVER.reset(tokens.pop())

    return [attention.register_forward_pre_hook(enter), attention.register_forward_hook(leave, always_call=True)]
