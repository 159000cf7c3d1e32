"""``rosa train``: fine-tune with RoSA or a baseline; a YAML config plus command-line overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from rosa.quantize import QUANTIZATIONS
from rosa.train.config import METHODS

# flag -> dotted config field; flags left unset keep the YAML value (or the default)
SHORTCUTS = {
    "model": "model",
    "method": "method",
    "data": "data",
    "data_dir": "data_dir",
    "seed": "seed",
    "precision": "precision",
    "quantize": "quantize",
    "match_params": "match_params",
    "lr": "training.lr",
    "epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "max_samples": "training.max_samples",
    "batch_size": "training.batch_size",
    "micro_batch_size": "training.micro_batch_size",
    "report_to": "training.report_to",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment-configuration flags, shared by ``rosa train`` and ``rosa sweep``."""
    parser.add_argument("--config", help="YAML file with the experiment configuration")
    parser.add_argument("--model", help="base model: local directory, Hugging Face id, or a .gguf file (or a directory holding one)")
    parser.add_argument("--method", choices=METHODS, help="rosa (RoAE + DLS, default), roae, lora, dora, pissa, lora-dls")
    parser.add_argument("--data", help="a .json file or a known name (commonsense_15k, math_10k, commonsense_mix, math_mix, a task)")
    parser.add_argument("--data-dir", help="where known names resolve (else $ROSA_DATA_DIR, else ../shared/data/llm-adapters)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="a quantised frozen base: int8 (bitsandbytes on a GPU, optimum-quanto on a CPU), int4 "
                        "(optimum-quanto), nf4 (bitsandbytes, GPU only); the adapter stays full precision")
    parser.add_argument("--match-params", metavar="RUN_OR_METHOD", help="choose this method's rank to match the trainable parameters of a run directory or a method")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-samples", type=int, help="train on a seeded random subset of this many records")
    parser.add_argument("--batch-size", type=int, help="effective batch size (LLM-Adapters: 16)")
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--report-to", type=lambda text: text.split(","), metavar="LOGGERS",
                        help="where logs and DLS selections go: comma-separated transformers integrations "
                        "(tensorboard, the default, into RUN/tensorboard; wandb, trackio, mlflow, ...) or none")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="any config field, e.g. --set rosa.targets=[q,k] --set dls.mode=freeze (repeatable)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


def config_overrides(args: argparse.Namespace) -> dict:
    """Dotted overrides from the flags of :func:`add_config_arguments`, ``--set`` last."""
    from rosa.train.config import parse_assignment

    overrides = {field: getattr(args, flag) for flag, field in SHORTCUTS.items() if getattr(args, flag) is not None}
    if args.trust_remote_code:
        overrides["trust_remote_code"] = True
    overrides.update(parse_assignment(text) for text in args.set)
    return overrides


def add_parser(commands, name: str) -> None:
    parser = commands.add_parser(
        name,
        help="fine-tune a causal LM with RoSA or a baseline on LLM-Adapters-format data",
        description="Settings come from --config (YAML), then the flags below, then --set; the resolved "
        "configuration is saved as config.yaml in the run directory.",
    )
    add_config_arguments(parser)
    parser.add_argument("--output-dir", help="the run directory (refused if it exists, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue an interrupted run from its newest complete checkpoint, with the run's own "
                        "config.yaml (no other setting may be given)")


def run(args: argparse.Namespace) -> int:
    from rosa.errors import RoSAError
    from rosa.train.config import load_config
    from rosa.train.recipe import train
    from rosa.train.run_dir import resumable_config

    overrides = config_overrides(args)
    if args.resume is not None:
        given = [*overrides, *(["--config"] if args.config else []), *(["--output-dir"] if args.output_dir else []),
                 *(["--overwrite"] if args.overwrite else [])]
        if given:
            raise RoSAError(
                f"--resume continues a run with its own config.yaml; it cannot be combined with {', '.join(given)}. "
                "To change settings, start a new run."
            )
        config = load_config(resumable_config(Path(args.resume)), {"output_dir": args.resume})
        summary = train(config, resume=True)
    else:
        if args.output_dir is not None:
            overrides["output_dir"] = args.output_dir
        config = load_config(args.config, overrides)
        summary = train(config, overwrite=args.overwrite)
    if summary:
        loss = "no loss logged" if summary["train_loss"] is None else f"mean loss {summary['train_loss']:.4f}"
        print(f"trained {summary['steps']} steps in {summary['train_runtime_s']:.1f} s, {loss}")
        print(f"adapter saved in {config.output_dir}/adapter; evaluate with: rosa eval {config.output_dir}")
    return 0


def interrupted(args: argparse.Namespace, phase: str | None) -> str:
    """Ctrl-C: published checkpoints are complete (each appears by one rename), so the newest one is
    what ``--resume`` continues from."""
    from rosa.interrupt import LOADING_MODEL
    from rosa.train.config import load_config
    from rosa.train.run_dir import CONFIG_FILE, RUN_SUMMARY, checkpoints, replaced_path

    if phase == LOADING_MODEL and args.resume is None:  # the run directory is not touched before the model is built
        return "while loading the model; nothing was written. Rerun the same command."
    run_dir = Path(args.resume or args.output_dir or load_config(args.config, config_overrides(args)).output_dir).resolve()
    resume = f"`rosa train --resume {run_dir}`"
    aside = replaced_path(run_dir)
    previous = f" The previous run is kept in {aside} until this one finishes." if aside.exists() else ""
    if (run_dir / RUN_SUMMARY).is_file():
        return f"after the run finished; {run_dir} is complete. Evaluate it with `rosa eval {run_dir}`."
    if run_dir.is_dir() and checkpoints(run_dir):
        return f"; the newest complete checkpoint, {checkpoints(run_dir)[-1].name}, is kept in {run_dir}. Continue with {resume}.{previous}"
    if (run_dir / CONFIG_FILE).is_file():
        return f"before the first checkpoint; {run_dir} keeps the run's {CONFIG_FILE}, so {resume} starts it again from step 0.{previous}"
    if previous:
        return f"before the new run wrote anything;{previous} Rerun the same command (it puts the previous run back first)."
    return "before anything was written. Rerun the same command."
