"""``RoSAModel``: the PEFT tuner that injects RoAE, as ``LoraModel`` is LoRA's.

Users meet it through PEFT: ``peft.get_peft_model(model, RoSAConfig(...))`` (or the alias
:func:`get_rosa_model`) returns a ``PeftModel`` whose ``base_model`` is a ``RoSAModel``, and
``PeftModel.from_pretrained`` loads a saved RoSA adapter. What PEFT cannot know, this class adds:

- **which modules to wrap**: not found by name but measured, since RoAE needs each layer's rotary
  layout (:func:`rosa.roae.inject.base_geometry` probes every decoder layer);
- **which base an adapter belongs to**: the geometry (and a GGUF file's hash) is recorded in the
  adapter's config when it is created and compared with the base when it is loaded, before any
  adapter is attached; PEFT itself checks only tensor shapes, and equal shapes can hide other
  rotary dims;
- **what cannot be done**: merging (RoAE's scale depends on each token), two active adapters at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from peft import get_peft_model
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from rosa.architecture import find_decoder_stack, text_config
from rosa.config import RoSAConfig
from rosa.errors import AdapterLoadError
from rosa.registration import PREFIX
from rosa.roae.attention import MERGE_REFUSAL, RoSALayer
from rosa.roae.inject import BaseGeometry, adapter_dtype, base_geometry, new_adapter, requested_layers
from rosa.roae.layer import RoAE
from rosa.roae.probe import find_attention

# The sizes compared before the (costlier) probe, so a foreign base is named as such first.
BASE_SIZES = ("model_type", "hidden_size", "num_hidden_layers")


@dataclass
class _Injection:
    """What one ``inject_adapter`` call decided before PEFT walks the modules."""

    geometry: BaseGeometry
    targets: dict[str, int]  # module name -> decoder layer index
    dtype: torch.dtype
    generator: torch.Generator | None


class RoSAModel(BaseTuner):
    """Wraps the attention block of every adapted layer in a :class:`RoSALayer`.

    Several adapters can be added (``add_adapter``, ``load_adapter(name=...)``); one is active at a
    time. ``geometry``, ``nope_layers`` and ``roae_adapters()`` describe the active adapter.
    """

    prefix: str = PREFIX
    tuner_layer_cls = RoSALayer
    target_module_mapping: dict = {}  # RoSA measures which modules to wrap; nothing is chosen by name

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: dict | None = None) -> None:
        config = self.peft_config[adapter_name]
        if config.base_geometry is not None:
            _check_same_base(_base_sizes(model), config)
        geometry = base_geometry(model, config)
        measured = {**geometry.to_dict(), **_base_file(model)}
        if config.base_geometry is not None:
            _check_same_base(measured, config)
        else:  # a copy: the caller's config may serve other models
            config = self.peft_config[adapter_name] = dataclasses.replace(config, base_geometry=measured)
        generator = torch.Generator().manual_seed(config.init_seed) if config.init_seed is not None else None
        self._injection = _Injection(geometry, _attention_names(model, requested_layers(config, geometry)),
                                     adapter_dtype(config, model), generator)
        try:
            super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                   low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        finally:
            del self._injection
        self.__dict__.setdefault("geometries", {})[adapter_name] = geometry

    def _prepare_adapter_config(self, peft_config: RoSAConfig, model_config: dict) -> RoSAConfig:
        return peft_config  # no target_modules to fill in

    def _check_target_module_exists(self, peft_config: RoSAConfig, key: str) -> bool:
        return key in self._injection.targets

    def _create_and_replace(self, peft_config: RoSAConfig, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str) -> None:
        injection = self._injection
        attention = target.base_layer if isinstance(target, RoSALayer) else target
        adapter = new_adapter(peft_config, injection.geometry, injection.targets[current_key], injection.dtype,
                              next(attention.parameters()).device, injection.generator)
        if isinstance(target, RoSALayer):
            target.update_layer(adapter_name, adapter, peft_config.inference_mode)
            return
        layer = RoSALayer(target, adapter_name, adapter, peft_config.inference_mode)
        layer.set_adapter(self.active_adapters, inference_mode=peft_config.inference_mode)
        self._replace_module(parent, target_name, layer, target)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """``RoSAConfig.adapter_dtype`` decides the adapter's dtype (fp32 by default), not PEFT's autocast."""

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(MERGE_REFUSAL)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Every PEFT release loads adapters with ``load_state_dict(strict=False)`` and only warns about
        missing keys, so a file that lacks some layers' tensors would leave them at their initial values.
        An adapter is loaded whole or not at all: refused here, before any tensor is copied."""
        adapter_keys = {f"{prefix}{name}" for name, _ in self.named_parameters() if f".{self.tuner_layer_cls.adapter_layer_names[0]}." in f".{name}"}
        for adapter_name in self.peft_config:
            marker = f".{self.tuner_layer_cls.adapter_layer_names[0]}.{adapter_name}."
            expected = {key for key in adapter_keys if marker in key}
            given = {key for key in state_dict if marker in key}
            if given and given != expected:
                missing, unexpected = sorted(expected - given), sorted(given - expected)
                raise AdapterLoadError(
                    f"the weights given for RoSA adapter '{adapter_name}' do not match its config: missing "
                    f"{missing[:4]}{' ...' * (len(missing) > 4)} ({len(missing)}), unexpected {unexpected[:4]}"
                    f"{' ...' * (len(unexpected) > 4)} ({len(unexpected)}). The file is foreign or corrupted; nothing was loaded."
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        wrapped = [(name, module) for name, module in self.model.named_modules() if isinstance(module, RoSALayer)]
        for name, layer in wrapped:
            parent = self.model.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], layer.unload_and_optionally_merge_module(False, False, None))
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(
                f"RoSA runs one adapter at a time, got {names}: each adapter rescales the same rotated query/key "
                "dims, so combining them has no defined meaning. Activate one adapter."
            )
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.__dict__.get("geometries", {}).pop(adapter_name, None)

    @property
    def geometry(self) -> BaseGeometry:
        """The active adapter's view of the base: rotary groups, low-frequency pairs, layers without RoPE."""
        return self.__dict__["geometries"][self.active_adapters[0]]

    @property
    def nope_layers(self) -> list[int]:
        """Layers left out because they do not apply RoPE (NoPE layers, no-RoPE layer types, no attention)."""
        return list(self.geometry.without_rope)

    def roae_adapters(self, adapter_name: str | None = None) -> dict[int, RoAE]:
        """The RoAE module of each adapted decoder layer, by layer index (the active adapter's by default)."""
        name = adapter_name or self.active_adapters[0]
        layers = (m for m in self.model.modules() if isinstance(m, RoSALayer) and name in m.rosa_roae)
        return {layer.rosa_roae[name].layer_index: layer.rosa_roae[name] for layer in layers}

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Non-reentrant checkpointing by default: the frozen base's inputs carry no gradient, and
        reentrant checkpointing would then drop the adapters' gradients. transformers makes the
        embedding output require grad whenever checkpointing is on; only the reentrant variant needs
        that, so otherwise it is undone and backward stops at the lowest layer that trains."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if kwargs["use_reentrant"]:
            self.model.enable_input_require_grads()
        else:
            self.model.disable_input_require_grads()


def get_rosa_model(model: nn.Module, config: RoSAConfig | None = None, adapter_name: str = "default"):
    """``peft.get_peft_model(model, config)`` for a RoSA config: freezes ``model`` and injects RoAE."""
    return get_peft_model(model, config or RoSAConfig(), adapter_name=adapter_name)


def _attention_names(model: nn.Module, layers: list[int]) -> dict[str, int]:
    """The module to wrap for each layer: its attention block, or the RoSALayer already wrapping it."""
    stack = find_decoder_stack(model)
    wanted = {id(find_attention(stack.layers[index])): index for index in layers}
    names: dict[str, int] = {}
    for name, module in model.named_modules():
        inner = module.base_layer if isinstance(module, RoSALayer) else module
        if id(inner) in wanted and wanted[id(inner)] not in names.values():
            names[name] = wanted[id(inner)]
    return names


def _base_sizes(model: nn.Module) -> dict:
    text = text_config(model)
    return {**{key: getattr(text, key, None) for key in BASE_SIZES}, **_base_file(model)}


def _base_file(model: nn.Module) -> dict:
    """``{"gguf_sha256": ...}`` for a base loaded from a GGUF file (rosa.loading records the hash), else ``{}``."""
    digest = getattr(model.config, "gguf_sha256", None)
    return {"gguf_sha256": digest} if digest else {}


def _check_same_base(current: dict, config: RoSAConfig) -> None:
    """``current``: what the base model has (some or all keys of the recorded geometry). A GGUF hash is
    compared only when both the adapter and the base have one."""
    saved = config.base_geometry
    differences = [
        _rotary_difference(saved.get(key) or [], value) if key == "rotary" else f"{key}: adapter {saved.get(key)!r} vs base {value!r}"
        for key, value in current.items()
        if (key != "gguf_sha256" or key in saved) and not _same(saved.get(key), value)
    ]
    if differences:
        raise AdapterLoadError(
            f"this RoSA adapter was made for another base model ({'; '.join(differences)}). Load it onto the base model "
            f"it was trained on ({config.base_model_name_or_path or 'see base_geometry in its adapter_config.json'})."
        )


def _same(saved, current) -> bool:
    """Equal, with measured frequencies equal within 5%: a base loaded in bf16 measures its rotary angles
    from bf16 cos/sin, a few parts in a thousand off its fp32 twin, while another rope_theta or scaling
    moves them by far more."""
    if isinstance(saved, float) and isinstance(current, float):
        return math.isclose(saved, current, rel_tol=0.05, abs_tol=1e-9)
    if isinstance(saved, dict) and isinstance(current, dict):
        return saved.keys() == current.keys() and all(_same(saved[k], current[k]) for k in saved)
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        return len(saved) == len(current) and all(_same(a, b) for a, b in zip(saved, current))
    return saved == current


def _rotary_difference(saved: list[dict], current: list[dict]) -> str:
    if len(saved) != len(current):
        return f"rotary layer groups: adapter {len(saved)} vs base {len(current)}"
    for old, new in zip(saved, current):
        for key, value in new.items():
            if not _same(old.get(key), value):
                return f"rotary {key} of layers {new['layers']}: adapter {old.get(key)} vs base {value}"
    return "rotary geometry"
