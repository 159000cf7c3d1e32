"""The collected sweep: one row per point, the seed-averaged summary, and the plots.

Seeds are repetitions, not settings: when ``seed`` is swept, points that differ only in their seed
are summarised together (mean and sample standard deviation), and plots show that spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosa.compare.results import load_result
from rosa.compare.table import comparison_rows, render_csv, render_markdown
from rosa.eval.runner import METRICS_FILE
from rosa.serialization import atomic_write_bytes, atomic_write_png
from rosa.sweep.runner import Sweep

SEED = "seed"


def point_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """Finished points only (a sweep may be reported while it still runs)."""
    done = [p for p in sweep.points if (sweep.eval_dir(p) / METRICS_FILE).is_file()]
    results = [load_result(sweep.eval_dir(p), label=p.name) for p in done]
    # the table already has a method column (from run.json); every other swept field gets its own
    extra = {a.field: [p.assignments[a.field] for p in done] for a in sweep.axes if a.field != "method"}
    extra["train_loss"] = [r.run["train_loss"] if r.run else None for r in results]
    return comparison_rows(results, extra)


def summary_rows(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """Rows grouped by every swept field but the seed, in first-seen order."""
    keys = [f for f in fields if f != SEED]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row[k]) for k in keys), []).append(row)
    summary = []
    for members in groups.values():
        entry = {k: members[0][k] for k in keys}
        entry["runs"] = len(members)
        for metric in ("micro", "macro"):
            values = [m[metric] for m in members if m[metric] is not None]
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else None
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        for column in ("trainable_params", "train_time_s", "train_loss"):
            values = [m[column] for m in members if m[column] is not None]
            entry[column] = statistics.fmean(values) if values else None
        summary.append(entry)
    return summary


def write_report(sweep: Sweep) -> dict[str, Path]:
    """Write results.md/.csv, summary.csv and the plots; returns the files written."""
    from rosa.sweep import plots

    fields = [axis.field for axis in sweep.axes]
    rows = point_rows(sweep)
    summary = summary_rows(rows, fields)
    out = sweep.directory
    written = {"results.csv": out / "results.csv", "summary.csv": out / "summary.csv", "results.md": out / "results.md"}
    atomic_write_bytes(written["results.csv"], render_csv(rows).encode())
    atomic_write_bytes(written["summary.csv"], render_csv(summary).encode())
    figures = {}
    if summary:
        figures["accuracy_vs_params.png"] = plots.accuracy_vs_params(summary, fields)
        for field in fields:
            if field != SEED:
                figures[f"accuracy_vs_{field}.png"] = plots.accuracy_vs_field(summary, fields, field)
    for name, figure in figures.items():
        written[name] = atomic_write_png(out / name, figure, dpi=120, bbox_inches="tight")
    lines = [
        f"# Sweep {out.name}: {len(rows)} of {len(sweep.points)} points finished",
        "",
        f"Evaluation: {sweep.evaluation.tasks}, {sweep.evaluation.decoding} decoding"
        + (f", first {sweep.evaluation.limit} items per task" if sweep.evaluation.limit else "") + ".",
        "",
        "## Every point",
        "",
        render_markdown(rows) if rows else "(none finished yet)\n",
    ]
    if summary:
        lines += ["## Summary" + (" over seeds (mean ± sample std)" if SEED in fields else ""), "", summary_markdown(summary, fields), ""]
        lines += [f"![{name}]({name})" for name in figures]
    atomic_write_bytes(written["results.md"], ("\n".join(lines) + "\n").encode())
    return written


def summary_markdown(summary: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    keys = [f for f in fields if f != SEED]

    def spread(mean, std):
        if mean is None:
            return "n/a"
        return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")

    lines = ["| " + " | ".join(keys + ["runs", "micro (%)", "macro (%)", "trainable params", "train time (s)", "train loss"]) + " |"]
    lines.append("|" + "---|" * len(keys) + "---:|" * 6)
    for entry in summary:
        cells = [str(entry[k]) for k in keys] + [
            str(entry["runs"]),
            spread(entry["micro_mean"], entry["micro_std"]),
            spread(entry["macro_mean"], entry["macro_std"]),
            "n/a" if entry["trainable_params"] is None else f"{entry['trainable_params']:,.0f}",
            "n/a" if entry["train_time_s"] is None else f"{entry['train_time_s']:.1f}",
            "n/a" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
