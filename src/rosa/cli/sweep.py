"""``rosa sweep``: train and evaluate a grid of configurations, then collect one table and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from rosa.cli.train import add_config_arguments, config_overrides
from rosa.eval.generation import DECODINGS


def add_parser(commands, name: str) -> None:
    from rosa.sweep.plan import PRESETS

    presets = "; ".join(f"{key}: {preset.description}" for key, preset in PRESETS.items())
    parser = commands.add_parser(
        name,
        help="train and evaluate a grid of configurations (resumable), then tabulate and plot",
        description="Every point of the grid is an ordinary `rosa train` run under OUTPUT_DIR/runs/, "
        "evaluated like `rosa eval`. Rerunning the same command skips finished points and resumes "
        f"interrupted ones. Presets: {presets}.",
    )
    add_config_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="the sweep directory")
    parser.add_argument("--preset", help="a preset grid: " + ", ".join(PRESETS))
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="a swept config field, e.g. --grid seed=1,2,3 --grid k_ratio=0.25,0.5 (repeatable; "
                        "short names like k_ratio, r_low, rank resolve to their section)")
    parser.add_argument("--tasks", default="all", help="evaluation tasks and groups, as for rosa eval")
    parser.add_argument("--decoding", choices=sorted(DECODINGS), default="beam4")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items of each task")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="run only points I, I+N, I+2N, ... so N processes (one per GPU, say) share the sweep")
    parser.add_argument("--report-only", action="store_true", help="collect the finished points without running any")
    parser.add_argument("--no-progress", action="store_true", help="no evaluation progress bar")


def run(args: argparse.Namespace) -> int:
    from rosa.errors import RoSAError
    from rosa.locking import directory_lock
    from rosa.serialization import check_writable
    from rosa.sweep import EvalSettings, parse_axis, plan_sweep, run_points, write_report
    from rosa.sweep.runner import PLAN_FILE
    from rosa.train.config import load_config_data

    shard = _shard(args.shard)
    base = load_config_data(args.config, config_overrides(args))
    evaluation = EvalSettings(tasks=args.tasks, decoding=args.decoding, limit=args.limit, batch_size=args.eval_batch_size)
    if args.report_only and not (Path(args.output_dir) / PLAN_FILE).is_file():
        raise RoSAError(f"{args.output_dir} holds no sweep ({PLAN_FILE} missing); check --output-dir.")
    check_writable(Path(args.output_dir), "--output-dir")
    # shards (and reports) share the directory; a whole sweep has it to itself
    with directory_lock(args.output_dir, "sweep directory", "wait for it to finish, or choose another --output-dir (several "
                        "processes share one sweep only as --shard I/N, once it has been claimed).",
                        shared=args.report_only or shard != (0, 1)):
        sweep = plan_sweep(args.output_dir, base, args.preset, [parse_axis(text) for text in args.grid], evaluation)
        failed = [] if args.report_only else run_points(sweep, progress=not args.no_progress, shard=shard)
        written = write_report(sweep)
    print((sweep.directory / "results.md").read_text())
    print("written: " + ", ".join(str(path) for path in written.values()))
    if failed:
        print(f"{len(failed)} point(s) failed (see the log above): {', '.join(failed)}; rerun the same command to retry them.")
        return 1
    return 0


def _shard(text: str) -> tuple[int, int]:
    from rosa.errors import RoSAConfigError

    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise RoSAConfigError(f"--shard expects I/N with 0 <= I < N (e.g. 0/2 and 1/2 for two processes), got {text!r}.")
    return int(index), int(count)


def interrupted(args: argparse.Namespace, phase: str | None) -> str:
    """Ctrl-C: finished points (trained and evaluated) stay; the same command runs the others, resuming
    the interrupted one from its last checkpoint or its saved predictions."""
    from rosa.eval.runner import METRICS_FILE
    from rosa.eval.targets import run_eval_dir
    from rosa.serialization import read_json_object
    from rosa.sweep.runner import PLAN_FILE, RUNS_DIR

    directory = Path(args.output_dir)
    if not (directory / PLAN_FILE).is_file():
        return "before anything was written. Rerun the same command."
    points = read_json_object(directory / PLAN_FILE)["points"]
    finished = sum((run_eval_dir(directory / RUNS_DIR / name, args.decoding) / METRICS_FILE).is_file() for name in points)
    return (
        f"; {finished} of {len(points)} points are finished (trained and evaluated) and kept in {directory}. Rerun the "
        "same command to continue: finished points are skipped, an interrupted one resumes."
    )
