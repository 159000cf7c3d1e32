"""``rosa analyze``: activation strength of RoPE-rotated states (the paper's Figure 1) and DLS layer choices."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(
        name,
        help="plot RoPE activation strength per head dimension, or the layers DLS selected in a run",
        description="`activations`: the paper's Figure 1 on any model and prompt set. "
        "`layers`: which layers Dynamic Layer Selection trained at each step of a run.",
    )
    analyses = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    activations = analyses.add_parser(
        "activations",
        help="activation strength of query/key states after RoPE, per layer and head dimension",
        description="Measure, per layer and head dimension, the mean over real tokens of the L2 norm over "
        "heads of the query and key states right after RoPE (and after RoAE with a RoSA adapter). Writes "
        "activations.json, query_strength.png and key_strength.png.",
    )
    activations.add_argument("--model", required=True, help="base model: directory, hub id or .gguf file")
    activations.add_argument("--adapter", help="RoSA or PEFT adapter directory to put on --model")
    activations.add_argument("--prompts", default="boolq",
                             help="a data name or JSON file accepted by `rosa data` (evaluation prompt format), "
                             "or a .txt file with one prompt per line (default: boolq)")
    activations.add_argument("--limit", type=int, default=64, help="use the first N prompts (default 64)")
    activations.add_argument("--batch-size", type=int, default=8)
    activations.add_argument("--max-length", type=int, default=256, help="truncate prompts to this many tokens")
    activations.add_argument("--r-low", type=float, default=0.25, help="fraction of rotary pairs marked low-frequency")
    activations.add_argument("--data-dir", help="where named data sets are (else $ROSA_DATA_DIR, else ../shared/data/llm-adapters)")
    activations.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    activations.add_argument("--output", required=True, help="directory for the report (created)")
    activations.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    activations.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")

    layers = analyses.add_parser(
        "layers",
        help="which layers DLS trained at each step of a rosa or lora-dls run",
        description="Read RUN_DIR/dls_history.json and write dls_selection.json, dls_selection.png and "
        "dls_frequency.png (rewritten on every call: they are derived from the history).",
    )
    layers.add_argument("run_dir", help="a run directory written by `rosa train` with method rosa or lora-dls")
    layers.add_argument("--output", help="directory for the files (default RUN_DIR/analysis)")


def run(args: argparse.Namespace) -> int:
    return _activations(args) if args.analysis == "activations" else _layers(args)


def _activations(args: argparse.Namespace) -> int:
    from rosa.analyze.activations import (
        activation_strength, layer_ranges, load_prompts, low_frequency_contrast, save_activation_report,
    )
    from rosa.errors import RoSAError
    from rosa.loading import load_for_inference

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not args.overwrite)):
        raise RoSAError(f"--output {output} exists and is not an empty directory; nothing was written. "
                        "Choose another directory, or pass --overwrite.")
    if args.limit < 1:
        raise RoSAError(f"--limit must be >= 1, got {args.limit}.")
    prompts = load_prompts(args.prompts, args.data_dir, args.limit)
    model, tokenizer = load_for_inference(args.model, args.adapter, args.precision, args.trust_remote_code)
    report = activation_strength(model, tokenizer, prompts, args.batch_size, args.max_length, args.r_low)
    report.update(model=args.model, adapter=str(Path(args.adapter).resolve()) if args.adapter else None, prompt_source=args.prompts)
    paths = save_activation_report(report, output)

    print(f"{report['tokens']:,} tokens from {report['prompts']} prompts; low-frequency dims (r_low={report['r_low']}) per layer group:")
    for group in report["rotary"]:
        kind = f", {group['layer_type']}" if group["layer_type"] else ""
        print(f"  layers {layer_ranges(group['layers'])} ({group['layout']}, {group['rotary_pairs']} pairs in "
              f"{group['dim']} dims{kind}) -> {group['low_frequency_dims']}")
    if report["nope_layers"]:
        print(f"layers without RoPE (not measured): {report['nope_layers']}")
    print("mean strength (L2 over heads) of the low-frequency dims vs the other dims")
    print("layer   query: low-freq    other    key: low-freq    other")
    query, key = low_frequency_contrast(report, "query"), low_frequency_contrast(report, "key")
    for (layer, q_low, q_other), (_, k_low, k_other) in zip(query, key):
        print(f"{layer:>5d}   {q_low:>15.4g}  {q_other:>7.4g}   {k_low:>13.4g}  {k_other:>7.4g}")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from rosa.analyze.selection import analyze_layers

    summary, paths = analyze_layers(args.run_dir, args.output)
    print(f"{summary['run']}: {summary['selection_events']} selection events over {summary['steps']} steps "
          f"(k={summary['k']} of {summary['n_layers']}, warm-up {summary['warmup']}, interval {summary['interval']})")
    print("layer  exploit  explore  total  fraction  trained steps")
    for row in summary["layers"]:
        print(f"{row['layer']:>5d}  {row['exploit']:>7d}  {row['explore']:>7d}  {row['total']:>5d}  "
              f"{row['fraction']:>8.2f}  {row['trained_steps']:>13d}")
    for path in paths:
        print(f"wrote {path}")
    return 0
