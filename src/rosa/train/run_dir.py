"""The run directory's life cycle: refuse to clobber it, prove it writable, find where to resume.

Run directory layout::

    config.yaml        the resolved configuration (rerun with ``rosa train --config config.yaml``)
    budget.json        the parameter budget as matched at the start (runs with match_params)
    train_log.jsonl    every Trainer log line; tensorboard/ holds the same for TensorBoard
    checkpoint-N/      Trainer checkpoints (adapter, optimizer, scheduler, RNG, DLS state), each
                       published by one rename when complete (see rosa.train.trainer)
    dls_history.json   DLS selections (methods with DLS)
    adapter/           the final adapter (RoSA or PEFT format, safetensors + JSON), published whole
    run.json           summary written last: a run without it did not finish

One writer at a time: ``rosa train`` holds the directory's lock (:mod:`rosa.locking`) from before its
checks until it ends. ``--overwrite`` moves the previous run aside, to ``.NAME.replaced`` beside the
directory, and deletes it only once the new run has finished (``run.json``); a new run that fails
before its first checkpoint is removed and the previous one is moved back, and one that fails or is
killed later leaves both (the new one for ``--resume``); the next ``rosa train`` on the directory sorts
them out (:func:`settle_replacement`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rosa.dls.callback import STATE_NAME as DLS_STATE
from rosa.errors import RoSAError
from rosa.serialization import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes

RUN_SUMMARY, ADAPTER_DIR, CONFIG_FILE, PISSA_INIT_DIR = "run.json", "adapter", "config.yaml", "pissa_init"
TRAIN_LOG, DLS_HISTORY, TENSORBOARD_DIR, BUDGET_FILE = "train_log.jsonl", "dls_history.json", "tensorboard", "budget.json"
CHECKPOINT_PREFIX = f"{PREFIX_CHECKPOINT_DIR}-"  # the Trainer's checkpoint-N
# what a checkpoint must hold to resume exactly (the RNG files differ with the number of processes)
CHECKPOINT_FILES = (TRAINER_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, CONFIG_NAME, WEIGHTS_NAME)
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


def replaced_path(run_dir: Path) -> Path:
    """Where ``--overwrite`` keeps the previous run until the new one finishes."""
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.with_name(f".{run_dir.name}.replaced")


def has_something_to_keep(run_dir: Path) -> bool:
    """Whether a run has a state worth more than its inputs: a published checkpoint, or it finished."""
    return run_dir.is_dir() and ((run_dir / RUN_SUMMARY).is_file() or bool(checkpoints(run_dir)))


def settle_replacement(run_dir: Path, log=print) -> None:
    """Finish what a replacement (``--overwrite``) stopped midway left: the previous run aside, and a
    new run. A new run that finished wins; one that never got to write its ``config.yaml`` loses (the
    previous run is moved back); otherwise both stay (``--resume`` continues the new run, the same
    ``--overwrite`` starts it again, and the previous run waits aside until a new run finishes: a run
    that can still fail never costs the finished one). Called with the directory's lock held."""
    aside = replaced_path(run_dir)
    if not aside.exists():
        return
    if (run_dir / RUN_SUMMARY).is_file():
        discard_replaced(run_dir, log)
    elif not (run_dir / CONFIG_FILE).is_file():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.rename(aside, run_dir)
        log(f"{run_dir}: restored the previous run, which a replacement interrupted before it started had moved aside")


def move_aside(run_dir: Path) -> None:
    """Make room for a replacement: the previous run goes to :func:`replaced_path` (where it may
    already be, when an earlier replacement was interrupted: then that one is removed)."""
    aside = replaced_path(run_dir)
    if aside.exists():
        remove_run(run_dir)
    elif run_dir.exists():
        os.rename(run_dir, aside)


def put_back(run_dir: Path, existed: bool) -> None:
    """Undo the start of a run that failed before it had anything to keep: remove it, and move the
    run it replaced back (or leave the empty directory that was there)."""
    aside = replaced_path(run_dir)
    remove_run(run_dir)
    if aside.exists():
        os.rename(aside, run_dir)
    elif existed:
        run_dir.mkdir(parents=True, exist_ok=True)


def discard_replaced(run_dir: Path, log=print) -> None:
    """The new run finished: the one it replaced is deleted."""
    aside = replaced_path(run_dir)
    if aside.exists():
        shutil.rmtree(aside)
        log(f"{run_dir} replaced the previous run, which was kept in {aside} until now")


def remove_run(run_dir: Path) -> None:
    """Delete a run directory, ``config.yaml`` first: a kill during the removal must not leave
    something ``--resume`` would continue."""
    if run_dir.exists():
        (run_dir / CONFIG_FILE).unlink(missing_ok=True)
        shutil.rmtree(run_dir)


def checkpoints(run_dir: Path) -> list[Path]:
    """The published checkpoints of a run, oldest first."""
    found = [p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``checkpoint-N`` directory was saved at."""
    return int(checkpoint.name[len(CHECKPOINT_PREFIX):])


def save_failure(err: BaseException, run_dir: Path, what: str) -> RoSAError:
    """A failed save (full disk, lost permission, I/O error), said with what is kept and what to do."""
    published = checkpoints(run_dir) if run_dir.is_dir() else []
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[0]
    if published:
        kept = f"the last complete checkpoint, {published[-1].name}, is intact"
        then = f"continue with `rosa train --resume {run_dir}`"
    else:  # nothing to resume from: a new run is undone (rosa.train.recipe), a resumed one starts over
        kept, then = "no checkpoint was complete yet", "run the same command again"
    return RoSAError(
        f"could not write {what} in {run_dir}: {reason}. Nothing complete was overwritten; {kept}. Free space "
        f"(or fix the permissions or the storage), then {then}."
    )


@contextlib.contextmanager
def save_failures_explained(run_dir: Path, what: str) -> Iterator[None]:
    """Any error while writing ``what`` becomes :func:`save_failure`'s message (torch and safetensors
    report a full disk as RuntimeError, not OSError); rosa's own errors pass through."""
    try:
        yield
    except RoSAError:
        raise
    except Exception as err:
        raise save_failure(err, run_dir, what) from err


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
        log(f"skipping {checkpoint.name}: incomplete (no {', '.join(missing)}); it will be removed")
    log(f"{run_dir} has no complete checkpoint: training restarts from step 0")
    return None


def prepare_resume(run_dir: Path, checkpoint: Path | None) -> None:
    """Forget what happened after ``checkpoint``: leftovers of interrupted saves, incomplete newer
    checkpoints (rotation would otherwise keep them and delete the new ones), and log lines of steps
    that will run again, so the log reads as one uninterrupted run."""
    for leftover in [*run_dir.glob(".*.partial"), *run_dir.glob(".*.old")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    resumed_step = checkpoint_step(checkpoint) if checkpoint is not None else 0
    for newer in checkpoints(run_dir):
        if checkpoint_step(newer) > resumed_step:
            shutil.rmtree(newer)
    if checkpoint is None:
        for name in (TRAIN_LOG, DLS_HISTORY, TENSORBOARD_DIR, ADAPTER_DIR):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return
    logged = len(json.loads((checkpoint / TRAINER_STATE_NAME).read_text())["log_history"])
    log_file = run_dir / TRAIN_LOG
    if log_file.is_file():
        # one line per Trainer log call, as in the checkpoint's log_history; a kill mid-append
        # leaves a last line without its newline, dropped with the rest
        lines = [line for line in log_file.read_text().splitlines(keepends=True) if line.endswith("\n")]
        atomic_write_bytes(log_file, "".join(lines[:logged]).encode())
