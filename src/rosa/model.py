"""``RoSAModel``: a base causal LM with RoAE adapters, behaving like the model it wraps."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch
from torch import nn

from rosa.config import RoSAConfig
from rosa.errors import AdapterLoadError
from rosa.roae.inject import inject_roae, remove_roae
from rosa.serialization import read_adapter_header, read_adapter_tensors, save_adapter
from rosa.version import __version__


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


class RoSAModel(nn.Module):
    """The wrapped model: ``forward``, ``generate``, ``.config`` and anything else reach the base.

    Only the RoAE parameters are trainable; the base model, norms included, is frozen.
    """

    def __init__(self, base_model: nn.Module, config: RoSAConfig):
        super().__init__()
        self.base_model = base_model
        self.rosa_config = config
        for parameter in base_model.parameters():
            parameter.requires_grad_(False)
        self.geometry, self.adapters = inject_roae(base_model, config)
        # Trainer (and other tools) read forward's signature to choose dataset columns; expose the
        # base model's instead of (*args, **kwargs), as peft.PeftModel does.
        self.forward = functools.wraps(base_model.forward)(functools.partial(type(self).forward, self))

    @property
    def nope_layers(self) -> list[int]:
        """Layers left out because they do not apply RoPE (NoPE layers, no-RoPE layer types, no attention)."""
        return list(self.geometry.without_rope)

    # Attribute access falls through to the base model, like peft.PeftModel.
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Adapter tensors under their saved names: ``layers.<i>.<target>.<A|B>.weight``."""
        return {
            f"layers.{index}.{name.replace('signals.', '', 1)}": parameter
            for index, adapter in self.adapters.items()
            for name, parameter in adapter.named_parameters()
        }

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = _count(p for p in self.parameters() if p.requires_grad)
        return trainable, _count(self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model alone inside the block (e.g. to compare against it)."""
        previous = {index: adapter.enabled for index, adapter in self.adapters.items()}
        for adapter in self.adapters.values():
            adapter.enabled = False
        try:
            yield
        finally:
            for index, adapter in self.adapters.items():
                adapter.enabled = previous[index]

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Non-reentrant checkpointing by default: the frozen base's inputs carry no gradient, and
        reentrant checkpointing would then drop the adapters' gradients. transformers makes the
        embedding output require grad whenever checkpointing is on; only the reentrant variant needs
        that, so otherwise it is undone and backward stops at the lowest layer that trains."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if kwargs["use_reentrant"]:
            self.base_model.enable_input_require_grads()
        else:
            self.base_model.disable_input_require_grads()

    def merge_and_unload(self):
        raise NotImplementedError(
            "RoAE cannot be merged into the base weights: its scale S = SiLU(B A H) depends on each "
            "token's hidden state, so no fixed weight matrix reproduces it. Keep the RoSAModel (or "
            "unload() to get the unadapted base model back)."
        )

    def unload(self) -> nn.Module:
        """Remove the adapters and return the base model as it was."""
        remove_roae(self.base_model, self.adapters)
        self.adapters = {}
        return self.base_model

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        header = {
            "rosa_version": __version__,
            "config": self.rosa_config.to_dict(),
            "base_model": {**self.geometry.to_dict(), **_base_file(self.config), "name_or_path": getattr(self.config, "_name_or_path", "")},
            "adapted_layers": sorted(self.adapters),
        }
        save_adapter(save_directory, self.adapter_parameters(), header)

    @classmethod
    def from_pretrained(
        cls, base_model: nn.Module, adapter_path: str | os.PathLike, is_trainable: bool = False
    ) -> "RoSAModel":
        """Load a saved adapter onto ``base_model``; refuses adapters made for another base."""
        config, saved = _read_header(adapter_path)
        tensors = read_adapter_tensors(adapter_path)
        text = base_model.config.get_text_config()
        # The sizes first, so a foreign base is named as such before the adapter's layers are placed on it.
        sizes = {k: getattr(text, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers")}
        # A GGUF base is known by its file's hash; checked where both the adapter and the base have one.
        _check_same_base({**sizes, **(_base_file(base_model.config) if "gguf_sha256" in saved else {})}, saved, adapter_path)
        model = cls(base_model, config)
        try:
            _check_same_base(model.geometry.to_dict(), saved, adapter_path)
            _copy_adapter_tensors(model.adapter_parameters(), tensors, adapter_path)
        except AdapterLoadError:
            model.unload()
            raise
        for parameter in model.adapter_parameters().values():
            parameter.requires_grad_(is_trainable)
        if not is_trainable:
            model.eval()
        return model

    def load_adapter_weights(self, adapter_path: str | os.PathLike) -> None:
        """Overwrite this model's adapter tensors with a saved adapter of the same config and base
        (how a training run resumes from a checkpoint); ``requires_grad`` is left as it is."""
        config, saved = _read_header(adapter_path)
        if config != self.rosa_config:
            raise AdapterLoadError(
                f"adapter in '{adapter_path}' was saved with another RoSA config ({config.to_dict()}, this model: "
                f"{self.rosa_config.to_dict()}). Resume with the configuration the run was started with."
            )
        _check_same_base(self.geometry.to_dict(), saved, adapter_path)
        _copy_adapter_tensors(self.adapter_parameters(), read_adapter_tensors(adapter_path), adapter_path)


def _read_header(adapter_path) -> tuple[RoSAConfig, dict]:
    header = read_adapter_header(adapter_path)
    try:
        config = RoSAConfig.from_dict(header["config"])
        saved = header["base_model"]
        if not isinstance(saved, dict):
            raise TypeError("base_model must be an object")
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterLoadError(f"adapter config in '{adapter_path}' is malformed: {err}") from err
    return config, saved


def _copy_adapter_tensors(expected: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor], adapter_path) -> None:
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterLoadError(
            f"adapter in '{adapter_path}' does not match its own config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. The file is foreign or corrupted."
        )
    for name, parameter in expected.items():
        if tensors[name].shape != parameter.shape:
            raise AdapterLoadError(
                f"tensor {name} in '{adapter_path}' has shape {tuple(tensors[name].shape)}, expected "
                f"{tuple(parameter.shape)}: the adapter was made for another base model."
            )
    with torch.no_grad():
        for name, parameter in expected.items():
            parameter.copy_(tensors[name])


def _base_file(config) -> dict:
    """``{"gguf_sha256": ...}`` for a base loaded from a GGUF file (rosa.loading records the hash), else ``{}``."""
    digest = getattr(config, "gguf_sha256", None)
    return {"gguf_sha256": digest} if digest else {}


def _check_same_base(current: dict, saved: dict, adapter_path) -> None:
    """``current``: the base model's geometry (``BaseGeometry.to_dict()``, or some of its keys)."""
    differences = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if differences:
        detail = ", ".join(f"{k}: adapter {a!r} vs base {b!r}" for k, (a, b) in differences.items())
        raise AdapterLoadError(
            f"adapter in '{adapter_path}' was made for another base model ({detail}). Load it onto the base "
            f"model it was trained on ({saved.get('name_or_path') or 'see adapter_config.json'})."
        )


def get_rosa_model(base_model: nn.Module, config: RoSAConfig | None = None) -> RoSAModel:
    """Freeze ``base_model`` and inject RoAE; the PEFT-style entry point."""
    return RoSAModel(base_model, config or RoSAConfig())

