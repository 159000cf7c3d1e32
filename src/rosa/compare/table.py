"""The comparison table: one row per evaluated run, accuracy per task and the costs of training.

Rows hold raw numbers (accuracy already in percent, memory in MiB) so that CSV and JSON keep full
precision; only the markdown rounds. Columns are ``run``, the caller's extra columns (a sweep's
varied fields), ``method``, the tasks in benchmark order, ``macro``, ``micro``, ``items``,
``trainable_params``, ``train_time_s``, ``peak_memory_mib`` and ``peak_memory_kind`` (which the
markdown moves into a note: CUDA allocation and process RSS are not comparable numbers).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rosa.data import TASKS
from rosa.errors import RoSAError

if TYPE_CHECKING:
    from rosa.compare.results import EvalResult

MIB = 2**20
COST_COLUMNS = ("trainable_params", "train_time_s", "peak_memory_mib", "peak_memory_kind")
HEADERS = {"trainable_params": "trainable params", "train_time_s": "train time (s)", "peak_memory_mib": "peak memory (MiB)"}
TEXT_COLUMNS = ("run", "method")
NOT_SHOWN = "–"


def ordered_tasks(results: Sequence[EvalResult]) -> list[str]:
    """Union of the evaluated tasks, benchmark tasks in catalog order, any others after them as met."""
    seen = list(dict.fromkeys(task for result in results for task in result.tasks))
    known = [task.name for task in TASKS if task.name in seen]
    return known + [task for task in seen if task not in known]


def comparison_rows(results: Sequence[EvalResult], extra_columns: Mapping[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    extra = dict(extra_columns or {})
    tasks = ordered_tasks(results)
    _check_extra(extra, len(results), tasks)
    return [_row(result, {name: values[i] for name, values in extra.items()}, tasks) for i, result in enumerate(results)]


def _check_extra(extra: dict[str, Sequence[Any]], count: int, tasks: list[str]) -> None:
    reserved = {*TEXT_COLUMNS, *tasks, "macro", "micro", "items", *COST_COLUMNS}
    for name, values in extra.items():
        if name in reserved:
            raise RoSAError(f"extra column {name!r} would replace a comparison column; rename it.")
        if len(values) != count:
            raise RoSAError(f"extra column {name!r} has {len(values)} values for {count} runs; give one per run.")


def _row(result: EvalResult, extra: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    metrics, run = result.metrics, result.run or {}
    memory = run.get("peak_memory_bytes")
    return {
        "run": result.label,
        **extra,
        "method": result.method,
        **{task: _percent(metrics["tasks"].get(task, {}).get("accuracy")) for task in tasks},
        "macro": _percent(metrics.get("macro_average")),
        "micro": _percent(metrics.get("micro_average")),
        "items": metrics.get("items"),
        "trainable_params": run.get("trainable_params"),
        "train_time_s": run.get("train_runtime_s"),
        "peak_memory_mib": None if memory is None else memory / MIB,
        "peak_memory_kind": run.get("peak_memory_kind"),
    }


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def render_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = [c for c in rows[0] if c != "peak_memory_kind"]
    percent = _percent_columns(columns)
    lines = [
        "| " + " | ".join(_escape(HEADERS.get(c, c)) for c in columns) + " |",
        "|" + "".join("---:|" if _numeric(rows, c) else "---|" for c in columns),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format(c, row[c], c in percent) for c in columns) + " |")
    return "\n".join(lines + ["", *_notes(rows)]) + "\n"


def _percent_columns(columns: list[str]) -> set[str]:
    """Tasks sit between ``method`` and ``macro``; their names are not known in advance."""
    return set(columns[columns.index("method") + 1 : columns.index("micro") + 1])


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    return any(isinstance(row[column], (int, float)) and not isinstance(row[column], bool) for row in rows)


def _format(column: str, value: Any, percent: bool) -> str:
    if value is None:
        return NOT_SHOWN
    if percent:
        return f"{value:.2f}"
    if column == "train_time_s":
        return f"{value:.1f}"
    if column == "peak_memory_mib":
        return f"{value:.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,d}"
    if isinstance(value, float):
        return f"{value:g}"
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = ["Accuracy in %; macro = mean over tasks, micro = all correct answers / all items."]
    items = {row["items"] for row in rows if row["items"] is not None}
    if len(items) > 1:
        notes.append(f"The runs were evaluated on different numbers of items ({', '.join(map(str, sorted(items)))}); their averages are not directly comparable.")
    kinds = {row["run"]: row["peak_memory_kind"] for row in rows if row["peak_memory_mib"] is not None}
    if len(set(kinds.values())) == 1:
        notes.append(f"Peak memory is the {next(iter(kinds.values()))}.")
    elif kinds:
        notes.append("Peak memory was measured differently, so it is not comparable: " + "; ".join(f"{run}: {kind}" for run, kind in kinds.items()) + ".")
    return notes


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Raw values at full precision; a missing value is an empty field."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
