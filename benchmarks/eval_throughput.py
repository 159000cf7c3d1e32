"""Items per second of batched vs one-at-a-time evaluation, same model, same items, one run.

    python benchmarks/eval_throughput.py [--model DIR_OR_GGUF] [--precision fp32|bf16] [--tasks boolq,piqa]
                                         [--limit 32] [--batch-size 32] [--decoding beam4|greedy]

Both modes go through `rosa.eval.evaluate` (prompting, generation, scoring, resumable writes) into
fresh directories; the script also checks that both produced the same predictions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from rosa.eval import evaluate
from rosa.loading import load_base_model, load_tokenizer

from host import cpu_machine


def timed_eval(model, tokenizer, out: Path, args, batch_size: int) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    metrics = evaluate(model, tokenizer, out, args.tasks, data_dir=args.data_dir, decoding=args.decoding,
                       batch_size=batch_size, limit=args.limit, progress=False)
    elapsed = time.perf_counter() - started
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return metrics["items"] / elapsed, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="../shared/models/SmolLM2-135M-Instruct-GGUF")
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--tasks", default="boolq,piqa")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decoding", default="beam4")
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    model = load_base_model(args.model, precision=args.precision).eval()
    with tempfile.TemporaryDirectory() as tmp:
        single, single_predictions = timed_eval(model, tokenizer, Path(tmp) / "single", args, 1)
        batched, batched_predictions = timed_eval(model, tokenizer, Path(tmp) / "batched", args, args.batch_size)
    print(f"model {args.model} ({args.precision}), tasks {args.tasks}, {args.limit} items each, decoding {args.decoding}")
    print(f"machine: {cpu_machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"one at a time : {single:8.2f} items/s")
    print(f"batched ({args.batch_size:>3}) : {batched:8.2f} items/s")
    print(f"ratio         : {batched / single:8.2f}x")
    print(f"identical predictions: {single_predictions == batched_predictions}")


if __name__ == "__main__":
    main()
