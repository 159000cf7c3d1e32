"""Soak test: a long RoSA run killed with SIGKILL again and again, resumed each time, must end with
exactly the weights and DLS history of one clean run.

    python tests/soak_resume.py --minutes 30 [--out DIR] [--seed 0]

The clean reference run trains beside the interrupted one (one thread each); the number of steps
is chosen so that the interrupted run lasts about ``--minutes``. Kills land every 10-60 s: half of
them while a step runs, half the moment a checkpoint starts being written. Exit status 0 when the two
runs are bit-identical, 1 otherwise. Kept out of the default suite for its length;
``tests/test_soak.py`` runs the same script for a few seconds so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import processes
from conftest import DATA, STORIES

SETTINGS = ["--model", str(STORIES), "--data", "commonsense_mix", "--data-dir", str(DATA), "--method", "rosa",
            "--max-samples", "400", "--batch-size", "8", "--micro-batch-size", "4",
            "--set", "training.cutoff_len=256", "--set", "training.save_steps=5", "--set", "training.logging_steps=1",
            "--set", "training.save_total_limit=2", "--set", "training.lr=0.01",
            "--set", "dls.warmup=10", "--set", "dls.interval=10", "--set", "dls.mode=freeze"]
RESTART_OVERHEAD = 1.5  # each resume reloads the model and replays a few steps: budget half again


def seconds_per_step(out: Path) -> float:
    done = processes.run(["train", *SETTINGS, "--max-steps", "6", "--output-dir", str(out / "calibration")])
    if done.returncode:
        sys.exit(f"calibration run failed:\n{done.stderr}")
    return json.loads((out / "calibration" / "run.json").read_text())["train_runtime_s"] / 6


def saving_since(run_dir: Path, moment: float) -> bool:
    """Whether a checkpoint is being written into a staging directory created after ``moment``
    (older ones are leftovers of earlier kills, which the next resume removes)."""
    for staging in run_dir.glob(".checkpoint-*.partial"):
        try:
            if staging.stat().st_mtime > moment:
                return True
        except FileNotFoundError:  # published or removed between the listing and the stat
            pass
    return False


def interrupted_run(run_dir: Path, steps: int, minutes: float, rng: random.Random) -> dict[str, int]:
    """Kill and resume until the time is up, then let the last resume finish."""
    counts = {"kills mid-step": 0, "kills mid-save": 0}
    deadline = time.monotonic() + minutes * 60
    # a kill every 10-60 s on a long soak (each resume costs a model load), proportionally sooner on a short one
    shortest, longest = min(10.0, minutes * 6), min(60.0, minutes * 20)
    first = True
    while time.monotonic() < deadline and not (run_dir / "run.json").exists():
        argv = (["train", *SETTINGS, "--max-steps", str(steps), "--output-dir", str(run_dir), "--overwrite"] if first
                else ["train", "--resume", str(run_dir)])
        child = processes.start(argv)
        kill_after = time.time() + rng.uniform(shortest, longest)
        if rng.random() < 0.5:
            condition, kind = (lambda: time.time() > kill_after), "kills mid-step"
        else:  # the first checkpoint save that starts after that moment
            condition, kind = (lambda: time.time() > kill_after and saving_since(run_dir, kill_after)), "kills mid-save"
        try:
            processes.kill_when(child, condition, timeout=min(60.0, max(1.0, deadline - time.monotonic())))
            counts[kind] += 1
        except AssertionError:  # the run finished, or no save was seen in time and it was killed anyway
            if child.returncode not in (0, -9):
                sys.exit(f"a training process failed:\n{processes.output(child)}")
            counts["kills mid-step"] += child.returncode == -9
        first = not (run_dir / "config.yaml").exists()  # killed before the run existed: start it again
    if not (run_dir / "run.json").exists():
        done = processes.run(["train", "--resume", str(run_dir)], timeout=None)
        if done.returncode:
            sys.exit(f"the final resume failed:\n{done.stderr}")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rosa-soak-"))
    out.mkdir(parents=True, exist_ok=True)

    per_step = seconds_per_step(out)
    steps = max(12, int(args.minutes * 60 / (per_step * RESTART_OVERHEAD)))
    print(f"{per_step:.2f} s per step: {steps} steps, killed for {args.minutes} minutes; runs in {out}")
    started = time.monotonic()
    clean = processes.start(["train", *SETTINGS, "--max-steps", str(steps), "--output-dir", str(out / "clean")])
    counts = interrupted_run(out / "interrupted", steps, args.minutes, random.Random(args.seed))
    if clean.wait():
        sys.exit(f"the clean run failed:\n{processes.output(clean)}")

    same = {
        name: (out / "clean" / name).read_bytes() == (out / "interrupted" / name).read_bytes()
        for name in ("adapter/adapter_model.safetensors", "dls_history.json")
    }
    kills = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    print(f"{kills}; {steps} steps in {(time.monotonic() - started) / 60:.1f} minutes")
    for name, equal in same.items():
        print(f"{name}: {'bit-identical' if equal else 'DIFFERENT'}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
