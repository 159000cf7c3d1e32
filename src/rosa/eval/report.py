"""Accuracy from per-item predictions, and the markdown table users read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def compute_metrics(predictions: Iterable[Mapping[str, Any]], tasks: list[str], missing: Mapping[str, str]) -> dict:
    """Per task accuracy, the macro average over tasks and the micro average over all items.

    The micro average (all correct / all items) is the paper's headline number; the macro average is
    the "Average" column of the LLM-Adapters tables. AQuA's stricter rule is reported beside its
    upstream accuracy and never enters the averages, so numbers stay comparable to published ones.
    """
    per_task: dict[str, dict[str, Any]] = {task: {"correct": 0, "total": 0} for task in tasks if task not in missing}
    strict: dict[str, int] = {}
    for item in predictions:
        stats = per_task[item["task"]]
        stats["total"] += 1
        stats["correct"] += bool(item["correct"])
        if "correct_strict" in item:
            strict[item["task"]] = strict.get(item["task"], 0) + bool(item["correct_strict"])
    for task, stats in per_task.items():
        stats["accuracy"] = stats["correct"] / stats["total"] if stats["total"] else None
        if task in strict:
            stats["strict_correct"] = strict[task]
            stats["strict_accuracy"] = strict[task] / stats["total"]
    scored = [s for s in per_task.values() if s["total"]]
    items = sum(s["total"] for s in scored)
    return {
        "tasks": per_task,
        "missing": dict(missing),
        "macro_average": sum(s["accuracy"] for s in scored) / len(scored) if scored else None,
        "micro_average": sum(s["correct"] for s in scored) / items if items else None,
        "items": items,
    }


def summary_of(reason: str) -> str:
    """First clause of a missing-task reason, for one table cell (the full text is in metrics.json)."""
    return reason.split(":")[0].replace("|", "/")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def results_table(metrics: Mapping[str, Any], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| task | items | correct | accuracy (%) |", "|---|---:|---:|---:|"]
    for task, stats in metrics["tasks"].items():
        lines.append(f"| {task} | {stats['total']} | {stats['correct']} | {_percent(stats['accuracy'])} |")
    lines.append(f"| **macro average** | | | **{_percent(metrics['macro_average'])}** |")
    lines.append(f"| **micro average** | {metrics['items']} | | **{_percent(metrics['micro_average'])}** |")
    for task, stats in metrics["tasks"].items():
        if "strict_accuracy" in stats:
            lines.append(f"| {task}, strict answer rule (not averaged) | {stats['total']} | {stats['strict_correct']} | {_percent(stats['strict_accuracy'])} |")
    for task, reason in metrics["missing"].items():
        lines.append(f"| {task} | missing | | {summary_of(reason)} |")
    return "\n".join(lines) + "\n"


def baseline_table(untuned: Mapping[str, Any], tuned: Mapping[str, Any]) -> str:
    """The untuned and the tuned model on the same items, side by side: what fine-tuning changed."""

    def change(before: float | None, after: float | None) -> str:
        return "n/a" if before is None or after is None else f"{100 * (after - before):+.2f}"

    lines = ["| task | items | untuned (%) | tuned (%) | change (points) |", "|---|---:|---:|---:|---:|"]
    for task, stats in tuned["tasks"].items():
        before = untuned["tasks"][task]["accuracy"]
        lines.append(f"| {task} | {stats['total']} | {_percent(before)} | {_percent(stats['accuracy'])} | {change(before, stats['accuracy'])} |")
    for average in ("macro", "micro"):
        before, after = untuned[f"{average}_average"], tuned[f"{average}_average"]
        items = tuned["items"] if average == "micro" else ""
        lines.append(f"| **{average} average** | {items} | **{_percent(before)}** | **{_percent(after)}** | **{change(before, after)}** |")
    return "\n".join(lines) + "\n"
