"""``RoSALayer``: the PEFT tuner layer that wraps one attention block and its RoAE adapters.

RoAE acts on the rotated query and key, which exist only inside the attention block's forward, so
the tuner wraps the whole block (PEFT's ``ln_tuning`` likewise wraps non-Linear modules) rather than
a projection. The wrapper publishes the active adapter while the block runs; the rotary wrapper
(:mod:`rosa.roae.rotary_hook`) applies it right after RoPE, before the KV cache and any attention
kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from rosa.roae import rotary_hook
from rosa.roae.layer import RoAE

ONE_ADAPTER_AT_A_TIME = (
    "RoSA runs one adapter at a time, got {names}: each adapter rescales the same rotated query/key dims, so "
    "combining them has no defined meaning. Activate one adapter with set_adapter(name)."
)
MERGE_REFUSAL = (
    "RoAE cannot be merged into the base weights: its scale S = SiLU(B A H) depends on each token's "
    "hidden state, so no fixed weight matrix reproduces it. Keep the adapter unmerged (PeftModel), or "
    "unload() to get the unadapted base model back."
)


class RoSALayer(nn.Module, BaseTunerLayer):
    """An attention block carrying RoAE adapters, one per adapter name; one runs at a time."""

    adapter_layer_names = ("rosa_roae",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, adapter: RoAE, inference_mode: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.rosa_roae = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        rotary_hook.install_rotary_wrapper(base_layer)
        rotary_hook.shield_nested_rotary(base_layer)  # released on unload
        self.update_layer(adapter_name, adapter, inference_mode)

    def update_layer(self, adapter_name: str, adapter: RoAE, inference_mode: bool = False) -> None:
        self.rosa_roae[adapter_name] = adapter
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def __getattr__(self, name: str) -> Any:
        """Attributes of the attention block (``layer_idx``, ``is_causal``, ...) stay readable through the
        wrapper, since model code reads them from its ``self_attn``."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def running_adapter(self) -> RoAE | None:
        """The adapter this block applies now: ``None`` when adapters are disabled or the active adapter
        does not cover this layer (``RoSAConfig(layers=...)``)."""
        if self._disable_adapters:
            return None
        adapters = self._modules["rosa_roae"]._modules  # read per call (through no nn.Module lookup): never stale
        names = self._active_adapter
        if isinstance(names, str):
            return adapters.get(names)
        active = [name for name in names if name in adapters]
        if len(active) > 1:
            raise ValueError(ONE_ADAPTER_AT_A_TIME.format(names=active))
        return adapters[active[0]] if active else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapter = self.running_adapter()
        if adapter is None:
            return self.base_layer(*args, **kwargs)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if not isinstance(hidden, torch.Tensor):
            raise RuntimeError("RoAE could not find the attention block's hidden_states input.")
        with rotary_hook.publishing(adapter, hidden):
            return self._modules["base_layer"](*args, **kwargs)  # not through __getattr__: once per layer and token

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(MERGE_REFUSAL)

    def unmerge(self) -> None:
        """Nothing is ever merged."""

    def unload_and_optionally_merge_module(self, merge: bool, safe_merge: bool, adapter_names: list[str] | None) -> nn.Module:
        """The attention block as it was, without the nested-rotary shield this layer held."""
        if merge:
            raise NotImplementedError(MERGE_REFUSAL)
        rotary_hook.release_nested_rotary(self.base_layer)
        return self.base_layer

    def __repr__(self) -> str:
        return "rosa." + super().__repr__()
