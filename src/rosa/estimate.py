"""Training memory of a method on a model, estimated from its architecture alone (the meta device).

What a training step holds at its peak, in four parts:

- **frozen weights**: every base parameter in the base dtype, except the decoder's Linear weights when
  the base is quantised (int8: 1 byte, int4 and nf4: about 0.52 bytes a weight with their scales);
  transformers leaves the output head unquantised.
- **adapter**: the trainable parameters in fp32 with their gradients and AdamW's two moments, 16 bytes each.
- **activations**: what autograd keeps for the backward pass, per decoder layer and token. The base is
  frozen, so its Linear layers keep nothing (the gradient to their input needs only the weight); what
  stays is each RMSNorm's input, attention's query, key, value and output, the MLP's gate, activation
  and up projection, and the adapters' inputs and intermediates: RoAE's hidden state and low-frequency
  slices, LoRA's (dropped-out) inputs and rank-r products. The backward pass runs down to the first
  layer in every method here (DLS ``skip`` masks updates, not the backward). Attention is assumed to be
  SDPA or flash attention, which keep no attention matrix.
- **logits**: the output head's logits, their fp32 copy for the loss, and the loss's saved log-softmax.

Not counted: the framework's own memory (a CUDA context, about 0.5 GB; on a CPU the Python process),
allocator fragmentation, and temporary buffers inside one operation. `tests/test_estimate.py` checks
the activation term against the bytes autograd really saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

QUANTIZED_BYTES = {"int8": 1.0, "int4": 0.5 + 4 / 128, "nf4": 4.127 / 8}  # per weight, scales included
ADAPTER_BYTES = 4 + 4 + 8  # fp32 weight, gradient, AdamW's exp_avg and exp_avg_sq
GIB = 1024**3
ADAPTER_PREFIXES = ("rosa_", "lora_")  # parameter names of RoSA's and PEFT LoRA's adapter layers


@dataclass(frozen=True)
class Shape:
    """The sizes the estimate needs, read from a model's text config."""

    layers: int
    hidden: int
    intermediate: int
    query_heads: int
    key_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, model: nn.Module) -> "Shape":
        text = model.config.get_text_config()
        heads = text.num_attention_heads
        return cls(
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
            query_heads=heads,
            key_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
        )


@dataclass(frozen=True)
class Adapter:
    """What a method adds to each layer's saved activations: RoAE's targets, rank and low-frequency dims,
    or LoRA's target modules, rank and dropout. Adapter weights are fp32."""

    roae_targets: tuple[str, ...] = ()
    roae_rank: int = 0
    low_dims: int = 0
    lora_targets: tuple[str, ...] = ()
    lora_rank: int = 0
    lora_dropout: float = 0.0


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits


def weight_bytes(base: nn.Module, dtype: torch.dtype, quantize: str | None) -> int:
    """The frozen base's parameters (tied ones once, adapters left out), its decoder Linear weights
    quantised if asked."""
    from rosa.architecture import find_decoder_stack

    element = dtype.itemsize
    quantized = set()
    if quantize is not None:
        stack = find_decoder_stack(base)
        quantized = {id(m.weight) for m in stack.layers.modules() if isinstance(m, nn.Linear)}
    total = 0.0
    for name, parameter in base.named_parameters():  # a tied tensor comes once
        if any(f".{prefix}" in name for prefix in ADAPTER_PREFIXES):
            continue  # counted with the adapter
        total += parameter.numel() * (QUANTIZED_BYTES[quantize] if id(parameter) in quantized else element)
    return int(total)


def activation_bytes_per_token(shape: Shape, adapter: Adapter, element: int) -> float:
    """Bytes autograd keeps per token and decoder layer, as transformers' Llama-style blocks, PEFT 0.21 and
    rosa keep them (counted tensor by tensor on SmolLM2 in fp32 and bf16, ``tests/test_estimate.py``).

    RMSNorm computes in fp32 whatever the dtype, and adapters compute in their own fp32: an input cast
    to it is a new tensor per adapter unless the activations are fp32 already.
    """
    h, f, d = shape.hidden, shape.intermediate, shape.head_dim
    q, kv = shape.query_heads * d, shape.key_heads * d
    fp32 = 4
    kept = 2 * (h + 1) * fp32  # each norm's fp32 input and reciprocal RMS
    kept += (2 * q + 2 * kv) * element + shape.query_heads * fp32  # attention's q, k, v, output; log-sum-exp
    kept += 3 * f * element  # the MLP's gate, its activation and the up projection
    casts_copy = element != fp32
    if adapter.roae_targets:
        kept += h * fp32  # the hidden state in the adapter's dtype, input of every target's signal
        for target in adapter.roae_targets:
            low = adapter.low_dims * (shape.query_heads if target == "q" else shape.key_heads)
            kept += adapter.roae_rank * fp32 + low * fp32  # A's output; the signal before SiLU (the scale is recomputed)
            kept += low * element  # the low-frequency slice
    if adapter.lora_targets:
        widths = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": f}
        inputs = {t: widths.get(t, h) for t in adapter.lora_targets}
        if adapter.lora_dropout > 0:  # each target's own dropped-out input and its mask, in fp32
            kept += sum(2 * width * fp32 for width in inputs.values())
        elif casts_copy:  # each target's own fp32 copy of its input
            kept += sum(width * fp32 for width in inputs.values())
        else:  # the inputs the base does not keep: the two norms' outputs and the MLP product
            kept += fp32 * (h * bool(inputs.keys() & {"q_proj", "k_proj", "v_proj"})
                            + h * bool(inputs.keys() & {"gate_proj", "up_proj"}) + f * ("down_proj" in inputs))
        kept += adapter.lora_rank * fp32 * len(inputs)  # each A's output, input of its B
    return kept


def estimate(base: nn.Module, adapter: Adapter, trainable: int, *, batch: int, seq_len: int, dtype: torch.dtype,
             quantize: str | None = None) -> MemoryEstimate:
    """The peak memory of one training step with micro-batch ``batch`` of ``seq_len`` tokens."""
    shape = Shape.of(base)
    element = dtype.itemsize
    tokens = batch * seq_len
    return MemoryEstimate(
        weights=weight_bytes(base, dtype, quantize),
        adapter=trainable * ADAPTER_BYTES,
        activations=int(tokens * shape.layers * activation_bytes_per_token(shape, adapter, element)),
        logits=tokens * shape.vocab * (element + 4 + 4),
    )
