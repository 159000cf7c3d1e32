"""The run directory's life cycle: refuse to clobber it, prove it writable, find where to resume.

Run directory layout::

    config.yaml        the resolved configuration (rerun with ``rosa train --config config.yaml``)
    train_log.jsonl    every Trainer log line; tensorboard/ holds the same for TensorBoard
    checkpoint-N/      Trainer checkpoints (adapter, optimizer, scheduler, RNG, DLS state), each
                       published by one rename when complete (see rosa.train.trainer)
    dls_history.json   DLS selections (methods with DLS)
    adapter/           the final adapter (RoSA or PEFT format, safetensors + JSON), published whole
    run.json           summary written last: a run without it did not finish
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

from rosa.errors import RoSAError
from rosa.serialization import atomic_write_bytes
from rosa.train.trainer import checkpoints

RUN_SUMMARY, ADAPTER_DIR, CONFIG_FILE, PISSA_INIT_DIR = "run.json", "adapter", "config.yaml", "pissa_init"
TRAIN_LOG, DLS_HISTORY, TENSORBOARD_DIR = "train_log.jsonl", "dls_history.json", "tensorboard"
# what a checkpoint must hold to resume exactly (the RNG files differ with the number of processes)
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
DLS_STATE = "dls_state.json"
# errors that mean "this location cannot take our files", as opposed to a bug
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def check_new_run_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise RoSAError(f"output_dir {path} is a file; choose a directory path for the run.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise RoSAError(
            f"run directory {path} already exists and is not empty; nothing was changed. Choose another "
            f"--output-dir, pass --overwrite to replace it, or `rosa train --resume {path}` to continue it."
        )


def storage_error(err: OSError, run_dir: Path) -> RoSAError:
    """An out-of-space or permission failure while training, said with what is kept and what to do."""
    published = checkpoints(run_dir) if run_dir.is_dir() else []
    kept = f"the last complete checkpoint, {published[-1].name}, is intact" if published else "no checkpoint was complete yet"
    return RoSAError(
        f"could not write to {err.filename or run_dir}: {err.strerror}. Nothing complete was overwritten; {kept}. "
        f"Free space (or fix the permissions), then continue with `rosa train --resume {run_dir}`."
    )


def resumable_config(run_dir: Path) -> Path:
    """The ``config.yaml`` of a run that can be resumed."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise RoSAError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); nothing to resume. Start a run with "
            "`rosa train --output-dir DIR ...`."
        )
    if (run_dir / RUN_SUMMARY).is_file():
        raise RoSAError(
            f"run {run_dir} already finished ({RUN_SUMMARY} exists); nothing to resume. Evaluate it with "
            f"`rosa eval {run_dir}`, or train longer in a new run."
        )
    return run_dir / CONFIG_FILE


def resume_point(run_dir: Path, uses_dls: bool, log=print) -> Path | None:
    """The newest complete checkpoint of an unfinished run, or None to restart it from step 0."""
    resumable_config(run_dir)
    required = CHECKPOINT_FILES + ((DLS_STATE,) if uses_dls else ())
    for checkpoint in reversed(checkpoints(run_dir)):
        missing = [name for name in required if not (checkpoint / name).is_file()]
        if not missing:
            return checkpoint
        log(f"skipping {checkpoint.name}: incomplete (no {', '.join(missing)})")
    log(f"{run_dir} has no complete checkpoint: training restarts from step 0")
    return None


def prepare_resume(run_dir: Path, checkpoint: Path | None) -> None:
    """Forget what happened after ``checkpoint``: leftovers of interrupted saves, and log lines of
    steps that will run again (so the log reads as one uninterrupted run)."""
    for leftover in [*run_dir.glob(".*.partial"), *run_dir.glob(".*.old")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    if checkpoint is None:
        for name in (TRAIN_LOG, DLS_HISTORY, TENSORBOARD_DIR, ADAPTER_DIR):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    log_file = run_dir / TRAIN_LOG
    if log_file.is_file():
        lines = log_file.read_text().splitlines(keepends=True)
        # a kill mid-append leaves a last line without its newline: it is dropped with the later steps
        kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
        atomic_write_bytes(log_file, "".join(kept).encode())
