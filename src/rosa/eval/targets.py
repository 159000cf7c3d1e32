"""What ``rosa eval`` can evaluate: a run directory, or a base model with an optional adapter.

``rosa eval`` and ``rosa sweep`` both evaluate through :func:`evaluate_target`, so a run evaluated by
a sweep and one evaluated by hand carry the same identity and can resume each other's predictions.
The identity names the adapter by the SHA-256 of its files, not by where it lies, so a run directory
that is moved or copied still continues (or extends) its own evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

from rosa.errors import DataError, RoSAError

EVAL_SUBDIR = "eval"


def run_eval_dir(run_dir: str | Path, decoding: str) -> Path:
    """Where a run's evaluation with ``decoding`` lives: ``RUN_DIR/eval/<decoding>``."""
    return Path(run_dir) / EVAL_SUBDIR / decoding


class RunTarget(NamedTuple):
    """What evaluating a finished ``rosa train`` run loads: its base as it was trained, and its adapter."""

    model: str
    adapter: str
    data_dir: str | None
    precision: str
    quantize: str | None


def run_target(run_dir: str | Path) -> RunTarget:
    """The base model, adapter directory, data directory, precision and quantisation of a finished run."""
    from rosa.train.config import load_config
    from rosa.train.run_dir import ADAPTER_DIR, CONFIG_FILE

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RoSAError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass a directory written by `rosa train`.")
    if not (run_dir / ADAPTER_DIR).is_dir():
        raise RoSAError(f"{run_dir} has no {ADAPTER_DIR}/: training did not finish. Resume or rerun it first.")
    config = load_config(run_dir / CONFIG_FILE, {})
    return RunTarget(config.model, str(run_dir / ADAPTER_DIR), config.data_dir, config.precision, config.quantize)


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
    quantize: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the model (and adapter) and evaluate it into ``output``; returns the metrics."""
    from rosa.eval.runner import evaluate
    from rosa.loading import adapter_directory, load_for_inference

    check_tasks(tasks, data_dir)  # a misspelt, missing or empty task fails here, before the model is loaded
    adapter = str(adapter_directory(adapter)) if adapter else None  # a Hub id becomes its cached snapshot
    model, tokenizer = load_for_inference(model_name, adapter, precision, trust_remote_code, quantize)
    identity = {"model": model_name, "adapter": adapter_fingerprint(adapter) if adapter else None, "precision": precision,
                **({"quantize": quantize} if quantize else {})}  # absent when unquantised: older evaluations continue
    _upgrade_identity(Path(output), identity, adapter)
    return evaluate(
        model, tokenizer, output, tasks, data_dir=data_dir, decoding=decoding,
        batch_size=batch_size, limit=limit, identity=identity, progress=progress,
    )


def adapter_fingerprint(adapter: str | Path) -> str:
    """``sha256:<hex>`` of an adapter's config and weights: the same adapter wherever its directory is,
    and another adapter (other weights or settings) is another fingerprint."""
    from rosa.serialization import CONFIG_NAME, WEIGHTS_NAME

    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        part = hashlib.sha256()
        with open(Path(adapter) / name, "rb") as handle:
            while chunk := handle.read(1 << 20):
                part.update(chunk)
        digest.update(f"{name}:{part.hexdigest()}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def _upgrade_identity(output: Path, identity: dict[str, Any], adapter: str | None) -> None:
    """An evaluation started by an older rosa stored the adapter's absolute path; when that path is
    this adapter and nothing else differs, record the fingerprint instead so the evaluation continues."""
    from rosa.eval.runner import CONFIG_FILE
    from rosa.serialization import atomic_write_json

    config_file = output / CONFIG_FILE
    if adapter is None or not config_file.is_file():
        return
    settings = json.loads(config_file.read_text())
    previous = settings.get("identity")
    if not isinstance(previous, dict) or previous.get("adapter") != str(Path(adapter).resolve()):
        return
    if {**previous, "adapter": identity["adapter"]} == json.loads(json.dumps(identity)):
        atomic_write_json(config_file, {**settings, "identity": identity})


def check_tasks(tasks: str, data_dir: str | Path | None = None) -> list[str]:
    """The requested tasks, refused when nothing would be evaluated: every task's file is missing, or a
    task's file is there but holds no usable records (``[]``, not JSON, ...). A task whose file is
    missing while others are there is only reported as missing by the evaluation."""
    from rosa.data import expand_tasks, load_records, task_file

    names = expand_tasks(tasks)
    missing: dict[str, list[str]] = {}
    for task in names:
        try:
            path = task_file(task, data_dir)
        except DataError as err:
            missing.setdefault(str(err), []).append(task)
            continue
        try:
            load_records(path)
        except DataError as err:
            raise DataError(
                f"cannot evaluate {task}: {err} Restore {path} (`rosa data verify` checks it against the published "
                f"SHA-256), or leave {task} out of --tasks."
            ) from err
    if len(names) == sum(len(group) for group in missing.values()):
        reasons = "; ".join(f"{', '.join(group)}: {reason.rstrip('.')}" for reason, group in missing.items())
        raise DataError(
            f"nothing to evaluate: no requested task has its test file ({reasons}). Pass --data-dir with the task "
            "files, or choose --tasks whose files are there."
        )
    return names
