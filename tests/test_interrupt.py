"""Ctrl-C: a real ``rosa`` child interrupted with SIGINT in each phase exits 130 with one line saying
what was kept and the command that continues, and no traceback.

Each child is held (``processes.Hold``) at a call that only that phase makes, and says so on disk:
the interrupt is sent once it is there, whatever the speed of the machine, and lands at a known point."""

from __future__ import annotations

import json
import signal

import processes
from conftest import DATA, STORIES, require
from rosa.cli import main as rosa_main

TRAIN = ["--model", str(STORIES), "--data", "commonsense_mix", "--data-dir", str(DATA), "--method", "rosa",
         "--max-samples", "32", "--batch-size", "2", "--micro-batch-size", "2", "--set", "training.cutoff_len=64",
         "--set", "training.save_steps=2", "--set", "dls.warmup=1", "--set", "dls.interval=1"]
EVAL = ["--tasks", "boolq,piqa", "--limit", "4", "--decoding", "greedy", "--batch-size", "1", "--data-dir", str(DATA), "--no-progress"]
SWEEP_EVAL = ["--tasks", "boolq", "--limit", "2", "--decoding", "greedy", "--eval-batch-size", "1", "--no-progress"]
# at transformers' from_pretrained, which rosa calls only from inside its model loading
LOADING = processes.Hold("transformers.AutoModelForCausalLM:from_pretrained")
# right after the trainer publishes its first checkpoint (checkpoint-2)
AFTER_CHECKPOINT = processes.Hold("rosa.train.trainer.publish_directory", after=True)


def interrupt_when_held(child):
    processes.kill_when(child, processes.held(child), sig=signal.SIGINT)
    return child.returncode, processes.errors(child)


def hints(stderr: str, command: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"rosa {command}: interrupted")]


def test_ctrl_c_during_training_keeps_the_newest_checkpoint_and_names_the_resume_command(tmp_path):
    run = tmp_path / "run"
    child = processes.start(["train", *TRAIN, "--max-steps", "4", "--output-dir", str(require(STORIES) and run)], hold=AFTER_CHECKPOINT)
    code, stderr = interrupt_when_held(child)

    assert code == 130 and "Traceback" not in stderr
    assert hints(stderr, "train") == [
        f"rosa train: interrupted; the newest complete checkpoint, checkpoint-2, is kept in {run}. "
        f"Continue with `rosa train --resume {run}`."
    ]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"] and not (run / "run.json").exists()

    assert rosa_main(["train", "--resume", str(run)]) == 0  # the command the line names
    summary = json.loads((run / "run.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2


def test_ctrl_c_during_evaluation_keeps_the_predictions_and_the_same_command_continues(tmp_path):
    out = tmp_path / "eval"
    command = ["eval", "--model", str(require(STORIES)), "--output", str(out), *EVAL]
    # held once piqa's first item is generated: boolq's 4 predictions are written by then
    child = processes.start(command, hold=processes.Hold("rosa.eval.runner.generate_responses", needle="guinea pig cage", after=True))
    code, stderr = interrupt_when_held(child)

    kept = (out / "predictions.jsonl").read_text().count("\n")
    assert code == 130 and "Traceback" not in stderr and 4 <= kept < 8
    assert hints(stderr, "eval") == [
        f"rosa eval: interrupted; the {kept} predictions made so far are kept in {out / 'predictions.jsonl'}. "
        "Rerun the same command to continue with the missing items."
    ]
    assert not (out / "metrics.json").exists()

    assert rosa_main(command) == 0
    items = [(p["task"], p["index"]) for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())]
    assert items == [(task, i) for task in ("boolq", "piqa") for i in range(4)]


def test_ctrl_c_during_a_sweep_keeps_the_finished_points(tmp_path):
    sweep = tmp_path / "sweep"
    command = ["sweep", *TRAIN, "--max-steps", "2", "--grid", "seed=1,2", *SWEEP_EVAL, "--output-dir", str(sweep)]
    # held after the second point's training, before its evaluation
    child = processes.start(command, hold=processes.Hold("rosa.sweep.runner.train", needle="seed-2", after=True))
    code, stderr = interrupt_when_held(child)

    assert code == 130 and "Traceback" not in stderr
    assert hints(stderr, "sweep") == [
        f"rosa sweep: interrupted; 1 of 2 points are finished (trained and evaluated) and kept in {sweep}. Rerun the "
        "same command to continue: finished points are skipped, an interrupted one resumes."
    ]
    assert (sweep / "runs" / "seed-1" / "eval" / "greedy" / "metrics.json").is_file()
    assert (sweep / "runs" / "seed-2" / "run.json").is_file() and not (sweep / "runs" / "seed-2" / "eval").exists()


def test_ctrl_c_while_loading_the_model_writes_nothing(tmp_path):
    out = tmp_path / "eval"
    child = processes.start(["eval", "--model", str(require(STORIES)), "--output", str(out), *EVAL], hold=LOADING)
    code, stderr = interrupt_when_held(child)

    assert code == 130 and "Traceback" not in stderr
    assert hints(stderr, "eval") == ["rosa eval: interrupted while loading the model; nothing was written. Rerun the same command."]
    assert not out.exists()

    run = tmp_path / "run"
    child = processes.start(["train", *TRAIN, "--max-steps", "4", "--output-dir", str(run)], hold=LOADING)
    code, stderr = interrupt_when_held(child)

    assert code == 130 and "Traceback" not in stderr
    assert hints(stderr, "train") == ["rosa train: interrupted while loading the model; nothing was written. Rerun the same command."]
    assert not run.exists()
