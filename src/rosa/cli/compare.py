"""``rosa compare``: one table of evaluated runs, and paired significance against a reference run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosa.eval.generation import DECODINGS

if TYPE_CHECKING:
    from rosa.compare import EvalResult


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(
        name,
        help="compare evaluated runs: accuracy per task, costs, paired significance",
        description="Tabulate the evaluations of run directories (or evaluation directories). With --ref, "
        "test every other run against it: exact McNemar per task, paired bootstrap for the micro average.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories from `rosa train`, or evaluation directories")
    parser.add_argument("--ref", metavar="RUN_DIR", help="reference run for the significance tests (need not be among RUN_DIRs)")
    parser.add_argument("--decoding", choices=sorted(DECODINGS), help="which evaluation of each run (needed when a run has several)")
    parser.add_argument("--labels", help="comma-separated names for the RUN_DIRs, one each (default: directory names)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level; the bootstrap CI is at 1 - alpha")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples for the micro average")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same interval)")
    parser.add_argument("--output", metavar="DIR", help="also write comparison.md/.csv/.json (and significance.csv) here")


def run(args: argparse.Namespace) -> int:
    from rosa.compare import comparison_rows, load_result, render_markdown, render_significance_markdown, significance_rows
    from rosa.compare.significance import render_significance_csv
    from rosa.compare.table import render_csv

    _check_options(args)
    labels = _labels(args.labels, len(args.run_dirs))
    results = [load_result(path, args.decoding, label) for path, label in zip(args.run_dirs, labels)]
    ref, others = _reference(args.ref, args.decoding, results)
    shown = results if ref is None or any(ref is r for r in results) else [ref, *results]
    _check_unique([r.label for r in shown])
    significance = significance_rows(ref, others, args.alpha, args.resamples, seed=args.seed) if ref else None

    rows = comparison_rows(shown)
    markdown = "## Comparison\n\n" + render_markdown(rows)
    if ref is not None:
        markdown += f"\n## Significance against {ref.label}\n\n" + render_significance_markdown(significance, ref.label, args.alpha)
    print(markdown, end="")
    if args.output:
        files = {"comparison.md": markdown, "comparison.csv": render_csv(rows), "comparison.json": _json(shown, rows, ref, significance, args)}
        if significance is not None:
            files["significance.csv"] = render_significance_csv(significance)
        _write(Path(args.output), files)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Checked before any file is read so a typo never costs a load, nor leaves a partial output."""
    from rosa.errors import RoSAError

    if not 0 < args.alpha < 1:
        raise RoSAError(f"--alpha must be between 0 and 1 (got {args.alpha}).")
    if args.resamples < 1:
        raise RoSAError(f"--resamples must be at least 1 (got {args.resamples}).")
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise RoSAError(f"--output {args.output} is a file; give a directory path.")


def _labels(spec: str | None, count: int) -> list[str | None]:
    from rosa.errors import RoSAError

    if spec is None:
        return [None] * count
    labels = [label.strip() for label in spec.split(",")]
    if len(labels) != count or not all(labels):
        raise RoSAError(f"--labels gives {len(labels)} names for {count} RUN_DIRs; give one non-empty name per RUN_DIR, comma-separated.")
    return labels


def _reference(path: str | None, decoding: str | None, results: list[EvalResult]) -> tuple[EvalResult | None, list[EvalResult]]:
    """The reference and the runs to test against it; a reference listed among the runs keeps its label
    there and is not tested against itself."""
    from rosa.compare import load_result
    from rosa.errors import RoSAError

    if path is None:
        return None, []
    ref = load_result(path, decoding)
    ref = next((r for r in results if r.eval_dir.resolve() == ref.eval_dir.resolve()), ref)
    others = [r for r in results if r is not ref]
    if not others:
        raise RoSAError("--ref is the only run given; name at least one other RUN_DIR to compare with it.")
    return ref, others


def _check_unique(labels: list[str]) -> None:
    from rosa.errors import RoSAError

    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise RoSAError(f"several runs are named {', '.join(repeated)}; pass --labels to tell them apart.")


def _json(
    results: list[EvalResult], rows: list[dict[str, Any]], ref: EvalResult | None,
    significance: list[dict[str, Any]] | None, args: argparse.Namespace,
) -> str:
    payload = {
        "runs": [{"label": r.label, "eval_dir": str(r.eval_dir), "decoding": r.decoding} for r in results],
        "rows": rows,
        "ref": ref.label if ref else None,
        "alpha": args.alpha,
        "significance": significance,
    }
    return json.dumps(payload, indent=2) + "\n"


def _write(directory: Path, files: dict[str, str]) -> None:
    from rosa.serialization import atomic_write_bytes

    for name, text in files.items():
        atomic_write_bytes(directory / name, text.encode())
    print(f"wrote {', '.join(files)} to {directory}")
