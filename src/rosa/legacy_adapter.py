"""Adapters saved by rosa 0.1 (before RoSA became a PEFT method), read so they keep working.

rosa 0.1 wrote ``adapter_config.json`` with ``"format": "rosa-roae"`` (no ``peft_type``) and keyed the
tensors by layer index (``layers.3.q.A.weight``). Such an adapter is put on a fresh RoSA ``PeftModel``
built from its recorded settings, which checks the recorded base exactly as a PEFT adapter's is
checked; ``save_pretrained`` on the result writes it in the current (PEFT) format:
``rosa.loading.load_adapter(base, old_dir).save_pretrained(new_dir)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from rosa.config import RoSAConfig
from rosa.errors import AdapterLoadError, RoSAConfigError
from rosa.serialization import CONFIG_NAME, WEIGHTS_NAME

FORMAT = "rosa-roae"
FORMAT_VERSION = 2  # version 1 assumed rotate-half pairing everywhere: refused


def is_legacy(header: dict) -> bool:
    return header.get("format") == FORMAT


def load_legacy_adapter(base_model: nn.Module, directory: str | os.PathLike, header: dict, is_trainable: bool = False):
    """A ``PeftModel`` carrying the rosa 0.1 adapter in ``directory``, whose ``adapter_config.json`` the
    caller has read (``header``)."""
    from rosa.model import get_rosa_model

    config = _legacy_config(Path(directory) / CONFIG_NAME, header)
    tensors = _legacy_tensors(directory)
    model = get_rosa_model(base_model, config)  # checks the recorded base, as for any RoSA adapter
    key_of = {id(tensor): key for key, tensor in model.state_dict(keep_vars=True).items()}
    state, expected = {}, set()
    for index, adapter in model.roae_adapters().items():
        for name, tensor in adapter.state_dict(keep_vars=True).items():
            if name == "low_frequencies":  # not in 0.1's files; the config check above covered the base
                state[key_of[id(tensor)]] = tensor.detach()
                continue
            legacy = f"layers.{index}.{name.replace('_', '.')}.weight"  # rosa 0.1's name of layer 3's "q_A"
            expected.add(legacy)
            if legacy in tensors:
                state[key_of[id(tensor)]] = tensors[legacy]
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        model.unload()
        raise AdapterLoadError(
            f"adapter in '{directory}' does not match its own config: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. The file is foreign or corrupted."
        )
    model.load_state_dict(state, strict=False)  # shapes are checked on the way in
    for adapter in model.roae_adapters().values():
        adapter.requires_grad_(is_trainable)
    if not is_trainable:
        model.eval()
    return model


def _legacy_config(path: Path, header: dict) -> RoSAConfig:
    version = header.get("format_version")
    if version == 1:
        raise AdapterLoadError(
            f"{path} was saved by an older rosa (format_version 1), which assumed every model pairs its RoPE "
            "dimensions rotate-half and did not record the layout it adapted (wrong on interleaved families such "
            "as Cohere or GLM). Train the adapter again with this rosa."
        )
    if version != FORMAT_VERSION:
        raise AdapterLoadError(f"{path} has format_version {version!r}, which no rosa release wrote; the file is corrupted.")
    try:
        saved = dict(header["base_model"])
        name_or_path = saved.pop("name_or_path", None)
        return RoSAConfig(**header["config"], base_geometry=saved, base_model_name_or_path=name_or_path or None)
    except (KeyError, TypeError, ValueError, RoSAConfigError) as err:
        raise AdapterLoadError(f"adapter config in '{path}' is malformed: {err}") from err


def _legacy_tensors(directory) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterLoadError(f"no {WEIGHTS_NAME} in '{directory}'; the adapter directory is incomplete.")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise unreadable_weights(path, err) from err


def unreadable_weights(path: Path, err: Exception) -> AdapterLoadError:
    """A weights file that exists but cannot be read as safetensors."""
    return AdapterLoadError(
        f"{path} is not a readable safetensors file ({err}); it is truncated or corrupted. Restore it "
        "from a good copy or save the adapter again."
    )
