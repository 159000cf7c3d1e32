"""A quantised frozen base (QLoRA's idea, for RoSA): which library quantises what, and where.

RoAE never touches a Linear weight: it scales the rotated query and key states, so it trains on any
base whose projections still pass gradients to their inputs. The adapter itself stays in full
precision (``rosa.adapter_dtype``, fp32 by default).

- ``int8``: bitsandbytes' LLM.int8 on a CUDA GPU; optimum-quanto's int8 weights on a CPU.
- ``int4``: optimum-quanto's int4 weights (groups of 128) on either; bitsandbytes has no integer 4-bit type.
- ``nf4``: bitsandbytes' NF4 with double quantisation and bf16 compute (the QLoRA recipe), CUDA only.

On a CPU, optimum-quanto rather than torchao: it quantises through ``from_pretrained(quantization_config=
QuantoConfig(...))`` like bitsandbytes does on a GPU, every method here trains on it with non-zero
gradients, and torchao 0.18 prints a failed-library warning on every ``import peft`` with torch 2.13.
bitsandbytes' 4-bit CPU path is refused: its first forward fails on widths that are not multiples of
32, and after any forward without gradients it switches to a kernel with no backward, so the adapter's
gradients silently become zero (torch only warns).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

import torch

from rosa.errors import RoSAConfigError

QUANTIZATIONS = ("int8", "int4", "nf4")


def quantization_config(kind: str | None, device: torch.device, compute_dtype: torch.dtype) -> Any:
    """The transformers quantisation config for ``kind`` on ``device``, or None for a full-precision base.

    Raises before anything is loaded when the combination cannot train correctly here, or when the
    library it needs is missing.
    """
    if kind is None:
        return None
    check_choice(kind)
    if kind == "nf4" and device.type != "cuda":
        raise RoSAConfigError(
            "quantize nf4 needs a CUDA GPU: bitsandbytes' 4-bit CPU kernels have no backward after a forward "
            "without gradients, so the adapter would silently stop learning. On a CPU use --quantize int8 or int4 "
            "(optimum-quanto)."
        )
    if device.type == "cuda" and kind in ("int8", "nf4"):
        _require("bitsandbytes", "bitsandbytes", kind)
        from transformers import BitsAndBytesConfig

        if kind == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype if compute_dtype != torch.float32 else torch.bfloat16)
    _require("optimum.quanto", "optimum-quanto", kind)
    from transformers import QuantoConfig

    return QuantoConfig(weights=kind)


def check_choice(kind: str | None, method: str | None = None) -> None:
    """A known quantisation, and a method that can train on it. PiSSA replaces each base weight by its
    residual after an SVD of it; a quantised weight cannot take that residual exactly, and no test here
    shows the result right."""
    if kind is not None and kind not in QUANTIZATIONS:
        raise RoSAConfigError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (or left out), got {kind!r}.")
    if kind is not None and method == "pissa":
        raise RoSAConfigError(
            f"method pissa cannot train on a quantised base (quantize {kind}): PiSSA rewrites the base weights with "
            "their SVD residual. Use lora or dora on a quantised base, or leave quantize out."
        )


def _require(module: str, package: str, kind: str) -> None:
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (``optimum``)
        found = False
    if not found:
        raise RoSAConfigError(f"quantize {kind} here needs {package}, which is not installed: pip install {package}")


def release_freed_memory(device: torch.device) -> None:
    """Hand the memory quantising on a CPU freed back to the operating system.

    Quantising on load reads each full-precision weight and frees it again, but glibc's allocator keeps
    freed heap memory for the process: measured on SmolLM2-135M with optimum-quanto int8, the process held
    about 1,680 MiB after loading and 506-936 MiB once trimmed (the fp32 base loads in 411 MiB).
    ``malloc_trim`` returns it; elsewhere (no glibc, or a GPU, where the weights live in device memory)
    this does nothing.
    """
    if device.type != "cpu":
        return
    library = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None
    if trim is not None:
        gc.collect()
        trim(0)
