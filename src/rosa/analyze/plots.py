"""Figures for ``rosa analyze``: built on ``matplotlib.figure.Figure`` directly, so no pyplot state or
backend choice leaks into the caller; each function returns the figure and the caller saves it."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from rosa.analyze.activations import layer_ranges

LOW_FREQUENCY_COLOR = "crimson"
# not trained, warm-up, exploit, explore (rosa.analyze.selection.CATEGORIES)
SELECTION_COLORS = ("#eeeeee", "#9e9e9e", "#1f77b4", "#ff7f0e")
AFTER_LAST_STEP_HATCH = "//"
AFTER_LAST_STEP_WIDTH = 0.03  # of the steps axis: the band that shows the selection made after the last step
MAX_TICKS = 32


def _tick_positions(n: int) -> list[int]:
    """Every position when they fit, else an even subset: 128 labels side by side are unreadable."""
    step = max(1, -(-n // MAX_TICKS))
    return list(range(0, n, step))


def _frequency_label(frequency: float | None) -> str:
    return "not rotated" if frequency is None else f"{frequency:.1e}"


def _short(name: str) -> str:
    """The last part of a model path or hub id, so a long local path cannot push the title off the figure."""
    return name.rstrip("/").rsplit("/", 1)[-1] or name


def _measured_after(report: dict[str, Any]) -> str:
    """What the states passed through: with an adapter they are not the base model's (RoAE modulates
    them, a LoRA changes the projections before RoPE), and a title saying only "after RoPE" would pass
    them off as the base model's. ``adapter`` is the path ``rosa analyze activations --adapter`` records."""
    adapter = report.get("adapter")
    if not adapter:
        return "after RoPE"
    tail = "/".join(str(adapter).rstrip("/").split("/")[-2:])  # a run's adapter is RUN/adapter: keep the run's name
    return f"after RoPE and the adapter ({tail})"


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """``(start, length)`` of each run of consecutive true flags: the low-frequency dims come as one
    block per half of the head in the rotate-half layout, as one block when interleaved."""
    runs, start = [], None
    for index, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index - start))
            start = None
    return runs


def _low_frequency_blocks(rows: list[list[bool]]) -> list[tuple[int, int, int, int]]:
    """``(first dim, n dims, first row, n rows)`` of each outline: one per run of low-frequency dims,
    spanning the consecutive rows (layers) whose runs are the same."""
    blocks, first = [], 0
    for row in range(1, len(rows) + 1):
        if row == len(rows) or _runs(rows[row]) != _runs(rows[first]):
            blocks += [(start, length, first, row - first) for start, length in _runs(rows[first])]
            first = row
    return blocks


def _low_frequency_label(report: dict[str, Any]) -> str:
    """``r_low`` and how many pairs that makes, per rotary group when the groups' counts differ."""
    counts = [(len(g["low_frequency_pairs"]), g["rotary_pairs"]) for g in report["rotary"]]
    if len(set(counts)) == 1:
        detail = f"{counts[0][0]} of {counts[0][1]} pairs"
    else:
        detail = "; ".join(f"layers {layer_ranges(g['layers'])}: {n} of {total} pairs"
                           for g, (n, total) in zip(report["rotary"], counts))
    return f"low-frequency dims (r_low={report['r_low']}: {detail})"


def strength_heatmap(report: dict[str, Any], state: str) -> Figure:
    """Layers x head dimensions of ``report[state]`` (``state``: "query" or "key"), with each dimension's
    rotary frequency on a top axis (the first measured layer's, when layers differ) and each layer's
    low-frequency dimensions outlined."""
    values = np.array([[np.nan if v is None else v for v in row] for row in report[state]], dtype=float)
    n_layers, head_dim = values.shape
    fig = Figure(figsize=(min(16.0, max(7.0, 0.3 * head_dim + 3)), min(12.0, max(4.0, 0.3 * n_layers + 3))), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", origin="lower", cmap=cmap, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="mean L2 norm over heads")

    ticks = _tick_positions(head_dim)
    ax.set_xticks(ticks)
    ax.set_xlabel("head dimension index")
    ax.set_yticks(range(n_layers), [str(layer) for layer in report["layers"]])
    ax.set_ylabel("layer")
    frequency, low = report["frequency"][0], report["low_frequency"][0]
    top = ax.secondary_xaxis("top")
    top.set_xticks(ticks, [_frequency_label(frequency[d]) for d in ticks], rotation=90, fontsize=7)
    if all(row == frequency for row in report["frequency"]):
        top.set_xlabel("rotary frequency of the dimension (radians per position)")
    else:
        top.set_xlabel(f"rotary frequency of the dimension in layer {report['layers'][0]} "
                       "(radians per position; other layers differ)")
    for label, d in zip(top.get_xticklabels(), ticks):
        if low[d]:
            label.set_color(LOW_FREQUENCY_COLOR)

    for start, length, row, n_rows in _low_frequency_blocks(report["low_frequency"]):
        ax.add_patch(Rectangle((start - 0.5, row - 0.5), length, n_rows, fill=False, edgecolor=LOW_FREQUENCY_COLOR, linewidth=2))
    handles = [Patch(fill=False, edgecolor=LOW_FREQUENCY_COLOR, linewidth=2, label=_low_frequency_label(report))]
    if np.isnan(values).any():
        handles.append(Patch(facecolor="white", edgecolor="grey", label="not observed (split off before RoPE)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    ax.set_title(f"{_short(report['model'])}: {state} states {_measured_after(report)}, per layer and head dimension\n"
                 f"activation strength over {report['tokens']:,} tokens ({report['prompts']} prompts)")
    return fig


def selection_heatmap(summary: dict[str, Any]) -> Figure:
    """Layers x optimizer steps, coloured by what each layer did at each step. A selection made after
    the last step is drawn hatched, past the dashed end of training: it is counted in the selection
    events, so the heatmap shows it too."""
    matrix = np.array(summary["matrix"], dtype=float).reshape(summary["n_layers"], summary["steps"])
    fig = Figure(figsize=(10.0, min(10.0, max(3.5, 0.25 * summary["n_layers"] + 2))), layout="constrained")
    ax = fig.add_subplot()
    categories = summary["categories"]
    norm = BoundaryNorm(np.arange(len(categories) + 1) - 0.5, len(categories))
    image = ax.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest", cmap=ListedColormap(SELECTION_COLORS),
                      norm=norm, extent=(0.5, summary["steps"] + 0.5, -0.5, summary["n_layers"] - 0.5))
    colorbar = fig.colorbar(image, ax=ax, ticks=range(len(categories)))
    colorbar.ax.set_yticklabels(categories)
    _draw_after_last_step(fig, ax, summary)
    ax.set_yticks(_tick_positions(summary["n_layers"]))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("layer")
    ax.set_title(f"DLS layer selection: {summary['run']}\n(k={summary['k']} of {summary['n_layers']} layers, "
                 f"reselected every {summary['interval']} steps after {summary['warmup']} warm-up steps)")
    return fig


def _draw_after_last_step(fig: Figure, ax, summary: dict[str, Any]) -> None:
    """Hatched cells for the selections that trained nothing, in a band past the dashed end of
    training where the next step would be (at least :data:`AFTER_LAST_STEP_WIDTH` of the axis, so it
    stays visible in a long run), and a legend saying what they are."""
    untrained = summary.get("after_last_step") or []
    if not untrained:
        return
    end = summary["steps"] + 0.5
    width = max(1, round(AFTER_LAST_STEP_WIDTH * summary["steps"]))
    for record in untrained:
        color = SELECTION_COLORS[2 if record["kind"] == "exploit" else 3]
        for layer in record["selected"]:
            ax.add_patch(Rectangle((end, layer - 0.5), width, 1, facecolor=color, alpha=0.5,
                                   hatch=AFTER_LAST_STEP_HATCH, edgecolor="black", linewidth=0))
    ax.axvline(end, color="black", linestyle="--", linewidth=1)
    ax.set_xlim(0.5, end + width)
    fig.legend(handles=[_after_last_step_patch(summary)], loc="outside lower center", frameon=False)


def _after_last_step_patch(summary: dict[str, Any]) -> Patch:
    return Patch(facecolor="white", edgecolor="black", hatch=AFTER_LAST_STEP_HATCH,
                 label=f"selected after the last step ({summary['steps']}): counted, but trained nothing")


def selection_frequency(summary: dict[str, Any]) -> Figure:
    """Per layer, how many selection events chose it, split into exploit and explore."""
    layers = [row["layer"] for row in summary["layers"]]
    fig = Figure(figsize=(min(16.0, max(6.0, 0.3 * len(layers) + 3)), 4.0), layout="constrained")
    ax = fig.add_subplot()
    bottom = np.zeros(len(layers))
    for kind, color, label in (("exploit", SELECTION_COLORS[2], "exploit (top-k by score)"),
                               ("explore", SELECTION_COLORS[3], "explore (random)")):
        after = np.array([row.get("after_last_step", {}).get(kind, 0) for row in summary["layers"]])
        trained = np.array([row[kind] for row in summary["layers"]]) - after
        ax.bar(layers, trained, bottom=bottom, color=color, label=label)
        if after.any():  # the part of the count that trained nothing, hatched on top of its kind
            ax.bar(layers, after, bottom=bottom + trained, color=color, alpha=0.5, hatch=AFTER_LAST_STEP_HATCH,
                   edgecolor="black", linewidth=0)
        bottom = bottom + trained + after
    if summary.get("after_last_step"):
        fig.legend(handles=[_after_last_step_patch(summary)], loc="outside lower center", frameon=False)
    ax.set_xticks(_tick_positions(len(layers)))
    ax.set_xlabel("layer")
    ax.set_ylabel("times selected")
    events = summary["selection_events"]
    if events:
        right = ax.secondary_yaxis("right", functions=(lambda n: n / events, lambda f: f * events))
        right.set_ylabel("fraction of selection events")
    ax.legend()
    ax.set_title(f"How often DLS selected each layer: {summary['run']}\n"
                 f"({events} selection events, k={summary['k']} of {summary['n_layers']})")
    return fig
