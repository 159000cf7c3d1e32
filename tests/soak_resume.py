"""Soak test: a long RoSA run killed with SIGKILL again and again, resumed each time, must end with
exactly the weights and DLS history of one clean run.

    python tests/soak_resume.py --minutes 30 [--out DIR] [--seed 0]
    python tests/soak_resume.py --steps 12 --kills start-up,mid-save@10,mid-step   # a fixed schedule

The clean reference run trains beside the interrupted one (one thread each); unless ``--steps`` is
given, the number of steps is chosen so that the interrupted run lasts about ``--minutes``. Each
attempt is killed at a moment of one of three kinds:

- ``start-up``: held before the run directory is touched (on a new run, before ``config.yaml`` exists);
- ``mid-step``: at a random moment (10-60 s after its start on a long soak, proportionally sooner on a
  short one), at the latest between the two micro-batches of a random optimizer step still to come;
- ``mid-save``: held inside the save of a random checkpoint still to come (``@N``: of checkpoint-N).

Holds are hooks in the child (``tests/processes.py``), so a kill lands where it was meant to on any
machine, however busy. After each kill the next command is decided from the run directory alone, as
a user would (docs/reliability.md): without ``config.yaml`` the directory holds no run (killed too
early), and the original command with ``--overwrite`` starts it; with ``config.yaml`` and ``run.json``
the run is finished; with ``config.yaml`` alone ``rosa train --resume`` continues it. Random kills
go on until the time is up (``--kills``: exactly those, in that order); the run then finishes
undisturbed. Exit status 0 when the two runs are bit-identical, 1 otherwise. Kept out of the default
suite for its length; ``tests/test_soak.py`` runs a short fixed schedule so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import processes
from conftest import DATA, STORIES

SAVE_STEPS, BATCH, MICRO_BATCH = 5, 8, 4
MICRO_BATCHES = BATCH // MICRO_BATCH  # training_step calls per optimizer step
SETTINGS = ["--model", str(STORIES), "--data", "commonsense_mix", "--data-dir", str(DATA), "--method", "rosa",
            "--max-samples", "400", "--batch-size", str(BATCH), "--micro-batch-size", str(MICRO_BATCH),
            "--set", "training.cutoff_len=256", "--set", f"training.save_steps={SAVE_STEPS}", "--set", "training.logging_steps=1",
            "--set", "training.save_total_limit=2", "--set", "training.lr=0.01",
            "--set", "dls.warmup=10", "--set", "dls.interval=10", "--set", "dls.mode=freeze"]
RESTART_OVERHEAD = 1.5  # each resume reloads the model and replays a few steps: budget half again
KINDS = ("start-up", "mid-step", "mid-save")
# the documented files that say what a run directory holds (docs/reliability.md)
CONFIG, SUMMARY = "config.yaml", "run.json"
# where a child is held (tests/processes.py): the recipe function that first writes into the run directory,
# the training step, and torch.save (the Trainer's training arguments, optimizer, scheduler and RNG files)
PREPARE_RUN_DIR = "rosa.train.recipe._prepare_run_dir"
TRAINING_STEP = "rosa.train.trainer.RoSATrainer:training_step"


def new_run(run_dir: Path, steps: int) -> list[str]:
    return ["train", *SETTINGS, "--max-steps", str(steps), "--output-dir", str(run_dir)]


def next_command(run_dir: Path, original: list[str]) -> list[str] | None:
    """What to run after a kill, from the run directory alone, as ``rosa train --resume`` reads it:
    without ``config.yaml`` the directory holds no run (killed before the run wrote it, or while
    ``--overwrite`` was clearing an older run, which removes ``config.yaml`` first and may leave that
    run's ``run.json`` behind a moment longer), so the original command starts it again, with
    ``--overwrite`` for whatever the kill left; with ``run.json`` too the run is finished; otherwise
    ``--resume`` continues it."""
    if not (run_dir / CONFIG).is_file():
        return [*original, "--overwrite"]
    if (run_dir / SUMMARY).is_file():
        return None
    return ["train", "--resume", str(run_dir)]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the published checkpoints (each appears by one rename, complete)."""
    names = [p.name[len("checkpoint-"):] for p in run_dir.glob("checkpoint-*") if p.is_dir()]
    return sorted(int(n) for n in names if n.isdigit())


def newest_checkpoint(run_dir: Path) -> int:
    return (checkpoint_steps(run_dir) or [0])[-1]


def state(run_dir: Path) -> str:
    if not (run_dir / CONFIG).is_file():
        return f"no {CONFIG}" + ("" if run_dir.is_dir() else " (no directory)")
    if (run_dir / SUMMARY).is_file():
        return "finished (run.json)"
    newest = newest_checkpoint(run_dir)
    return f"{CONFIG}, " + (f"newest checkpoint-{newest}" if newest else "no checkpoint")


def action(command: list[str] | None) -> str:
    if command is None:
        return "nothing, the run is finished"
    return "rosa train --resume" if "--resume" in command else "the original command with --overwrite"


@dataclass(frozen=True)
class Kill:
    kind: str
    step: int | None = None  # mid-step: inside this optimizer step; mid-save: while saving checkpoint-<step>

    @classmethod
    def parse(cls, text: str) -> Kill:
        kind, _, step = text.strip().partition("@")
        if kind not in KINDS or (step and (kind == "start-up" or not step.isdigit())):
            raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(KINDS)}, with @STEP for mid-step or mid-save")
        return cls(kind, int(step) if step else None)


def save_points(steps: int) -> list[int]:
    """The steps the Trainer saves a checkpoint at: every SAVE_STEPS, and the last."""
    return sorted({*range(SAVE_STEPS, steps + 1, SAVE_STEPS), steps})


@dataclass
class Plan:
    kind: str
    hold: processes.Hold
    timer: float | None  # kill this many seconds after the start unless the hold comes first
    what: str


def plan(kill: Kill, start: int, steps: int, pace: tuple[float, float], rng: random.Random) -> Plan:
    """Where the attempt that resumes after checkpoint ``start`` is held and killed."""
    if kill.kind == "start-up" or start >= steps:  # a run with its last checkpoint only writes its adapter
        return Plan("start-up", processes.Hold(PREPARE_RUN_DIR), None, "at start-up (held before the run directory is touched)")
    if kill.kind == "mid-save":
        ahead = [s for s in save_points(steps) if s > start]
        target = kill.step if kill.step is not None else rng.choice(ahead)
        if target not in ahead:
            sys.exit(f"cannot kill mid-save of checkpoint-{target}: the run saves at {save_points(steps)} and resumes after step {start}")
        return Plan("mid-save", processes.Hold("torch.save", needle=f".checkpoint-{target}.partial"), None,
                    f"mid-save of checkpoint-{target} (held at its first torch.save)")
    target = kill.step if kill.step is not None else rng.randint(start + 1, steps)
    if not start < target <= steps:
        sys.exit(f"cannot kill inside step {target}: the run has {steps} steps and resumes after step {start}")
    # between the micro-batches of step ``target``: the attempt replays nothing before step start + 1
    hold = processes.Hold(TRAINING_STEP, call=(target - start - 1) * MICRO_BATCHES + 2)
    timer = rng.uniform(*pace)
    return Plan("mid-step", hold, timer, f"mid-step (a random moment {timer:.1f} s after its start, or held inside step {target} if sooner)")


def seconds_per_step(out: Path) -> float:
    done = processes.run([*new_run(out / "calibration", 6), "--overwrite"])
    if done.returncode:
        sys.exit(f"calibration run failed:\n{done.stderr}")
    return json.loads((out / "calibration" / SUMMARY).read_text())["train_runtime_s"] / 6


def random_kills(minutes: float, rng: random.Random) -> Iterator[Kill]:
    """Kills of random kinds until the time is up."""
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        yield Kill(rng.choices(KINDS, weights=(1, 2, 2))[0])


def interrupted_run(run_dir: Path, steps: int, kills: Iterator[Kill], pace: tuple[float, float], rng: random.Random,
                    log: Callable[[str], None] = print) -> dict[str, int]:
    """Start the run, kill it as ``kills`` say, deciding each next command from the directory, then
    let it finish."""
    original = new_run(run_dir, steps)
    counts = dict.fromkeys(KINDS, 0)
    for number, kill in enumerate(kills, 1):
        command = next_command(run_dir, original)
        if command is None:
            break
        attempt = plan(kill, newest_checkpoint(run_dir), steps, pace, rng)
        child = processes.start(command, hold=attempt.hold)
        started, is_held = time.monotonic(), processes.held(child)
        timer = attempt.timer if attempt.timer is not None else float("inf")
        try:
            processes.kill_when(child, lambda: is_held() or time.monotonic() - started >= timer)
        except AssertionError:
            if child.returncode != 0:
                sys.exit(f"a training process failed or hung (rc {child.returncode}):\n{processes.output(child)}")
            log(f"attempt {number} finished before its kill {attempt.what}")
            continue
        counts[attempt.kind] += 1
        how = "held" if is_held() else f"at {time.monotonic() - started:.1f} s"
        log(f"kill {number}, {attempt.what}, {how}: {state(run_dir)}; next: {action(next_command(run_dir, original))}")
    command = next_command(run_dir, original)
    if command is not None:
        done = processes.run(command, timeout=None)
        if done.returncode or not (run_dir / SUMMARY).is_file():
            sys.exit(f"the final `rosa {' '.join(command)}` failed:\n{done.stderr}")
        resumed = json.loads((run_dir / SUMMARY).read_text())["resumed_from_step"]
        log(f"finished by {action(command)}: " + (f"resumed from step {resumed}" if resumed is not None else "from step 0"))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="how long random kills go on; also sets their pace and, without --steps, the run's length")
    parser.add_argument("--steps", type=int, help="the run's optimizer steps (default: measured to fill --minutes)")
    parser.add_argument("--kills", type=lambda text: [Kill.parse(k) for k in text.split(",")],
                        help=f"exactly these kills, in order: comma-separated {', '.join(KINDS)}, mid-step@N, mid-save@N")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rosa-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("calibration", "clean", "interrupted"):  # this script's own runs, from an earlier soak
        shutil.rmtree(out / name, ignore_errors=True)

    if args.steps is None:
        per_step = seconds_per_step(out)
        steps = max(12, int(args.minutes * 60 / (per_step * RESTART_OVERHEAD)))
        print(f"{per_step:.2f} s per step: {steps} steps, killed for {args.minutes} minutes; runs in {out}")
    else:
        steps = args.steps
        print(f"{steps} steps, killed {len(args.kills) if args.kills else f'for {args.minutes} minutes'}; runs in {out}")
    # a kill every 10-60 s on a long soak (each resume costs a model load), proportionally sooner on a short one
    pace = (min(10.0, args.minutes * 6), min(60.0, args.minutes * 20))
    rng = random.Random(args.seed)
    started = time.monotonic()
    clean = processes.start(new_run(out / "clean", steps))
    kills = iter(args.kills) if args.kills else random_kills(args.minutes, rng)
    counts = interrupted_run(out / "interrupted", steps, kills, pace, rng)
    if clean.wait():
        sys.exit(f"the clean run failed:\n{processes.output(clean)}")

    same = {
        name: (out / "clean" / name).read_bytes() == (out / "interrupted" / name).read_bytes()
        for name in ("adapter/adapter_model.safetensors", "dls_history.json")
    }
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    print(f"{sum(counts.values())} kills ({kinds}); {steps} steps in {(time.monotonic() - started) / 60:.1f} minutes")
    for name, equal in same.items():
        print(f"{name}: {'bit-identical' if equal else 'DIFFERENT'}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
