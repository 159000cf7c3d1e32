"""What ``rosa eval`` can evaluate: a run directory, or a base model with an optional adapter.

``rosa eval`` and ``rosa sweep`` both evaluate through :func:`evaluate_target`, so a run evaluated by
a sweep and one evaluated by hand carry the same identity and can resume each other's predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rosa.errors import RoSAError

EVAL_SUBDIR = "eval"


def run_eval_dir(run_dir: str | Path, decoding: str) -> Path:
    """Where a run's evaluation with ``decoding`` lives: ``RUN_DIR/eval/<decoding>``."""
    return Path(run_dir) / EVAL_SUBDIR / decoding


def run_target(run_dir: str | Path) -> tuple[str, str, str | None, str]:
    """The base model, adapter directory, data directory and precision of a finished ``rosa train`` run."""
    from rosa.train.config import load_config
    from rosa.train.run_dir import ADAPTER_DIR, CONFIG_FILE

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RoSAError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass a directory written by `rosa train`.")
    if not (run_dir / ADAPTER_DIR).is_dir():
        raise RoSAError(f"{run_dir} has no {ADAPTER_DIR}/: training did not finish. Resume or rerun it first.")
    config = load_config(run_dir / CONFIG_FILE, {})
    return config.model, str(run_dir / ADAPTER_DIR), config.data_dir, config.precision


def evaluate_target(
    model_name: str,
    adapter: str | None,
    output: str | Path,
    tasks: str,
    *,
    data_dir: str | None = None,
    decoding: str = "beam4",
    batch_size: int = 16,
    limit: int | None = None,
    precision: str = "auto",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the model (and adapter) and evaluate it into ``output``; returns the metrics."""
    from rosa.data.catalog import expand_tasks
    from rosa.eval.runner import evaluate
    from rosa.loading import load_for_inference

    expand_tasks(tasks)  # a misspelt task fails here, before the model is loaded
    model, tokenizer = load_for_inference(model_name, adapter, precision, trust_remote_code)
    identity = {"model": model_name, "adapter": str(Path(adapter).resolve()) if adapter else None, "precision": precision}
    return evaluate(
        model, tokenizer, output, tasks, data_dir=data_dir, decoding=decoding,
        batch_size=batch_size, limit=limit, identity=identity, progress=progress,
    )
