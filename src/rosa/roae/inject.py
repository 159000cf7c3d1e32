"""Put RoAE adapters into a base model's attention blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rosa.architecture import find_decoder_stack, text_config
from rosa.config import RoSAConfig
from rosa.errors import RoSAConfigError
from rosa.roae import rotary_hook
from rosa.roae.layer import RoAE
from rosa.roae.probe import LayerRotary, RotaryGeometry, find_attention, rotary_geometry


@dataclass(frozen=True)
class RotaryGroup:
    """Layers that apply RoPE the same way, and the pairs RoAE adapts there."""

    layers: tuple[int, ...]
    rotary: LayerRotary
    low_frequency_pairs: tuple[int, ...]

    @property
    def low_frequency_dims(self) -> list[int]:
        return self.rotary.layout.low_frequency_dims(len(self.low_frequency_pairs))

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            **self.rotary.to_dict(),
            "rotary_pairs": self.rotary.layout.n_pairs,
            "low_frequency_pairs": list(self.low_frequency_pairs),
            "low_frequency_dims": self.low_frequency_dims,
        }


@dataclass(frozen=True)
class BaseGeometry:
    """What an adapter's shapes and dimensions depend on; saved with the adapter and checked on load."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    rotary: tuple[RotaryGroup, ...]
    without_rope: tuple[int, ...]

    def group_of(self, layer: int) -> RotaryGroup:
        return next(group for group in self.rotary if layer in group.layers)

    def to_dict(self) -> dict:
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "rotary": [group.to_dict() for group in self.rotary],
            "without_rope": list(self.without_rope),
        }


def base_geometry(model: nn.Module, config: RoSAConfig, probed: RotaryGeometry | None = None) -> BaseGeometry:
    """The model's rotary geometry (probed unless given), grouped, with ``config``'s low-frequency pairs."""
    probed = probed or rotary_geometry(model)
    text = text_config(model)
    layers_of: dict[LayerRotary, list[int]] = {}
    for index, layer in probed.layers.items():
        layers_of.setdefault(layer, []).append(index)
    groups = tuple(
        RotaryGroup(
            layers=tuple(layers),
            rotary=layer,
            low_frequency_pairs=tuple(layer.layout.low_frequency_pairs(config.n_low_pairs(layer.layout.n_pairs))),
        )
        for layer, layers in layers_of.items()
    )
    return BaseGeometry(
        model_type=text.model_type,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        rotary=groups,
        without_rope=probed.without_rope,
    )


def _adapter_dtype(config: RoSAConfig, model: nn.Module) -> torch.dtype:
    if config.adapter_dtype == "auto":
        return next(model.parameters()).dtype
    return getattr(torch, config.adapter_dtype)


def _requested_layers(config: RoSAConfig, geometry: BaseGeometry) -> list[int]:
    n_layers = geometry.num_hidden_layers
    if config.layers is None:
        return [i for i in range(n_layers) if i not in geometry.without_rope]
    out_of_range = [i for i in config.layers if i >= n_layers]
    if out_of_range:
        raise RoSAConfigError(f"layers {out_of_range} do not exist: the model has {n_layers} layers (0..{n_layers - 1}).")
    without_rope = [i for i in config.layers if i in geometry.without_rope]
    if without_rope:
        raise RoSAConfigError(
            f"layers {without_rope} do not apply RoPE (NoPE layers, a layer type without RoPE, or no attention); "
            "remove them from layers."
        )
    return list(config.layers)


def inject_roae(model: nn.Module, config: RoSAConfig) -> tuple[BaseGeometry, dict[int, RoAE]]:
    """Attach a RoAE adapter to every selected layer; returns the geometry and the adapters.

    Everything is checked before the first adapter is attached, and a failure while attaching
    removes the adapters already attached, so a refused model is left as it was.
    """
    geometry = base_geometry(model, config)
    requested = _requested_layers(config, geometry)
    stack = find_decoder_stack(model)
    dtype = _adapter_dtype(config, model)
    generator = torch.Generator().manual_seed(config.init_seed) if config.init_seed is not None else None
    adapters: dict[int, RoAE] = {}
    try:
        for index in requested:
            group = geometry.group_of(index)
            heads = {"q": group.rotary.query_heads, "k": group.rotary.key_heads}
            attention = find_attention(stack.layers[index])
            rotary_hook.install_rotary_wrapper(attention)
            adapter = RoAE(
                layer_index=index,
                d_model=geometry.hidden_size,
                rank=config.rank,
                alpha=config.alpha,
                heads={t: heads[t] for t in config.targets},
                low_dims=group.low_frequency_dims,
                dim=group.rotary.layout.dim,
                rotary_function=group.rotary.function,
                dtype=dtype,
                generator=generator,
            ).to(next(attention.parameters()).device)  # each layer's own device (device_map="auto" spreads them)
            rotary_hook.attach(attention, adapter)
            attention.roae = adapter
            adapters[index] = adapter
    except BaseException:
        remove_roae(model, adapters)
        raise
    return geometry, adapters


def remove_roae(model: nn.Module, adapters: dict[int, RoAE]) -> None:
    stack = find_decoder_stack(model)
    for index in adapters:
        attention = find_attention(stack.layers[index])
        rotary_hook.detach(attention)
        del attention.roae
