"""Which decoder layers DLS trained at each optimizer step of a run, and how often each was chosen.

Step numbering follows the selector (``rosa.dls.selector``): column ``j`` of the step matrix is the
selector's step ``j``, i.e. optimizer step ``j + 1`` as the Trainer counts. Columns before the first
selection's ``step`` are warm-up (every layer trains); a selection recorded with ``step = s`` trains
its layers from column ``s`` until the next selection.

A selection made after the last optimizer step (``step`` >= the step count: the selector reselects
after every interval, the final one included) trains no step of the run. It stays a selection event
in the counts (a real selection, recorded like the others), and every view marks it:
``after_last_step`` in the summary and per layer, a hatched band past the end of training in the
heatmap, hatching in the frequency bars. So the counts and the heatmap show the same selections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rosa.config import DLSConfig
from rosa.errors import RoSAError
from rosa.serialization import atomic_write_json, atomic_write_png, read_json_object

HISTORY_FILE = "dls_history.json"
CATEGORIES = ("not trained", "warm-up (all layers)", "exploit", "explore")
NOT_TRAINED, WARMUP, EXPLOIT, EXPLORE = range(len(CATEGORIES))
KINDS = ("exploit", "explore")


def load_history(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/dls_history.json``, or an error that says why a run has none."""
    path = run_dir / HISTORY_FILE
    if path.is_file():
        return read_json_object(path)
    if not run_dir.is_dir():
        raise RoSAError(f"run directory {run_dir} does not exist.")
    method = _run_method(run_dir)
    trained_with = f"this run's method is {method!r}; " if method else ""
    raise RoSAError(
        f"{run_dir} has no {HISTORY_FILE}: {trained_with}only rosa and lora-dls runs have DLS selections "
        "(and the file is written when training finishes)."
    )


def _run_method(run_dir: Path) -> str | None:
    for name, parse in (("run.json", json.loads), ("config.yaml", yaml.safe_load)):
        path = run_dir / name
        if path.is_file():
            data = parse(path.read_text())
            if isinstance(data, dict) and data.get("method"):
                return str(data["method"])
    return None


def step_matrix(history: dict[str, Any]) -> np.ndarray:
    """``[layers, steps]`` category codes (indices into :data:`CATEGORIES`)."""
    n_steps, records = int(history["step_count"]), _records(history)
    matrix = np.full((int(history["n_layers"]), n_steps), NOT_TRAINED, dtype=np.int8)
    first = records[0]["step"] if records else n_steps
    matrix[:, : min(first, n_steps)] = WARMUP
    ends = [r["step"] for r in records[1:]] + [n_steps]
    for record, end in zip(records, ends):
        matrix[record["selected"], record["step"] : end] = EXPLOIT if record["kind"] == "exploit" else EXPLORE
    return matrix


def _records(history: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(history["history"], key=lambda r: r["step"])


def selection_summary(history: dict[str, Any], run_name: str) -> dict[str, Any]:
    """The JSON-ready view written to ``dls_selection.json`` (and read by the plots)."""
    config = DLSConfig.from_dict(history["config"])
    n_layers, records = int(history["n_layers"]), _records(history)
    matrix = step_matrix(history)
    n_steps = int(history["step_count"])
    untrained = [r for r in records if r["step"] >= n_steps]
    layers = []
    for layer in range(n_layers):
        counts = {kind: sum(layer in r["selected"] for r in records if r["kind"] == kind) for kind in KINDS}
        total = counts["exploit"] + counts["explore"]
        layers.append({
            "layer": layer,
            **counts,
            "total": total,
            "fraction": total / len(records) if records else 0.0,
            "trained_steps": int(np.isin(matrix[layer], (WARMUP, EXPLOIT, EXPLORE)).sum()),
            "after_last_step": {kind: sum(layer in r["selected"] for r in untrained if r["kind"] == kind) for kind in KINDS},
        })
    return {
        "run": run_name,
        "n_layers": n_layers,
        "k": config.k(n_layers),
        "interval": config.interval,
        "warmup": config.warmup,
        "steps": int(history["step_count"]),
        "selection_events": len(records),
        # counted in selection_events, but made after the last optimizer step: they trained nothing
        "after_last_step": [{"step": r["step"], "kind": r["kind"], "selected": list(r["selected"])} for r in untrained],
        "step_axis": "column j is optimizer step j+1 (the selector's step j)",
        "categories": list(CATEGORIES),
        "layers": layers,
        "matrix": matrix.tolist(),
    }


def analyze_layers(run_dir: str | Path, output_dir: str | Path | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Read a run's DLS history and write ``dls_selection.json``, ``dls_selection.png`` and
    ``dls_frequency.png`` (default: ``RUN_DIR/analysis``); these are derived files, rewritten on rerun."""
    from rosa.analyze.plots import selection_frequency, selection_heatmap

    run_dir = Path(run_dir)
    summary = selection_summary(load_history(run_dir), run_dir.resolve().name)
    output_dir = Path(output_dir) if output_dir is not None else run_dir / "analysis"
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "dls_selection.json", output_dir / "dls_selection.png", output_dir / "dls_frequency.png"]
    atomic_write_json(paths[0], summary, sort_keys=False)
    atomic_write_png(paths[1], selection_heatmap(summary), dpi=150)
    atomic_write_png(paths[2], selection_frequency(summary), dpi=150)
    return summary, paths
