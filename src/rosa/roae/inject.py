"""Put RoAE adapters into a base model's attention blocks."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from rosa.architecture import find_decoder_stack, text_config
from rosa.config import RoSAConfig
from rosa.errors import RoSAConfigError, UnsupportedModelError
from rosa.roae import rotary_hook
from rosa.roae.frequencies import RotarySpec, rotary_spec
from rosa.roae.layer import RoAE


@dataclass(frozen=True)
class BaseGeometry:
    """What an adapter's shapes depend on; saved with the adapter and checked on load."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rotary_pairs: int
    low_frequency_pairs: tuple[int, ...]

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["low_frequency_pairs"] = list(self.low_frequency_pairs)
        return out


def find_attention(block: nn.Module) -> nn.Module:
    for module in block.modules():
        code = getattr(inspect.unwrap(type(module).forward), "__code__", None)
        if code is not None and rotary_hook.ROTARY_FUNCTION in code.co_names:
            return module
    raise UnsupportedModelError(
        f"{type(block).__name__} has no attention module that applies RoPE through "
        f"'{rotary_hook.ROTARY_FUNCTION}'; RoAE cannot adapt this architecture."
    )


def rope_layers(model: nn.Module) -> list[int]:
    """Layers that apply RoPE. Models with NoPE layers say so in ``config.no_rope_layers`` (1 = RoPE)."""
    config = text_config(model)
    flags = getattr(config, "no_rope_layers", None)
    n = config.num_hidden_layers
    return [i for i in range(n) if flags is None or bool(flags[i])]


def base_geometry(model: nn.Module, config: RoSAConfig, spec: RotarySpec) -> BaseGeometry:
    text = text_config(model)
    n_heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    if spec.rotary_dim > head_dim:
        raise UnsupportedModelError(
            f"rotary embedding has {spec.rotary_dim} dims but heads have {head_dim}; unsupported layout."
        )
    return BaseGeometry(
        model_type=text.model_type,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=getattr(text, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        rotary_pairs=spec.n_pairs,
        low_frequency_pairs=tuple(spec.low_frequency_pairs(config.n_low_pairs(spec.n_pairs))),
    )


def _adapter_dtype(config: RoSAConfig, model: nn.Module) -> torch.dtype:
    if config.adapter_dtype == "auto":
        return next(model.parameters()).dtype
    return getattr(torch, config.adapter_dtype)


def inject_roae(model: nn.Module, config: RoSAConfig) -> tuple[BaseGeometry, dict[int, RoAE], list[int]]:
    """Attach a RoAE adapter to every selected layer; returns geometry, adapters and skipped NoPE layers."""
    spec = rotary_spec(model)
    geometry = base_geometry(model, config, spec)
    stack = find_decoder_stack(model)
    with_rope = rope_layers(model)
    requested = list(range(len(stack))) if config.layers is None else list(config.layers)
    out_of_range = [i for i in requested if i >= len(stack)]
    if out_of_range:
        raise RoSAConfigError(
            f"layers {out_of_range} do not exist: the model has {len(stack)} layers (0..{len(stack) - 1})."
        )
    skipped = [i for i in requested if i not in with_rope]
    if skipped and config.layers is not None:
        raise RoSAConfigError(f"layers {skipped} do not apply RoPE (NoPE layers); remove them from layers.")
    heads = {"q": geometry.num_attention_heads, "k": geometry.num_key_value_heads}
    low_dims = spec.low_frequency_dims(len(geometry.low_frequency_pairs))
    device = next(model.parameters()).device
    dtype = _adapter_dtype(config, model)
    generator = torch.Generator().manual_seed(config.init_seed) if config.init_seed is not None else None
    adapters: dict[int, RoAE] = {}
    for index in (i for i in requested if i in with_rope):
        attention = find_attention(stack.layers[index])
        rotary_hook.install_rotary_wrapper(attention)
        adapter = RoAE(
            layer_index=index,
            d_model=geometry.hidden_size,
            rank=config.rank,
            alpha=config.alpha,
            heads={t: heads[t] for t in config.targets},
            low_dims=low_dims,
            dtype=dtype,
            generator=generator,
        ).to(device)
        attention.roae = adapter
        rotary_hook.attach(attention, adapter)
        adapters[index] = adapter
    return geometry, adapters, skipped


def remove_roae(model: nn.Module, adapters: dict[int, RoAE]) -> None:
    stack = find_decoder_stack(model)
    for index in adapters:
        attention = find_attention(stack.layers[index])
        rotary_hook.detach(attention)
        del attention.roae
