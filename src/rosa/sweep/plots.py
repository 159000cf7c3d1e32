"""Sweep figures: accuracy against trainable parameters, and against each swept field.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot global state, no display needed) and
returned, so callers and tests can inspect them before saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

ACCURACY_LABEL = "micro-average accuracy (%)"


def _label(entry: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={entry[k]}" for k in keys) or "all runs"


def _value(value: float | None) -> float:
    return float("nan") if value is None else value


def accuracy_vs_params(summary: Sequence[dict[str, Any]], fields: Sequence[str]) -> Figure:
    """One marker per setting (seeds averaged, bars = sample std) on a log parameter axis."""
    keys = [f for f in fields if f != "seed"]
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for entry in summary:
        axes.errorbar(
            entry["trainable_params"], _value(entry["micro_mean"]), yerr=_value(entry["micro_std"] or 0.0),
            fmt="o", capsize=4, label=_label(entry, keys),
        )
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel(ACCURACY_LABEL)
    axes.set_title("Accuracy against parameter budget" + (" (mean ± std over seeds)" if "seed" in fields else ""))
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return figure


def accuracy_vs_field(summary: Sequence[dict[str, Any]], fields: Sequence[str], field: str) -> Figure:
    """Accuracy against one swept field; one line per combination of the other swept fields.

    Numeric fields get a numeric axis; others (methods, target lists) are evenly spaced categories.
    """
    others = [f for f in fields if f not in (field, "seed")]
    values = list(dict.fromkeys(repr(entry[field]) for entry in summary))
    numeric = all(isinstance(entry[field], (int, float)) and not isinstance(entry[field], bool) for entry in summary)
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    series: dict[str, list[dict[str, Any]]] = {}
    for entry in summary:
        series.setdefault(_label(entry, others), []).append(entry)
    for label, entries in series.items():
        xs = [entry[field] if numeric else values.index(repr(entry[field])) for entry in entries]
        ys = [_value(entry["micro_mean"]) for entry in entries]
        errors = [_value(entry["micro_std"] or 0.0) for entry in entries]
        axes.errorbar(xs, ys, yerr=errors, fmt="o-" if numeric else "o", capsize=4, label=label if others else None)
    if not numeric:
        axes.set_xticks(range(len(values)), [v.strip("'") for v in values], rotation=20)
    axes.set_xlabel(field)
    axes.set_ylabel(ACCURACY_LABEL)
    axes.set_title(f"Accuracy against {field}" + (" (mean ± std over seeds)" if "seed" in fields else ""))
    axes.grid(True, alpha=0.3)
    if others:
        axes.legend(fontsize="small", loc="best")
    return figure
