"""Paired significance of accuracy differences (spec section 4): exact McNemar per task, paired
bootstrap over items for the micro average.

Both tests use that two runs answered the *same* items: the per-item differences carry far less
noise than two independent accuracies, so small real gains can be told from luck. That only holds
when the items really are the same, hence ``check_paired`` before any test.
"""

from __future__ import annotations

import csv
import inspect
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest, bootstrap

from rosa.compare.results import EvalResult
from rosa.compare.table import ordered_tasks
from rosa.errors import RoSAError

# scipy 1.15 renamed random_state to rng; the project supports older scipy too.
_SEED_ARG = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
# Resampled index matrices are batch x items; this caps one batch near 40 MB of int64 indices.
_BATCH_ELEMENTS = 5_000_000


@dataclass(frozen=True)
class McNemar:
    b: int
    c: int
    p_value: float


@dataclass(frozen=True)
class BootstrapCI:
    delta: float
    low: float
    high: float
    confidence: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def mcnemar_exact(ref: Sequence[bool], other: Sequence[bool]) -> McNemar:
    """Only discordant items carry information; under no difference each is equally likely to favour
    either run, so their split is Binomial(b + c, 1/2)."""
    ref_arr, other_arr = _paired_arrays(ref, other)
    b = int(np.sum(ref_arr & ~other_arr))
    c = int(np.sum(~ref_arr & other_arr))
    p_value = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return McNemar(b, c, p_value)


def paired_bootstrap(
    ref: Sequence[bool], other: Sequence[bool], n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> BootstrapCI:
    """Percentile CI of ``mean(other) - mean(ref)``, resampling items with both runs' answers together."""
    ref_arr, other_arr = _paired_arrays(ref, other)
    if not len(ref_arr):
        raise RoSAError("no items to compare: both runs must have evaluated at least one item.")
    differences = other_arr.astype(np.int8) - ref_arr.astype(np.int8)
    delta = float(differences.mean())
    if np.all(differences == differences[0]):
        # Every resample has the same mean; scipy would warn about the degenerate distribution.
        return BootstrapCI(delta, delta, delta, confidence)
    result = bootstrap(
        (ref_arr, other_arr),
        _mean_difference,
        n_resamples=n_resamples,
        batch=max(1, _BATCH_ELEMENTS // len(ref_arr)),
        vectorized=True,
        paired=True,
        confidence_level=confidence,
        method="percentile",
        **{_SEED_ARG: np.random.default_rng(seed)},
    )
    interval = result.confidence_interval
    return BootstrapCI(delta, float(interval.low), float(interval.high), confidence)


def _mean_difference(ref: np.ndarray, other: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(other, axis=axis) - np.mean(ref, axis=axis)


def _paired_arrays(ref: Sequence[bool], other: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(ref) != len(other):
        raise RoSAError(f"paired tests need one answer per item from both runs (got {len(ref)} and {len(other)}).")
    return np.asarray(ref, dtype=bool), np.asarray(other, dtype=bool)


# the evaluation settings that decide what an answer is (eval_config.json); runs that differ in one
# answered each item under another protocol, so their per-item agreement says nothing about the models
PROTOCOL_FIELDS = ("decoding", "max_new_tokens", "keep_special_tokens", "prompt")


def check_paired(ref: EvalResult, other: EvalResult) -> None:
    """Refuse runs evaluated under another protocol (a greedy run against a beam4 one), or whose items
    differ: a paired test on answers that are not comparable item by item would be meaningless."""
    _check_protocol(ref, other)
    problems = [p for task in ordered_tasks([ref, other]) if (p := _task_mismatch(task, ref, other))]
    if problems:
        raise RoSAError(
            f"cannot pair {other.label} with {ref.label}: the evaluated items differ ({'; '.join(problems)}). "
            "Both runs must be evaluated with the same --tasks, --limit and data."
        )


def protocol(result: EvalResult) -> dict[str, Any]:
    """The protocol fields an evaluation recorded (the decoding always, from metrics.json if need be)."""
    found = {name: result.settings[name] for name in PROTOCOL_FIELDS if name in result.settings}
    if result.decoding is not None:
        found["decoding"] = result.decoding
    return found


def _check_protocol(ref: EvalResult, other: EvalResult) -> None:
    ref_protocol, other_protocol = protocol(ref), protocol(other)
    differ = [name for name in PROTOCOL_FIELDS if name in ref_protocol and name in other_protocol and ref_protocol[name] != other_protocol[name]]
    if differ:
        details = "; ".join(f"{name}: {other_protocol[name]} vs {ref_protocol[name]}" for name in differ)
        same = (f"the same --decoding (`rosa eval RUN --decoding {ref.decoding}`)" if differ == ["decoding"]
                else "the same settings (the same rosa version and --decoding)")
        raise RoSAError(
            f"cannot pair {other.label} ({other.decoding} decoding) with {ref.label} ({ref.decoding} decoding): they "
            f"were evaluated with different settings ({details}), so McNemar and the paired bootstrap would compare "
            f"answers produced under different protocols. Evaluate both with {same} and compare those "
            "evaluations, or drop --ref to only tabulate them."
        )


def _task_mismatch(task: str, ref: EvalResult, other: EvalResult) -> str | None:
    ref_items, other_items = _items_of(ref, task), _items_of(other, task)
    if ref_items.keys() != other_items.keys():
        return f"{task}: {ref.label} has {len(ref_items)} items, {other.label} has {len(other_items)}"
    changed = sum(
        ref_items[i].get("label") != other_items[i].get("label") or ref_items[i].get("prompt") != other_items[i].get("prompt")
        for i in ref_items
    )
    return f"{task}: {changed} of {len(ref_items)} items have another label or prompt" if changed else None


def _items_of(result: EvalResult, task: str) -> dict[int, dict[str, Any]]:
    return {index: item for (t, index), item in result.predictions.items() if t == task}


def _correctness(result: EvalResult, keys: Sequence[tuple[str, int]]) -> np.ndarray:
    return np.array([bool(result.predictions[key]["correct"]) for key in keys], dtype=bool)


def significance_rows(
    ref: EvalResult,
    others: Sequence[EvalResult],
    alpha: float = 0.05,
    n_resamples: int = 10000,
    confidence: float | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per run: each task's McNemar test and the micro average's bootstrap CI, deltas in percentage
    points (other minus ref). Per-item correctness is the upstream rule (``correct``)."""
    confidence = 1 - alpha if confidence is None else confidence
    for other in others:
        check_paired(ref, other)
    tasks = [t for t in ordered_tasks([ref]) if _items_of(ref, t)]
    keys = sorted(ref.predictions, key=lambda k: (tasks.index(k[0]), k[1]))
    ref_correct, task_of = _correctness(ref, keys), np.array([task for task, _ in keys])
    rows = []
    for other in others:
        other_correct = _correctness(other, keys)
        per_task = {}
        for task in tasks:
            mask = task_of == task
            test = mcnemar_exact(ref_correct[mask], other_correct[mask])
            delta = 100 * (other_correct[mask].mean() - ref_correct[mask].mean())
            per_task[task] = {"delta": float(delta), "b": test.b, "c": test.c, "p_value": test.p_value, "significant": test.p_value < alpha}
        ci = paired_bootstrap(ref_correct, other_correct, n_resamples, confidence, seed)
        micro = {
            "delta": 100 * ci.delta, "low": 100 * ci.low, "high": 100 * ci.high,
            "confidence": confidence, "n_resamples": n_resamples, "significant": ci.significant,
        }
        rows.append({"run": other.label, "ref": ref.label, "tasks": per_task, "micro": micro})
    return rows


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "\u2212")


def _p(value: float) -> str:
    return "p<0.001" if value < 0.001 else f"p={value:.3f}"


def render_significance_markdown(rows: list[dict[str, Any]], ref_label: str, alpha: float) -> str:
    tasks = list(rows[0]["tasks"]) if rows else []
    lines = [
        f"| run vs {_cell(ref_label)} | {' | '.join(tasks + ['micro'])} |",
        "|---|" + "---:|" * (len(tasks) + 1),
    ]
    for row in rows:
        cells = [f"Δ {_signed(t['delta'], 2)} ({_p(t['p_value'])}){'*' if t['significant'] else ''}" for t in row["tasks"].values()]
        m = row["micro"]
        cells.append(f"Δ {_signed(m['delta'], 2)} [{_signed(m['low'], 1)}, {_signed(m['high'], 1)}]{'*' if m['significant'] else ''}")
        lines.append(f"| {_cell(row['run'])} | {' | '.join(cells)} |")
    lines += ["", _legend(rows, ref_label, alpha)]
    return "\n".join(lines) + "\n"


def _legend(rows: list[dict[str, Any]], ref_label: str, alpha: float) -> str:
    micro = rows[0]["micro"] if rows else {"confidence": 1 - alpha, "n_resamples": 0}
    return (
        f"Δ = accuracy minus {ref_label}'s, in percentage points. * = significant at α = {alpha:g}: per task, "
        f"exact two-sided McNemar test on the items the runs disagree on; for the micro average, a paired "
        f"bootstrap percentile {100 * micro['confidence']:g}% CI over items ({micro['n_resamples']:,d} resamples) "
        "that excludes 0. p-values are not corrected for multiple comparisons."
    )


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_significance_csv(rows: list[dict[str, Any]]) -> str:
    """One line per run and task, plus one per run for the micro average; raw numbers."""
    fields = ["run", "ref", "task", "delta_pp", "b", "c", "p_value", "low_pp", "high_pp", "confidence", "n_resamples", "significant"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        for task, t in row["tasks"].items():
            writer.writerow({"run": row["run"], "ref": row["ref"], "task": task, "delta_pp": t["delta"], "b": t["b"],
                             "c": t["c"], "p_value": t["p_value"], "significant": t["significant"]})
        m = row["micro"]
        writer.writerow({"run": row["run"], "ref": row["ref"], "task": "micro", "delta_pp": m["delta"], "low_pp": m["low"],
                         "high_pp": m["high"], "confidence": m["confidence"], "n_resamples": m["n_resamples"], "significant": m["significant"]})
    return buffer.getvalue()
