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
    from rosa.sweep import EvalSettings, parse_axis, plan_sweep, run_points, write_report
    from rosa.sweep.runner import PLAN_FILE
    from rosa.train.config import load_config_data

    shard = _shard(args.shard)
    base = load_config_data(args.config, config_overrides(args))
    evaluation = EvalSettings(tasks=args.tasks, decoding=args.decoding, limit=args.limit, batch_size=args.eval_batch_size)
    if args.report_only and not (Path(args.output_dir) / PLAN_FILE).is_file():
        raise RoSAError(f"{args.output_dir} holds no sweep ({PLAN_FILE} missing); check --output-dir.")
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
