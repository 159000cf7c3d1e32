"""Sweep figures: accuracy against trainable parameters, and against each swept field.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot global state, no display needed) and
returned, so callers and tests can inspect them before saving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

ACCURACY_LABEL = "micro-average accuracy (%)"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DODGE = 0.04  # the least distance between points on the parameter axis, as a fraction of its log span
LABEL_GAP = 0.1  # the least distance between two budget labels on one row, as a fraction of the visible span


def _label(entry: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={entry[k]}" for k in keys) or "all runs"


def _value(value: float | None) -> float:
    return float("nan") if value is None else value


def accuracy_vs_params(summary: Sequence[dict[str, Any]], fields: Sequence[str]) -> Figure:
    """One marker per setting (seeds averaged, bars = sample std) on a log parameter axis.

    Budget-matched methods share a parameter count by design (or nearly: DoRA adds a few), so points
    whose counts would overlap are set side by side (:func:`budget_offsets`) and each setting has its
    own marker; every plotted count is a tick labelled with its value, the axis's only ticks, and
    labels that would overlap go on a second row."""
    keys = [f for f in fields if f != "seed"]
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    budgets = [_value(entry["trainable_params"]) for entry in summary]
    for index, (entry, budget, factor) in enumerate(zip(summary, budgets, budget_offsets(budgets))):
        axes.errorbar(
            budget * factor, _value(entry["micro_mean"]), yerr=_value(entry["micro_std"] or 0.0),
            fmt=MARKERS[index % len(MARKERS)], capsize=4, label=_label(entry, keys),
        )
    axes.set_xscale("log")
    axes.set_xticks([], minor=True)  # the log axis's own ticks would label round numbers, not the budgets
    ticks = sorted({b for b in budgets if math.isfinite(b) and b > 0})
    axes.set_xticks(ticks, _staggered([f"{b:,.0f}" for b in ticks], ticks, axes.get_xlim()))
    axes.set_xlabel("trainable parameters (log scale; settings with equal counts side by side)")
    axes.set_ylabel(ACCURACY_LABEL)
    axes.set_title("Accuracy against parameter budget" + (" (mean ± std over seeds)" if "seed" in fields else ""))
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return figure


def budget_offsets(budgets: Sequence[float]) -> list[float]:
    """A multiplicative x offset per point, so that no two points are closer than :data:`DODGE` of
    the axis's log span (at least a quarter decade, so a single shared count is spread too). Points
    closer than that form a group, set side by side in order of count (then of entry) and centred
    on the group: a count no other point is near keeps its place exactly."""
    logs = {i: math.log10(b) for i, b in enumerate(budgets) if math.isfinite(b) and b > 0}
    offsets = [1.0] * len(budgets)
    if not logs:
        return offsets
    step = DODGE * max(max(logs.values()) - min(logs.values()), 0.25)
    order = sorted(logs, key=lambda i: (logs[i], i))
    groups = [[order[0]]]
    for index in order[1:]:
        if logs[index] - logs[groups[-1][-1]] < step:
            groups[-1].append(index)
        else:
            groups.append([index])
    for group in groups:
        centre = (logs[group[0]] + logs[group[-1]]) / 2
        for rank, index in enumerate(group):
            offsets[index] = 10 ** (centre + step * (rank - (len(group) - 1) / 2) - logs[index])
    return offsets


def _staggered(labels: list[str], ticks: list[float], limits: tuple[float, float]) -> list[str]:
    """Labels with a leading newline (a second row) where they would overlap the previous label:
    every budget keeps its label. Close means under :data:`LABEL_GAP` of the visible log span."""
    span = math.log10(limits[1]) - math.log10(limits[0])
    rows: list[float] = []  # per row, the log position of its last label
    staggered = []
    for label, tick in zip(labels, ticks):
        position = math.log10(tick)
        row = next((r for r, last in enumerate(rows) if position - last >= LABEL_GAP * span), len(rows))
        rows[row:row + 1] = [position]
        staggered.append("\n" * row + label)
    return staggered


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
