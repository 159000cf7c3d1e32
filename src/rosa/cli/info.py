"""``rosa info MODEL``: what RoSA would adapt on a model, computed on the meta device (any size, no weights)."""

from __future__ import annotations

import argparse

from rosa.quantize import QUANTIZATIONS

GPUS_GIB = (24, 40, 80)
FRAMEWORK_GIB = 1.0  # a CUDA context and the allocator's reserve, which the estimate leaves out


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(name, help="show the RoAE geometry, adapter size and DLS norms of a model")
    parser.add_argument("model", help="a local model directory, a Hugging Face model id, or a .gguf file (or a directory holding one)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--r-low", type=float, default=0.25)
    parser.add_argument("--targets", default="q", help="comma-separated: q or q,k")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    memory = parser.add_argument_group("training memory estimate (RoSA and LoRA at the same trainable budget)")
    memory.add_argument("--batch-size", type=int, default=4, help="micro-batch size (LLM-Adapters: 4)")
    memory.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (LLM-Adapters' cutoff: 256)")
    memory.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    memory.add_argument("--quantize", choices=QUANTIZATIONS, help="a quantised frozen base (see rosa train --quantize)")


def run(args: argparse.Namespace) -> int:
    from rosa import RoSAConfig, get_rosa_model
    from rosa.analyze.activations import layer_ranges
    from rosa.architecture import block_norms, find_decoder_stack
    from rosa.train.methods import meta_model

    config = RoSAConfig(rank=args.rank, r_low=args.r_low, targets=tuple(args.targets.split(",")))
    base = meta_model(args.model, args.trust_remote_code)
    model = get_rosa_model(base, config)
    g = model.geometry
    text = base.config.get_text_config()
    # MLA heads are the non-rotary part plus the rotary part (qk_head_dim); others say head_dim, or imply it
    head_dim = getattr(text, "qk_head_dim", None) or getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    print(f"model type          {g.model_type}  ({g.num_hidden_layers} layers, hidden {g.hidden_size})")
    for group in g.rotary:
        rotary, layout = group.rotary, group.rotary.layout
        kind = f", layer type {rotary.layer_type}" if rotary.layer_type else ""
        print(f"layers {layer_ranges(group.layers)}{kind}")
        print(f"  heads             {rotary.query_heads} query / {rotary.key_heads} key (as RoPE hands them to attention)")
        print(f"  rotary            {rotary.function}, {layout.name} layout, {layout.n_pairs} pairs = {layout.rotary_dim} "
              f"of the {layout.dim} dims it receives (head dim {head_dim})")
        print(f"  low-frequency     pairs {list(group.low_frequency_pairs)} -> dims {group.low_frequency_dims}  (r_low={config.r_low})")
    print(f"adapted layers      {layer_ranges(sorted(model.roae_adapters()))}" + (f"; without RoPE, left out: {model.nope_layers}" if model.nope_layers else ""))
    print(f"DLS norms per layer {list(block_norms(find_decoder_stack(base).layers[0]))}")
    model.print_trainable_parameters()
    print_memory_estimate(args, base, model, config)
    return 0


def print_memory_estimate(args: argparse.Namespace, base, model, config) -> None:
    """RoSA as configured and LoRA (LLM-Adapters' targets and dropout) at the closest trainable count."""
    import torch

    from rosa.estimate import GIB, Adapter, estimate
    from rosa.loading import resolve_dtype
    from rosa.train.config import ExperimentConfig
    from rosa.train.methods import linear_module_names, match_rank

    dtype = resolve_dtype(args.precision, torch.device("cpu"))  # an explicit precision: the device does not matter
    rosa_trainable = model.get_nb_trainable_parameters()[0]
    low_dims = len(model.geometry.rotary[0].low_frequency_dims)
    rows = [(f"rosa (rank {config.rank}, {','.join(config.targets)})", rosa_trainable,
             Adapter(roae_targets=config.targets, roae_rank=config.rank, low_dims=low_dims))]
    lora = ExperimentConfig(model=args.model, data="-", output_dir="-", method="lora", trust_remote_code=args.trust_remote_code)
    targets = tuple(t for t in lora.lora.targets if t in linear_module_names(base))  # LLM-Adapters' targets this model has
    if targets:
        lora.lora.targets = targets
        lora, rank, lora_trainable = match_rank(lora, rosa_trainable)
        rows.append((f"lora (rank {rank} on {','.join(t.removesuffix('_proj') for t in targets)}, matched)", lora_trainable,
                     Adapter(lora_targets=targets, lora_rank=rank, lora_dropout=lora.lora.dropout)))
    weights = f"base {args.quantize}" if args.quantize else f"base {args.precision}"
    print(f"\ntraining memory, estimated: micro-batch {args.batch_size} x {args.seq_len} tokens, {args.precision} "
          f"activations, {weights}, fp32 adapter with AdamW; +{FRAMEWORK_GIB:g} GiB for the framework in 'fits'")
    print("| method | trainable | frozen weights | adapter + AdamW | activations | logits | total | fits |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, trainable, adapter in rows:
        e = estimate(base, adapter, trainable, batch=args.batch_size, seq_len=args.seq_len, dtype=dtype, quantize=args.quantize)
        fits = [f"{gpu} GB" for gpu in GPUS_GIB if e.total / GIB + FRAMEWORK_GIB <= gpu]
        cells = [f"{value / GIB:.2f} GiB" for value in (e.weights, e.adapter, e.activations, e.logits, e.total)]
        print(f"| {label} | {trainable:,d} | {' | '.join(cells)} | {fits[0] + ' GPU' if fits else 'none of 24/40/80 GB'} |")

