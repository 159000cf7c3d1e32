"""One finished evaluation read back from disk, with the training run it belongs to when there is one.

Only what ``metrics.json`` counted is kept: a predictions file can hold more (an earlier evaluation
with a larger ``--limit`` into the same directory), and pairing or averaging those extra items would
compare numbers that no reported accuracy contains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosa.errors import RoSAError
from rosa.serialization import read_json_object
from rosa.eval.runner import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE
from rosa.eval.targets import EVAL_SUBDIR
from rosa.train.run_dir import RUN_SUMMARY


@dataclass(frozen=True)
class EvalResult:
    label: str
    eval_dir: Path
    metrics: dict
    predictions: dict
    run: dict | None
    settings: dict = field(default_factory=dict)  # eval_config.json without the identity: how the items were decoded

    @property
    def method(self) -> str | None:
        return self.run.get("method") if self.run else None

    @property
    def decoding(self) -> str | None:
        return self.metrics.get("decoding")

    @property
    def tasks(self) -> list[str]:
        """Evaluated tasks in the order metrics.json lists them (benchmark order)."""
        return list(self.metrics["tasks"])


def load_result(path: str | Path, decoding: str | None = None, label: str | None = None) -> EvalResult:
    """Read a run directory's evaluation (``RUN/eval/<decoding>``) or an evaluation directory itself."""
    path = Path(path)
    if not path.exists():
        raise RoSAError(f"{path} does not exist; pass a run directory from `rosa train` or an evaluation directory from `rosa eval`.")
    if not path.is_dir():
        raise RoSAError(f"{path} is a file; pass a run directory from `rosa train` or an evaluation directory from `rosa eval`.")
    eval_dir = path if _is_eval_dir(path) else _eval_dir_of_run(path, decoding)
    metrics = _read_metrics(eval_dir)
    if decoding is not None and metrics.get("decoding") not in (None, decoding):
        raise RoSAError(
            f"{eval_dir} is a {metrics['decoding']} evaluation, not {decoding}; drop --decoding or pass "
            f"the {decoding} evaluation directory."
        )
    run_dir = eval_dir.parent.parent if eval_dir.parent.name == EVAL_SUBDIR else None
    run = read_json_object(run_dir / RUN_SUMMARY) if run_dir and (run_dir / RUN_SUMMARY).is_file() else None
    predictions = _counted_predictions(eval_dir, metrics)
    named = run_dir if run is not None or eval_dir != path else eval_dir
    settings = read_json_object(eval_dir / CONFIG_FILE) if (eval_dir / CONFIG_FILE).is_file() else {}
    settings.pop("identity", None)
    return EvalResult(label or named.resolve().name, eval_dir, metrics, predictions, run, settings)


def _is_eval_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (METRICS_FILE, PREDICTIONS_FILE, CONFIG_FILE))


def _eval_dir_of_run(run_dir: Path, decoding: str | None) -> Path:
    root = run_dir / EVAL_SUBDIR
    found = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not found:
        raise RoSAError(f"{run_dir} has no evaluation yet (nothing in {root}); run `rosa eval {run_dir}` first.")
    if decoding is None and len(found) > 1:
        raise RoSAError(f"{run_dir} has several evaluations ({', '.join(found)}); pass --decoding to choose one.")
    chosen = decoding or found[0]
    if chosen not in found:
        raise RoSAError(
            f"{run_dir} has no {chosen} evaluation (found: {', '.join(found)}); run "
            f"`rosa eval {run_dir} --decoding {chosen}` or pass another --decoding."
        )
    return root / chosen


def _read_metrics(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / METRICS_FILE
    if not path.is_file():
        if (eval_dir / PREDICTIONS_FILE).exists() or (eval_dir / CONFIG_FILE).exists():
            raise RoSAError(
                f"the evaluation in {eval_dir} is unfinished ({PREDICTIONS_FILE} but no {METRICS_FILE}); rerun "
                "the same `rosa eval` command to finish it."
            )
        raise RoSAError(f"{eval_dir} holds no evaluation; run `rosa eval` first.")
    metrics = read_json_object(path)
    if not isinstance(metrics.get("tasks"), dict) or not all(isinstance(s, dict) and "total" in s for s in metrics["tasks"].values()):
        raise RoSAError(f"{path} has no per-task counts; it is not a rosa metrics file. Rerun `rosa eval` into a new directory.")
    return metrics


def _counted_predictions(eval_dir: Path, metrics: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The predictions behind metrics.json, checked against its per-task counts so that a predictions
    file edited or swapped after the evaluation cannot silently change a paired test."""
    path = eval_dir / PREDICTIONS_FILE
    if not path.is_file():
        raise RoSAError(f"{eval_dir} has {METRICS_FILE} but no {PREDICTIONS_FILE}; rerun `rosa eval` into a new directory.")
    limit = metrics.get("limit")
    counted = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            item = json.loads(line)
            key = (item["task"], int(item["index"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise RoSAError(f"{path} line {number} is corrupted ({err}); rerun `rosa eval` into a new directory.") from err
        if key[0] in metrics["tasks"] and (limit is None or key[1] < limit):
            counted[key] = item
    _check_counts(path, metrics, counted)
    return counted


def _check_counts(path: Path, metrics: dict[str, Any], counted: dict[tuple[str, int], dict[str, Any]]) -> None:
    found = {task: 0 for task in metrics["tasks"]}
    for task, _ in counted:
        found[task] += 1
    wrong = [f"{task}: {found[task]} predictions, {stats['total']} counted" for task, stats in metrics["tasks"].items() if found[task] != stats["total"]]
    if wrong:
        raise RoSAError(
            f"{path} does not match {METRICS_FILE} ({'; '.join(wrong)}); the evaluation directory was changed "
            "after it finished. Rerun `rosa eval` into a new directory."
        )
