"""The ``rosa`` command line. ``rosa info MODEL`` shows what RoSA would adapt on a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rosa.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rosa", description="RoSA: RoPE-aware Selective Adaptation.")
    parser.add_argument("--version", action="version", version=f"rosa {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="show the RoAE geometry, adapter size and DLS norms of a model")
    info.add_argument("model", help="a local model directory or a Hugging Face model id")
    info.add_argument("--rank", type=int, default=8)
    info.add_argument("--r-low", type=float, default=0.25)
    info.add_argument("--targets", default="q", help="comma-separated: q or q,k")
    info.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")
    return parser


def _info(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rosa import RoSAConfig, get_rosa_model
    from rosa.architecture import block_norms, find_decoder_stack

    if ("/" in args.model or args.model.startswith(".")) and not Path(args.model).exists():
        raise FileNotFoundError(f"model directory '{args.model}' does not exist; pass a local model directory or a hub id.")
    config = RoSAConfig(rank=args.rank, r_low=args.r_low, targets=tuple(args.targets.split(",")))
    model_config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(model_config, trust_remote_code=args.trust_remote_code)
    # Built on the meta device (no memory, no weights); rotary frequencies are computed from the
    # config, so rebuild those modules on the CPU to read real values.
    for module in base.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            module.register_buffer("inv_freq", type(module)(module.config).inv_freq, persistent=False)
    model = get_rosa_model(base, config)
    g = model.geometry
    stack = find_decoder_stack(base)
    print(f"model type          {g.model_type}  ({g.num_hidden_layers} layers, hidden {g.hidden_size})")
    print(f"heads               {g.num_attention_heads} query / {g.num_key_value_heads} key-value, head dim {g.head_dim}")
    print(f"rotary pairs        {g.rotary_pairs} (rotary dims {2 * g.rotary_pairs} of {g.head_dim})")
    print(f"low-frequency pairs {list(g.low_frequency_pairs)}  (r_low={config.r_low})")
    print(f"adapted layers      {sorted(model.adapters)}" + (f"; NoPE layers left out: {model.nope_layers}" if model.nope_layers else ""))
    print(f"DLS norms per layer {list(block_norms(stack.layers[0]))}")
    model.print_trainable_parameters()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from rosa.errors import RoSAError

    try:
        return _info(args)
    except (RoSAError, OSError, ValueError) as err:
        print(f"rosa {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
