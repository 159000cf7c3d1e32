"""``rosa eval``: the LLM-Adapters benchmarks on a run, an adapter (RoSA or PEFT), or a base model."""

from __future__ import annotations

import argparse
from pathlib import Path

from rosa.eval.generation import DECODINGS


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(
        name,
        help="evaluate on the LLM-Adapters benchmarks (batched, resumable)",
        description="Evaluate a run directory from `rosa train`, or --model with an optional --adapter. "
        "Rerunning the same command resumes an interrupted evaluation.",
    )
    parser.add_argument("run_dir", nargs="?", help="a run directory written by `rosa train`")
    parser.add_argument("--model", help="base model (directory or hub id) when no run directory is given")
    parser.add_argument("--adapter", help="RoSA or PEFT adapter directory to put on --model")
    parser.add_argument("--output", help="eval directory (default for a run: RUN_DIR/eval/<decoding>)")
    parser.add_argument("--tasks", default="all", help="comma-separated task names and groups: commonsense, math, all")
    parser.add_argument("--decoding", choices=sorted(DECODINGS), default="beam4", help="beam4 is upstream's protocol")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", help="where the task files are (else $ROSA_DATA_DIR, else ../shared/data/llm-adapters)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


def run(args: argparse.Namespace) -> int:
    from rosa.errors import RoSAError
    from rosa.eval.runner import evaluate
    from rosa.loading import load_adapter, load_base_model, load_tokenizer

    model_name, adapter, output, data_dir = args.model, args.adapter, args.output, args.data_dir
    if args.run_dir:
        if model_name or adapter:
            raise RoSAError("give either a run directory or --model/--adapter, not both.")
        model_name, adapter, run_data_dir = _from_run(Path(args.run_dir))
        output = output or str(Path(args.run_dir) / "eval" / args.decoding)
        data_dir = data_dir or run_data_dir
    elif not model_name or not output:
        raise RoSAError("pass a run directory, or --model (with an optional --adapter) and --output.")

    tokenizer = load_tokenizer(model_name, args.trust_remote_code)
    model = load_base_model(model_name, precision=args.precision, trust_remote_code=args.trust_remote_code)
    if adapter:
        model = load_adapter(model, adapter)
    identity = {"model": model_name, "adapter": str(Path(adapter).resolve()) if adapter else None, "precision": args.precision}
    metrics = evaluate(
        model, tokenizer, output, args.tasks, data_dir=data_dir, decoding=args.decoding,
        batch_size=args.batch_size, limit=args.limit, identity=identity, progress=not args.no_progress,
    )
    print((Path(output) / "results.md").read_text())
    for task, reason in metrics["missing"].items():
        print(f"missing: {task} was not evaluated: {reason}")
    print(f"predictions, metrics.json and results.md are in {output}")
    return 0


def _from_run(run_dir: Path) -> tuple[str, str, str | None]:
    from rosa.errors import RoSAError
    from rosa.train.config import load_config
    from rosa.train.recipe import ADAPTER_DIR, CONFIG_FILE

    if not (run_dir / CONFIG_FILE).is_file():
        raise RoSAError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass a directory written by `rosa train`.")
    if not (run_dir / ADAPTER_DIR).is_dir():
        raise RoSAError(f"{run_dir} has no {ADAPTER_DIR}/: training did not finish. Resume or rerun it first.")
    config = load_config(run_dir / CONFIG_FILE, {})
    return config.model, str(run_dir / ADAPTER_DIR), config.data_dir
