"""The base model's rotary geometry as RoAE adapts it, and the adapter of one layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rosa.architecture import text_config
from rosa.config import RoSAConfig
from rosa.errors import RoSAConfigError
from rosa.roae.layer import RoAE
from rosa.roae.probe import LayerRotary, RotaryGeometry, rotary_geometry


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


def adapter_dtype(config: RoSAConfig, model: nn.Module) -> torch.dtype:
    if config.adapter_dtype == "auto":
        return next(model.parameters()).dtype
    return getattr(torch, config.adapter_dtype)


def requested_layers(config: RoSAConfig, geometry: BaseGeometry) -> list[int]:
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


def new_adapter(config: RoSAConfig, geometry: BaseGeometry, index: int, dtype: torch.dtype,
                device: torch.device, generator: torch.Generator | None) -> RoAE:
    """The RoAE adapter of layer ``index``, on that layer's device (``device_map="auto"`` spreads layers).

    A meta ``device`` (weights offloaded by accelerate) leaves it on the CPU; under PEFT's
    ``low_cpu_mem_usage`` the adapter is itself created on meta and stays there until loading fills it."""
    group = geometry.group_of(index)
    heads = {"q": group.rotary.query_heads, "k": group.rotary.key_heads}
    frequencies = group.rotary.layout.dim_frequencies()
    adapter = RoAE(
        layer_index=index,
        d_model=geometry.hidden_size,
        rank=config.rank,
        alpha=config.alpha,
        heads={t: heads[t] for t in config.targets},
        low_dims=group.low_frequency_dims,
        low_frequencies=[frequencies[d] for d in group.low_frequency_dims],
        dim=group.rotary.layout.dim,
        rotary_function=group.rotary.function,
        dtype=dtype,
        generator=generator,
    )
    if device.type == "meta" or next(adapter.parameters()).is_meta:
        return adapter
    return adapter.to(device)
