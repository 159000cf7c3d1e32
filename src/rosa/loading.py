"""Load a base model, its tokenizer, and a saved adapter (RoSA or PEFT) onto it, without pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rosa.errors import AdapterLoadError
from rosa.gguf import GGUFSource, dequantised_directory, gguf_source
from rosa.interrupt import LOADING_MODEL, during
from rosa.legacy_adapter import is_legacy, load_legacy_adapter, unreadable_weights
from rosa.quantize import quantization_config, release_freed_memory
from rosa.serialization import CONFIG_NAME, WEIGHTS_NAME, atomic_write_json

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BASE_RECORD = "base_model.json"  # beside a PEFT adapter trained on a GGUF base: which file


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16).

    Only then does bf16 pay off on a CPU: on SmolLM2-135M here a training step took 0.71x the time of
    fp32 and batched greedy evaluation 0.6x (docs/training-cost.md). Without these instructions torch
    emulates bf16 and fp32 is the faster choice.
    """
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # public since torch 2.6
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it (the usual choice for fine-tuning) and on a CPU with
    native bf16, and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
        else:
            bf16 = device.type == "cpu" and native_bf16_cpu()
        return torch.bfloat16 if bf16 else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def check_model_path(name_or_path: str) -> None:
    """A path-like name that does not exist is a typo, not a hub id: say so before transformers tries the hub."""
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"model directory '{name_or_path}' does not exist; pass a local model directory or a hub id.")


@during(LOADING_MODEL)
def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with a pad token that is never a real word, padding on the right.

    Upstream sets ``pad_token_id = 0`` (LLaMA's ``<unk>``); we take the tokenizer's own pad token,
    else its unk token, else EOS. Padding is always masked, so the choice cannot change outputs.
    Training batches are padded on the right whatever the tokenizer's saved default; generation
    asks for left padding in its own call.
    """
    from transformers import AutoTokenizer

    check_model_path(name_or_path)
    directory, _ = model_directory(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@during(LOADING_MODEL)
def load_base_model(
    name_or_path: str, *, precision: str = "auto", device: torch.device | None = None, trust_remote_code: bool = False,
    quantize: str | None = None,
) -> torch.nn.Module:
    """The frozen base, in ``precision``, optionally with quantised Linear weights (:mod:`rosa.quantize`)."""
    from transformers import AutoModelForCausalLM

    check_model_path(name_or_path)
    device = device or default_device()
    dtype = resolve_dtype(precision, device)
    quantization = quantization_config(quantize, device, dtype)  # refused here, before anything is read
    placement = {"quantization_config": quantization, "device_map": {"": str(device)}} if quantization else {}
    directory, source = model_directory(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, trust_remote_code=trust_remote_code, **placement)
    if source is not None:  # a GGUF file's cached conversion: adapters record the file it came from
        model.config._name_or_path = model.name_or_path = str(source.file)
        model.config.gguf_sha256 = Path(directory).name  # the cache entry is named by the file's hash
    if quantization:
        release_freed_memory(device)
        return model  # bitsandbytes models refuse .to()
    return model.to(device)


def model_directory(name_or_path: str) -> tuple[str, GGUFSource | None]:
    """What transformers loads for ``name_or_path`` (itself, or a GGUF file's cached conversion), and
    the GGUF file when there is one."""
    source = gguf_source(name_or_path)
    return (name_or_path if source is None else str(dequantised_directory(source))), source


def adapter_directory(path_or_id: str | os.PathLike) -> Path:
    """A local adapter directory, or a Hub repository's snapshot holding only its config and safetensors
    weights (from the local cache when ``HF_HUB_OFFLINE=1``)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_id)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise AdapterLoadError(f"adapter '{name}' is neither a directory nor a Hub repository id (owner/name).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise AdapterLoadError(f"could not get adapter '{name}' from the Hugging Face Hub or its cache: {err}") from err


def read_adapter_config(directory: Path) -> dict:
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise AdapterLoadError(f"'{directory}' holds no {CONFIG_NAME}; pass a directory written by save_pretrained or `rosa train`.")
    try:
        header = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{config_file} is not valid JSON ({err}); the adapter is corrupted.") from err
    if not isinstance(header, dict) or not ("peft_type" in header or is_legacy(header)):
        raise AdapterLoadError(f"{config_file} is neither a PEFT adapter config nor one written by rosa.")
    return header


@during(LOADING_MODEL)
def load_adapter(base_model: torch.nn.Module, path_or_id: str | os.PathLike, is_trainable: bool = False) -> torch.nn.Module:
    """Put a saved adapter (RoSA, LoRA or any PEFT method; a directory or a Hub id) on ``base_model``,
    only ever from safetensors; a rosa 0.1 adapter is read in its own format."""
    from peft import PeftModel
    from safetensors import SafetensorError

    directory = adapter_directory(path_or_id)
    header = read_adapter_config(directory)
    if is_legacy(header):
        return load_legacy_adapter(base_model, directory, header, is_trainable)
    if not (directory / WEIGHTS_NAME).is_file():
        raise AdapterLoadError(
            f"'{path_or_id}' has no adapter_model.safetensors. rosa loads adapters only from safetensors (a .bin "
            "file is a pickle and can run code); re-save the adapter with safe_serialization=True."
        )
    check_base_record(base_model, directory)
    try:
        return PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
    except SafetensorError as err:
        raise unreadable_weights(directory / WEIGHTS_NAME, err) from err


def write_base_record(base_model: torch.nn.Module, directory: Path) -> None:
    """Record beside a PEFT adapter (LoRA, DoRA, PiSSA) the GGUF file its base was dequantised from.

    A RoSA adapter records its base in its own config (``base_geometry``); PEFT's configs have no place
    for a file hash, and an unknown key there makes every PEFT release warn on load. Equal-shaped bases
    from different files (another quantisation, another fine-tune) would otherwise take the adapter
    silently.
    """
    digest = getattr(base_model.config, "gguf_sha256", None)
    if digest:
        atomic_write_json(directory / BASE_RECORD, {"gguf_file": Path(base_model.name_or_path).name, "gguf_sha256": digest})


def check_base_record(base_model: torch.nn.Module, directory: Path) -> None:
    record_file = directory / BASE_RECORD
    if not record_file.is_file():
        return
    record = json.loads(record_file.read_text())
    digest = getattr(base_model.config, "gguf_sha256", None)
    if digest != record["gguf_sha256"]:
        found = f"a base from GGUF SHA-256 {digest}" if digest else "a base not loaded from a GGUF file"
        raise AdapterLoadError(
            f"this adapter was trained on {record['gguf_file']} (GGUF SHA-256 {record['gguf_sha256']}), but is being "
            f"loaded onto {found}. Load it onto the base model it was trained on."
        )


@during(LOADING_MODEL)
def load_for_inference(name_or_path: str, adapter: str | os.PathLike | None = None, precision: str = "auto",
                       trust_remote_code: bool = False, quantize: str | None = None) -> tuple[torch.nn.Module, Any]:
    """Tokenizer and model (with its adapter, if any) as ``rosa eval`` and ``rosa analyze`` use them."""
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    model = load_base_model(name_or_path, precision=precision, trust_remote_code=trust_remote_code, quantize=quantize)
    if adapter:
        model = load_adapter(model, adapter)
    return model, tokenizer
