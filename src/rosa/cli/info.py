"""``rosa info MODEL``: what RoSA would adapt on a model, computed on the meta device (any size, no weights)."""

from __future__ import annotations

import argparse


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(name, help="show the RoAE geometry, adapter size and DLS norms of a model")
    parser.add_argument("model", help="a local model directory, a Hugging Face model id, or a .gguf file (or a directory holding one)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--r-low", type=float, default=0.25)
    parser.add_argument("--targets", default="q", help="comma-separated: q or q,k")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


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
    return 0

