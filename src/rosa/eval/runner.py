"""Evaluate a model on the LLM-Adapters benchmarks: batched, resumable, one JSON line per item.

The eval directory holds ``eval_config.json`` (what produced the predictions), ``predictions.jsonl``
(appended and fsynced batch by batch), and, once every item is done, ``metrics.json`` and
``results.md``. A rerun reads the predictions back and generates only the missing items, so an
interrupted evaluation continues where it stopped with no item lost or counted twice; a rerun with
settings that would change the generations is refused rather than mixed in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rosa.data import expand_tasks, load_records, task_family, task_file
from rosa.data.prompts import eval_prompt
from rosa.errors import DataError, RoSAError
from rosa.eval.generation import KEEP_SPECIAL_TOKENS, MAX_NEW_TOKENS, generate_responses, generation_config
from rosa.eval.report import compute_metrics, results_table
from rosa.eval.scoring import extract_answer, is_correct
from rosa.serialization import atomic_write_bytes, atomic_write_json

CONFIG_FILE, PREDICTIONS_FILE, METRICS_FILE, RESULTS_FILE = "eval_config.json", "predictions.jsonl", "metrics.json", "results.md"
STRICT_TASKS = ("AQuA",)


def evaluate(
    model: Any,
    tokenizer: Any,
    output_dir: str | os.PathLike,
    tasks: str | Sequence[str] = "all",
    *,
    data_dir: str | os.PathLike | None = None,
    decoding: str = "beam4",
    batch_size: int = 16,
    limit: int | None = None,
    identity: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` (names or groups) and return the metrics written to ``output_dir``.

    ``identity`` names what is evaluated (base model, adapter, precision); it is stored with the
    decoding settings and a resumed evaluation must match it. ``limit`` takes the first N items of
    each task in file order. The batch size never changes a prediction, so it may differ on resume.
    """
    if batch_size < 1 or (limit is not None and limit < 1):
        raise RoSAError(f"batch_size and limit must be at least 1 (got {batch_size}, {limit}).")
    output_dir = Path(output_dir)
    task_names = expand_tasks(tasks)
    settings = {
        "identity": identity or {"model": getattr(model.config, "_name_or_path", "")},
        "decoding": decoding,
        "max_new_tokens": MAX_NEW_TOKENS,
        "keep_special_tokens": KEEP_SPECIAL_TOKENS,
        "prompt": "llm-adapters evaluation template",
    }
    configs = {family: generation_config(decoding, n, tokenizer) for family, n in MAX_NEW_TOKENS.items()}
    _claim(output_dir, settings)
    records, missing = _available_records(task_names, data_dir, limit)
    done = _read_predictions(output_dir / PREDICTIONS_FILE)
    todo = [(t, i) for t, items in records.items() for i in range(len(items)) if (t, i) not in done]

    model.eval()
    bar = tqdm(total=len(todo), desc="evaluating", unit="item", disable=not progress)
    with open(output_dir / PREDICTIONS_FILE, "a", encoding="utf-8") as sink:
        for task in records:
            pending = [i for t, i in todo if t == task]
            prompts = {i: eval_prompt(records[task][i]["instruction"], records[task][i]["input"]) for i in pending}
            # Longest first: similar lengths share a batch (less padding), and an out-of-memory error
            # shows up on the first batch rather than hours in.
            pending.sort(key=lambda i: (-len(tokenizer(prompts[i])["input_ids"]), i))
            for start in range(0, len(pending), batch_size):
                chunk = pending[start : start + batch_size]
                family = task_family(task)
                texts = generate_responses(model, tokenizer, [prompts[i] for i in chunk], configs[family], KEEP_SPECIAL_TOKENS[family])
                for index, text in zip(chunk, texts):
                    line = _prediction(task, index, prompts[index], text, records[task][index]["answer"])
                    sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                    done[(task, index)] = line
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(len(chunk))
    bar.close()

    ordered = sorted(done.values(), key=lambda p: (task_names.index(p["task"]) if p["task"] in task_names else len(task_names), p["task"], p["index"]))
    atomic_write_bytes(output_dir / PREDICTIONS_FILE, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in ordered).encode())
    selected = [done[(t, i)] for t, items in records.items() for i in range(len(items))]
    metrics = {**compute_metrics(selected, task_names, missing), "decoding": decoding, "limit": limit}
    atomic_write_json(output_dir / METRICS_FILE, metrics, sort_keys=False)  # tasks stay in benchmark order
    atomic_write_bytes(output_dir / RESULTS_FILE, results_table(metrics, title=f"LLM-Adapters benchmarks, {decoding}").encode())
    return metrics


def _prediction(task: str, index: int, prompt: str, generation: str, label: str) -> dict[str, Any]:
    line = {
        "task": task,
        "index": index,
        "prompt": prompt,
        "generation": generation,
        "extracted": extract_answer(task, generation),
        "label": label,
        "correct": is_correct(task, generation, label),
    }
    if task in STRICT_TASKS:
        line["extracted_strict"] = extract_answer(task, generation, strict=True)
        line["correct_strict"] = is_correct(task, generation, label, strict=True)
    return line


def _claim(output_dir: Path, settings: dict[str, Any]) -> None:
    """Record the settings, or check that earlier predictions in this directory were made with them."""
    config_file = output_dir / CONFIG_FILE
    if config_file.is_file():
        previous = json.loads(config_file.read_text())
        settings = json.loads(json.dumps(settings))  # as it reads back from JSON (tuples become lists)
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise RoSAError(
                f"{output_dir} holds predictions made with other settings ({', '.join(changed)} differ: "
                f"was {[previous.get(k) for k in changed]}). Evaluate into another output directory, or "
                "delete that one to start over."
            )
        return
    if output_dir.exists() and any(output_dir.iterdir()):
        raise RoSAError(f"{output_dir} exists and is not an evaluation directory; choose another output directory.")
    atomic_write_json(config_file, settings)


def _available_records(tasks: list[str], data_dir, limit: int | None) -> tuple[dict[str, list], dict[str, str]]:
    """Records of every task whose file is there; the others are reported as missing with the reason."""
    records, missing = {}, {}
    for task in tasks:
        try:
            records[task] = load_records(task_file(task, data_dir))[:limit]
        except DataError as err:
            missing[task] = str(err)
    return records, missing


def _read_predictions(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Predictions written so far. A last line cut by a kill mid-write is dropped (and regenerated)."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    done = {}
    for number, line in enumerate(complete, 1):
        try:
            item = json.loads(line)
            done[(item["task"], item["index"])] = item
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise RoSAError(
                f"{path} line {number} is corrupted ({err}); delete the file (or the line) and rerun to "
                "regenerate the missing items."
            ) from err
    if tail:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in complete))
    return done
