"""``rosa eval``: the LLM-Adapters benchmarks on a run, an adapter (RoSA or PEFT), or a base model."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from rosa.eval.generation import DECODINGS
from rosa.quantize import QUANTIZATIONS


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(
        name,
        help="evaluate on the LLM-Adapters benchmarks (batched, resumable)",
        description="Evaluate a run directory from `rosa train`, or --model with an optional --adapter. "
        "Rerunning the same command resumes an interrupted evaluation.",
    )
    parser.add_argument("run_dir", nargs="?", help="a run directory written by `rosa train`")
    parser.add_argument("--model", help="base model (directory, hub id or .gguf file) when no run directory is given")
    parser.add_argument("--adapter", help="RoSA or PEFT adapter directory to put on --model")
    parser.add_argument("--output", help="eval directory (default for a run: RUN_DIR/eval/<decoding>)")
    parser.add_argument("--tasks", default="all", help="comma-separated task names and groups: commonsense, math, all")
    parser.add_argument("--decoding", choices=sorted(DECODINGS), default="beam4", help="beam4 is upstream's protocol")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-dir", help="where the task files are (else $ROSA_DATA_DIR, else ../shared/data/llm-adapters)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                        help="default: the run's training precision for a run directory, else auto")
    parser.add_argument("--quantize", choices=(*QUANTIZATIONS, "none"),
                        help="quantise the base's Linear weights (rosa.quantize); default: as the run was trained, "
                        "else none")
    parser.add_argument("--baseline", action="store_true",
                        help="also evaluate the base model without the adapter on the same items (into "
                        "<eval dir>-untuned) and print both side by side")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


def run(args: argparse.Namespace) -> int:
    from rosa.errors import RoSAError
    from rosa.eval.report import baseline_table
    from rosa.eval.runner import RESULTS_FILE
    from rosa.eval.targets import evaluate_target, run_target
    from rosa.locking import directory_lock
    from rosa.serialization import check_writable

    model_name, adapter, output, data_dir = args.model, args.adapter, args.output, args.data_dir
    if args.run_dir:
        if model_name or adapter:
            raise RoSAError("give either a run directory or --model/--adapter, not both.")
        target = run_target(Path(args.run_dir))
        model_name, adapter, output = target.model, target.adapter, str(_output(args))
        data_dir = data_dir or target.data_dir
        precision = args.precision or target.precision
        quantize = target.quantize if args.quantize is None else args.quantize
    elif not model_name or not output:
        raise RoSAError("pass a run directory, or --model (with an optional --adapter) and --output.")
    else:
        precision, quantize = args.precision or "auto", args.quantize
    quantize = None if quantize == "none" else quantize

    if args.baseline and not adapter:
        raise RoSAError("--baseline compares a fine-tuned model with its base: pass a run directory or --adapter.")
    outputs = {output: adapter}
    if args.baseline:
        outputs = {_baseline_dir(Path(output)): None, **outputs}
    for path in outputs:
        check_writable(Path(path), "--output")
    # A run being evaluated must not be replaced or resumed meanwhile: its adapter is read, and its
    # evaluation lives inside it. Training holds the run's lock exclusively, so either waits for the other.
    run_lock = directory_lock(args.run_dir, "run directory", "wait for its training to finish.", shared=True) if args.run_dir else contextlib.nullcontext()
    metrics = {}
    with run_lock:
        for path, evaluated_adapter in outputs.items():
            with directory_lock(path, "evaluation directory", "wait for it to finish (the same command then continues "
                                "from its predictions), or choose another --output."):
                metrics[path] = evaluate_target(
                    model_name, evaluated_adapter, path, args.tasks, data_dir=data_dir, decoding=args.decoding,
                    batch_size=args.batch_size, limit=args.limit, precision=precision, quantize=quantize,
                    trust_remote_code=args.trust_remote_code, progress=not args.no_progress,
                )
    print((Path(output) / RESULTS_FILE).read_text())
    for task, reason in metrics[output]["missing"].items():
        print(f"missing: {task} was not evaluated: {reason}")
    if args.baseline:
        untuned = _baseline_dir(Path(output))
        print(f"### Untuned base model and fine-tuned model, same items\n\n{baseline_table(metrics[untuned], metrics[output])}")
        print(f"the untuned model's predictions and metrics are in {untuned}")
    print(f"predictions, metrics.json and results.md are in {output}")
    return 0


def _baseline_dir(output: Path) -> str:
    """Where ``--baseline`` evaluates the base model: beside the adapter's evaluation, never inside a
    run's ``eval/`` (each directory there is one decoding of the run itself)."""
    return str(output.parent.with_name(f"{output.parent.name}-untuned") / output.name) if output.parent.name == "eval" \
        else str(output.with_name(f"{output.name}-untuned"))


def _output(args: argparse.Namespace) -> Path | None:
    """The evaluation directory: ``--output``, else the run's ``eval/<decoding>``."""
    from rosa.eval.targets import run_eval_dir

    if args.output:
        return Path(args.output)
    return run_eval_dir(args.run_dir, args.decoding) if args.run_dir else None


def interrupted(args: argparse.Namespace, phase: str | None) -> str:
    """Ctrl-C: the predictions appended so far stay, and the same command continues after them."""
    from rosa.eval.runner import PREDICTIONS_FILE
    from rosa.interrupt import LOADING_MODEL

    output = _output(args)
    if output is not None and args.baseline and not (output / PREDICTIONS_FILE).is_file():
        output = Path(_baseline_dir(output))  # --baseline evaluates the untuned model first
    predictions = output / PREDICTIONS_FILE if output is not None else None
    if phase == LOADING_MODEL:
        return "while loading the model; nothing was written. Rerun the same command."
    done = predictions.read_bytes().count(b"\n") if predictions is not None and predictions.is_file() else 0
    if done == 0:
        return "before any prediction was made. Rerun the same command."
    kept = "the 1 prediction made so far is kept" if done == 1 else f"the {done} predictions made so far are kept"
    return f"; {kept} in {predictions}. Rerun the same command to continue with the missing items."
