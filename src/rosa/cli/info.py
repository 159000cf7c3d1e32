"""``rosa info MODEL``: what RoSA would adapt on a model, computed on the meta device (any size, no weights)."""

from __future__ import annotations

import argparse


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(name, help="show the RoAE geometry, adapter size and DLS norms of a model")
    parser.add_argument("model", help="a local model directory or a Hugging Face model id")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--r-low", type=float, default=0.25)
    parser.add_argument("--targets", default="q", help="comma-separated: q or q,k")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


def run(args: argparse.Namespace) -> int:
    from rosa import RoSAConfig, get_rosa_model
    from rosa.architecture import block_norms, find_decoder_stack
    from rosa.train.methods import meta_model

    config = RoSAConfig(rank=args.rank, r_low=args.r_low, targets=tuple(args.targets.split(",")))
    base = meta_model(args.model, args.trust_remote_code)
    model = get_rosa_model(base, config)
    g = model.geometry
    print(f"model type          {g.model_type}  ({g.num_hidden_layers} layers, hidden {g.hidden_size})")
    print(f"heads               {g.num_attention_heads} query / {g.num_key_value_heads} key-value, head dim {g.head_dim}")
    print(f"rotary pairs        {g.rotary_pairs} (rotary dims {2 * g.rotary_pairs} of {g.head_dim})")
    print(f"low-frequency pairs {list(g.low_frequency_pairs)}  (r_low={config.r_low})")
    print(f"adapted layers      {sorted(model.adapters)}" + (f"; NoPE layers left out: {model.nope_layers}" if model.nope_layers else ""))
    print(f"DLS norms per layer {list(block_norms(find_decoder_stack(base).layers[0]))}")
    model.print_trainable_parameters()
    return 0
