"""Run a sweep point by point: train, then evaluate, skipping whatever a previous run finished.

The sweep directory holds ``sweep.json`` (the plan; a rerun must ask for the same plan), ``runs/``
(one ordinary ``rosa train`` run directory per point, evaluated into ``eval/<decoding>/``) and the
collected table and plots. A point counts as trained once its ``run.json`` exists (written last by
``rosa train``) and as evaluated once its ``metrics.json`` exists; an interrupted training resumes from
its last checkpoint, an interrupted evaluation continues from its saved predictions.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosa.errors import RoSAError
from rosa.eval.runner import METRICS_FILE
from rosa.eval.targets import check_tasks, evaluate_target, run_eval_dir, run_target
from rosa.locking import directory_lock
from rosa.serialization import atomic_write_json, check_writable
from rosa.sweep.plan import Axis, Point, axes_of, expand
from rosa.train.recipe import train
from rosa.train.run_dir import CONFIG_FILE, RUN_SUMMARY

PLAN_FILE, RUNS_DIR = "sweep.json", "runs"


@dataclass(frozen=True)
class EvalSettings:
    """How every point is evaluated (``rosa eval``'s options)."""

    tasks: str = "all"
    decoding: str = "beam4"
    limit: int | None = None
    batch_size: int = 16


@dataclass(frozen=True)
class Sweep:
    directory: Path
    axes: tuple[Axis, ...]
    points: list[Point]
    evaluation: EvalSettings

    def eval_dir(self, point: Point) -> Path:
        return run_eval_dir(point.config.output_dir, self.evaluation.decoding)


def plan_sweep(directory: str | Path, base: dict[str, Any], preset: str | None, grid: list[Axis], evaluation: EvalSettings) -> Sweep:
    """Validate every point and claim the directory (or check it holds this same plan)."""
    directory = Path(directory)
    fixed, axes = axes_of(preset, grid)
    points = expand(base, fixed, axes, runs_dir=str(directory / RUNS_DIR))
    for data_dir in dict.fromkeys(point.config.data_dir for point in points):  # before any point trains
        check_tasks(evaluation.tasks, data_dir)
    check_writable(directory, "--output-dir")
    plan = {
        "base": base,
        "preset": preset,
        "fixed": fixed,
        "axes": [axis.to_dict() for axis in axes],
        "evaluation": dataclasses.asdict(evaluation),
        "points": [point.name for point in points],
    }
    _claim(directory, json.loads(json.dumps(plan)))
    return Sweep(directory, axes, points, evaluation)


def run_points(sweep: Sweep, log=print, progress: bool = True, shard: tuple[int, int] = (0, 1)) -> list[str]:
    """Train and evaluate every point not finished yet; returns the names of points that failed.

    A failing point (out of memory, say) is logged and skipped so the others still run and the
    report still covers them; a rerun retries it. ``shard=(i, n)`` takes points i, i+n, i+2n...,
    so n processes (one per GPU, or per CPU core) can share a sweep whose plan is already claimed.
    """
    failed = []
    for number, point in shard_of(sweep.points, *shard):
        log(f"[{number}/{len(sweep.points)}] {point.name}")
        gc.collect()  # the previous point's model must not count towards this one's peak memory
        try:
            _run_point(sweep, point, log, progress)
        except (RoSAError, RuntimeError, OSError, ValueError) as err:
            log(f"  failed: {err}")
            failed.append(point.name)
    return failed


def _run_point(sweep: Sweep, point: Point, log, progress: bool) -> None:
    run_dir = Path(point.config.output_dir)
    if (run_dir / RUN_SUMMARY).is_file():
        log("  trained already: skipped")
    elif (run_dir / CONFIG_FILE).is_file():
        log("  training was interrupted: resuming it from its last checkpoint")
        train(point.config, resume=True, log=log)
    else:
        train(point.config, overwrite=run_dir.exists(), log=log)
    eval_dir = sweep.eval_dir(point)
    if (eval_dir / METRICS_FILE).is_file():
        log("  evaluated already: skipped")
        return
    target = run_target(run_dir)
    e = sweep.evaluation
    with directory_lock(eval_dir, "evaluation directory", "wait for it to finish; rerunning the sweep then skips or continues it."):
        evaluate_target(
            target.model, target.adapter, eval_dir, e.tasks, data_dir=target.data_dir, decoding=e.decoding,
            batch_size=e.batch_size, limit=e.limit, precision=target.precision, quantize=target.quantize,
            trust_remote_code=point.config.trust_remote_code, progress=progress,
        )


def shard_of(points: list[Point], index: int, count: int) -> list[tuple[int, Point]]:
    """Points ``index, index + count, ...`` with their 1-based numbers in the whole sweep."""
    return [(number, point) for number, point in enumerate(points, 1) if (number - 1) % count == index]


def _claim(directory: Path, plan: dict[str, Any]) -> None:
    plan_file = directory / PLAN_FILE
    if plan_file.is_file():
        previous = json.loads(plan_file.read_text())
        if previous != plan:
            changed = sorted(k for k in plan if previous.get(k) != plan[k])
            raise RoSAError(
                f"{directory} holds a sweep with another plan ({', '.join(changed)} differ); nothing was run. "
                "Rerun with the same settings to resume it, or choose another --output-dir."
            )
        return
    # another shard's plan may be mid-write (its temporary file) when several start at once
    others = [p for p in directory.iterdir() if not p.name.startswith(f".{PLAN_FILE}.")] if directory.is_dir() else []
    if directory.exists() and (not directory.is_dir() or others):
        raise RoSAError(f"{directory} exists and is not a sweep directory (no {PLAN_FILE}); choose another --output-dir.")
    atomic_write_json(plan_file, plan, sort_keys=False)
