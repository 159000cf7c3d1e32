"""Which decoder layers apply RoPE, to how many query and key heads, in which layout.

Configs cannot say this reliably: Cohere 2 and EXAONE 4 skip RoPE in their full-attention layers,
Falcon-7B shares one key head, DeepSeek-V3 and MiniCPM3 rotate only a decoupled part of each head
and share one rotary key head, Gemma 3 and OLMo 3 give each layer type its own frequencies. So each
block's attention is run once on two dummy tokens, stopped right after its rotary function (no cache
write, no attention kernel; on the meta device for ``rosa info``), which tells whether the layer
rotates, with which function and on what shapes; the layout and frequencies are then measured from
that function and the layer's own rotary embedding (:mod:`rosa.roae.layout`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from rosa.architecture import find_decoder_stack, text_config
from rosa.errors import UnsupportedModelError
from rosa.roae import rotary_hook
from rosa.roae.layout import RotaryLayout, measure_layout

NO_ROPE_MESSAGE = (
    "model type '{model_type}' has no rotary position embedding (it uses learned/absolute positions, "
    "ALiBi or none), so RoAE has no RoPE-rotated dimensions to adapt. Use a RoPE model (Llama, Qwen, "
    "Mistral, Gemma, Phi, GPT-NeoX, ...) or use DynamicLayerSelector alone on a PEFT LoRA model."
)


@dataclass(frozen=True)
class LayerRotary:
    """How one decoder layer applies RoPE: the states its rotary function hands on to attention."""

    function: str
    query_heads: int
    key_heads: int
    heads_axis: int
    layer_type: str | None
    layout: RotaryLayout

    def to_dict(self) -> dict:
        return {
            "function": self.function,
            "query_heads": self.query_heads,
            "key_heads": self.key_heads,
            "layer_type": self.layer_type,
            **self.layout.to_dict(),
        }


@dataclass(frozen=True)
class RotaryGeometry:
    """Every layer that applies RoPE, and the layers that do not (NoPE, no-RoPE layer types, no attention)."""

    layers: dict[int, LayerRotary]
    without_rope: tuple[int, ...]


def find_attention(block: nn.Module) -> nn.Module | None:
    """The module of ``block`` whose forward calls a rotary function, or ``None``."""
    for module in block.modules():
        if rotary_hook.rotary_functions(module):
            return module
    return None


def rotary_geometry(model: nn.Module) -> RotaryGeometry:
    """Probe every decoder layer of ``model``; refuses models that never apply RoPE as RoAE needs."""
    config = text_config(model)
    stack = find_decoder_stack(model)
    attentions = {i: find_attention(block) for i, block in enumerate(stack.layers)}
    if not any(attentions.values()):
        raise UnsupportedModelError(NO_ROPE_MESSAGE.format(model_type=getattr(config, "model_type", type(model).__name__)))
    for attention in filter(None, attentions.values()):
        rotary_hook.check_rotary_signature(attention)
    embedding = _rotary_embedding(model, stack.prefix)
    layouts: dict[tuple, RotaryLayout] = {}  # layers that rotate alike are measured once
    layers: dict[int, LayerRotary] = {}
    for index, attention in attentions.items():
        if attention is not None:
            layer = _probe_layer(model, index, attention, embedding, layouts)
            if layer is not None:
                layers[index] = layer
    if not layers:
        raise UnsupportedModelError(
            f"no layer of model type '{config.model_type}' applied RoPE when probed, so RoAE has nothing to adapt."
        )
    return RotaryGeometry(layers, tuple(i for i in range(len(stack)) if i not in layers))


def rotary_buffers(module: nn.Module) -> list[str]:
    """Names of ``module``'s own rotary frequency buffers: ``inv_freq``, or ``<layer type>_inv_freq``
    for a per-layer-type embedding (Gemma 3, OLMo 3); the ``original`` copies are left out."""
    return [
        name for name, buffer in module.named_buffers(recurse=False)
        if (name == "inv_freq" or name.endswith("_inv_freq")) and "original" not in name and buffer.ndim == 1
    ]


def _rotary_embedding(model: nn.Module, stack_prefix: str) -> nn.Module:
    """The model's rotary embedding: the one module outside the decoder blocks with frequency buffers."""
    found = [
        (name, module) for name, module in model.named_modules()
        if rotary_buffers(module) and not name.startswith(f"{stack_prefix}.")
    ]
    if len(found) != 1:
        raise UnsupportedModelError(
            f"RoAE expects one rotary embedding outside the decoder layers, found {[n for n, _ in found] or 'none'}; "
            "it cannot tell which one feeds which layer, so this model is not supported."
        )
    name, embedding = found[0]
    if _device(embedding).type == "meta":  # real even for a meta model (see train.methods.meta_model)
        raise UnsupportedModelError(f"the rotary embedding {name} has no values (meta device); rebuild it on a real device.")
    return embedding


def _device(embedding: nn.Module) -> torch.device:
    return next(iter(embedding.buffers())).device


def _layer_type(model: nn.Module, embedding: nn.Module, index: int) -> str | None:
    """The layer type to ask a per-layer-type rotary embedding for (Gemma 3, OLMo 3), else ``None``."""
    if "layer_type" not in inspect.signature(embedding.forward).parameters:
        return None
    layer_types = getattr(text_config(model), "layer_types", None)
    if not layer_types:
        raise UnsupportedModelError("the rotary embedding is per layer type, but the config has no layer_types.")
    return layer_types[index]


def _embed(embedding: nn.Module, x: torch.Tensor, positions: list[int], layer_type: str | None):
    position_ids = torch.tensor([positions], device=x.device)
    if layer_type is None:
        return embedding(x, position_ids)
    return embedding(x, position_ids, layer_type=layer_type)


def _probe_layer(
    model: nn.Module, index: int, attention: nn.Module, embedding: nn.Module, layouts: dict[tuple, RotaryLayout]
) -> LayerRotary | None:
    config = text_config(model)
    layer_type = _layer_type(model, embedding, index)
    parameter = next(attention.parameters())
    hidden = torch.zeros(1, 2, config.hidden_size, device=parameter.device, dtype=model.dtype)
    device = _device(embedding)
    where = f"layer {index} ({type(attention).__name__})"
    if layer_type is not None and f"{layer_type}_inv_freq" not in rotary_buffers(embedding):
        position_embeddings = None  # a layer type without rotary parameters gets none (Beam's full attention)
    else:
        # Computed where the embedding's frequencies live (dynamic and LongRoPE updates read them), then
        # moved to the attention's device: the meta device for `rosa info`.
        with torch.no_grad():
            cos_sin = _embed(embedding, torch.zeros(1, 2, 1, device=device, dtype=hidden.dtype), [0, 1], layer_type)
        position_embeddings = tuple(t.to(hidden.device) for t in cos_sin)
    try:
        call = rotary_hook.probe_rotary_call(attention, **_attention_inputs(attention, hidden, position_embeddings))
    except UnsupportedModelError:
        raise
    except Exception as err:  # an attention block that needs more than two plain tokens to run
        raise UnsupportedModelError(f"{where}: running its attention once to find its RoPE failed: {err}") from err
    if call is None:
        return None
    where = f"layer {index} ({type(attention).__name__}, {call.function})"
    dim = call.query_shape[-1]
    if call.key_shape[-1] != dim:
        raise UnsupportedModelError(f"{where}: rotated queries have {dim} dims but keys {call.key_shape[-1]}.")
    function = rotary_hook.rotary_functions(attention)[call.function]

    def cos_sin_at(position: int):
        with torch.no_grad():
            return _embed(embedding, torch.zeros(1, 1, 1, device=device), [position], layer_type)

    def rotate(states, cos, sin):
        return function(states, states, cos, sin, **call.options)[0]

    key = (function, dim, call.heads_axis, layer_type, repr(sorted(call.options.items())))
    if key not in layouts:
        layouts[key] = measure_layout(rotate, dim, call.heads_axis, cos_sin_at, where)
    layout = layouts[key]
    return LayerRotary(
        function=call.function,
        query_heads=call.query_shape[call.heads_axis],
        key_heads=call.key_shape[call.heads_axis],
        heads_axis=call.heads_axis,
        layer_type=layer_type,
        layout=layout,
    )


def _attention_inputs(attention: nn.Module, hidden: torch.Tensor, position_embeddings) -> dict:
    """Keyword arguments for one call of ``attention``: two tokens at positions 0 and 1, no mask, no cache."""
    known = {
        "hidden_states": hidden,
        "position_embeddings": position_embeddings,
        "position_ids": torch.tensor([[0, 1]], device=hidden.device),
    }
    inputs = {}
    for name, parameter in inspect.signature(type(attention).forward).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in known:
            inputs[name] = known[name]
        elif parameter.default is parameter.empty:
            inputs[name] = None
    if "hidden_states" not in inputs:
        raise UnsupportedModelError(f"{type(attention).__name__}.forward takes no hidden_states; RoAE cannot probe it.")
    return inputs
