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
from rosa.roae.attention import MERGE_REFUSAL, ONE_ADAPTER_AT_A_TIME, RoSALayer
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

    def __init__(self, model: nn.Module, peft_config, adapter_name: str, **kwargs):
        self._geometries: dict[str, BaseGeometry] = {}  # before BaseTuner.__init__, which injects the first adapter
        super().__init__(model, peft_config, adapter_name, **kwargs)

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
        self._geometries[adapter_name] = geometry
        if not hasattr(model, "_rosa_load_check"):
            model._rosa_load_check = model.register_load_state_dict_pre_hook(_refuse_foreign_adapter_weights)

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
        if hasattr(self.model, "_rosa_load_check"):
            self.model.__dict__.pop("_rosa_load_check").remove()
        return self.model

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(ONE_ADAPTER_AT_A_TIME.format(names=names))
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._geometries.pop(adapter_name, None)

    @property
    def geometry(self) -> BaseGeometry:
        """The active adapter's view of the base: rotary groups, low-frequency pairs, layers without RoPE."""
        if not self._geometries:
            raise ValueError("this RoSA model has no adapter left (all were deleted); add one with add_adapter().")
        return self._geometries[self.active_adapters[0]]

    @property
    def nope_layers(self) -> list[int]:
        """Layers left out because they do not apply RoPE (NoPE layers, no-RoPE layer types, no attention)."""
        return list(self.geometry.without_rope)

    def roae_adapters(self, adapter_name: str | None = None) -> dict[int, RoAE]:
        """The RoAE module of each adapted decoder layer, by layer index (the active adapter's by default)."""
        name = adapter_name or self.active_adapters[0]
        layers = (m for m in self.model.modules() if isinstance(m, RoSALayer) and name in m.rosa_roae)
        return {layer.rosa_roae[name].layer_index: layer.rosa_roae[name] for layer in layers}

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **options) -> None:
        """Non-reentrant checkpointing by default: the frozen base's inputs carry no gradient, and
        reentrant checkpointing would then drop the adapters' gradients. transformers makes the
        embedding output require grad whenever checkpointing is on; only the reentrant variant needs
        that, so otherwise it is undone and backward stops at the lowest layer that trains. (The
        Trainer calls this name on the PeftModel, which reaches the tuner before the base model.)"""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.24's name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **options)
        if kwargs["use_reentrant"]:
            self.model.enable_input_require_grads()
        else:
            self.model.disable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **options) -> None:
        """The older name, still what PEFT's own helpers call."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)


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


def _refuse_foreign_adapter_weights(module, state_dict, prefix, *args) -> None:
    """``load_state_dict`` pre-hook on the adapted model: RoSA weights load whole and onto this base, or not at all.

    Every PEFT release (and transformers' ``load_adapter``) loads adapters with ``strict=False`` and
    only warns about missing or unexpected keys, so a file lacking some layers, or with keys that
    match nothing, would leave adapters at their initial values. And weights loaded into an existing
    adapter name are not checked against the base (PEFT reads no config then): each layer's saved
    ``low_frequencies`` are compared with the base's instead.
    """
    marker = f".{RoSALayer.adapter_layer_names[0]}."
    given = [key for key in state_dict if marker in f".{key}"]
    if not given:
        return
    own = {key: value for key, value in module.state_dict(prefix=prefix, keep_vars=True).items() if marker in f".{key}"}

    def adapter_of(key: str) -> str:
        return f".{key}".split(marker, 1)[1].split(".", 1)[0]

    loading = {adapter_of(key) for key in given if key in own}
    unexpected = sorted(key for key in given if key not in own)
    missing = sorted(key for key in own if adapter_of(key) in loading and key not in state_dict)
    if missing or unexpected:
        raise AdapterLoadError(
            f"the RoSA weights given do not match the adapter they load into: missing {missing[:4]}"
            f"{' ...' * (len(missing) > 4)} ({len(missing)}), unexpected {unexpected[:4]}{' ...' * (len(unexpected) > 4)} "
            f"({len(unexpected)}). The file is foreign or corrupted, or was made for other layers; nothing was loaded."
        )
    for key in given:
        if key.endswith(".low_frequencies") and not torch.allclose(state_dict[key].float().cpu(), own[key].float().cpu(), rtol=0.05):
            raise AdapterLoadError(
                f"the RoSA weights given for {key.rsplit('.', 1)[0]} were made for other rotary frequencies "
                f"({state_dict[key].tolist()} vs this base's {own[key].tolist()}): another base model. Nothing was loaded."
            )


def _same(saved, current) -> bool:
    """Equal, with measured frequencies equal within 5%: a base loaded in bf16 measures its rotary angles
    from bf16 cos/sin, a few parts in a thousand off its fp32 twin, while another rope_theta or scaling
    moves them by far more."""
    if isinstance(saved, float) and isinstance(current, float):
        return math.isclose(saved, current, rel_tol=0.05, abs_tol=1e-9)
    if isinstance(saved, dict) and isinstance(current, dict):  # what an older record lacks is not compared
        return saved.keys() <= current.keys() and all(_same(saved[k], current[k]) for k in saved)
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        return len(saved) == len(current) and all(_same(a, b) for a, b in zip(saved, current))
    return saved == current


def _rotary_difference(saved: list[dict], current: list[dict]) -> str:
    if len(saved) != len(current):
        return f"rotary layer groups: adapter {len(saved)} vs base {len(current)}"
    for old, new in zip(saved, current):
        for key, value in new.items():
            if key in old and not _same(old[key], value):
                return f"rotary {key} of layers {new['layers']}: adapter {old.get(key)} vs base {value}"
    return "rotary geometry"
