"""Crash and resume: SIGKILL at any moment (mid-run, mid-checkpoint, mid-adapter, mid-evaluation)
loses nothing, and a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import load_file

import processes
from conftest import DATA, STORIES, require, stop_training_after
from rosa.cli import main as rosa_main
from rosa.loading import load_adapter, load_base_model
from rosa.train.trainer import RoSATrainer

STEPS = 12
TRAIN = ["train", "--model", str(STORIES), "--data", "commonsense_mix", "--data-dir", str(DATA), "--method", "rosa",
         "--max-steps", str(STEPS), "--max-samples", "96", "--batch-size", "4", "--micro-batch-size", "2",
         "--set", "training.cutoff_len=128", "--set", "training.save_steps=3", "--set", "training.logging_steps=1",
         "--set", "training.warmup_steps=2", "--set", "training.lr=0.01", "--set", "dls.warmup=2", "--set", "dls.interval=2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, in a child process like the interrupted ones."""
    require(STORIES), require(DATA)
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = processes.run([*TRAIN, "--output-dir", str(run_dir)])
    assert done.returncode == 0, done.stderr
    return run_dir


def losses(run_dir):
    return {e["step"]: (e["loss"], e["grad_norm"]) for e in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines()) if "loss" in e}


def assert_same_result(run_dir, reference):
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == (reference / "adapter" / "adapter_model.safetensors").read_bytes()
    history, expected = (json.loads((d / "dls_history.json").read_text()) for d in (run_dir, reference))
    assert history == expected and len(expected["history"]) == 6  # scored at steps 1, 3, ..., 11
    assert losses(run_dir) == losses(reference) and sorted(losses(reference)) == list(range(1, STEPS + 1))
    summary, expected = (json.loads((d / "run.json").read_text()) for d in (run_dir, reference))
    assert summary["steps"] == STEPS
    assert summary["train_loss"] == expected["train_loss"]  # from the log, which covers every step in both


MICRO_BATCHES = 2  # per optimizer step: --batch-size 4 / --micro-batch-size 2


def test_a_run_killed_mid_training_resumes_to_a_bit_identical_adapter_and_dls_history(tmp_path, reference):
    run_dir = tmp_path / "run"
    # held between the two micro-batches of step 7, whatever the machine's speed: checkpoint-6 is the newest
    mid_step_7 = processes.Hold("rosa.train.trainer.RoSATrainer:training_step", call=6 * MICRO_BATCHES + 2)
    child = processes.start([*TRAIN, "--output-dir", str(run_dir)], hold=mid_step_7)
    processes.kill_when(child, processes.held(child))
    assert not (run_dir / "run.json").exists() and not (run_dir / "adapter").exists()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]  # every 3 steps, kept

    resumed = processes.run(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run_dir / 'checkpoint-6'}" in resumed.stdout
    assert_same_result(run_dir, reference)
    assert json.loads((run_dir / "run.json").read_text())["resumed_from_step"] == 6


# (where the child is held: once the first such write has returned, what exists then, what must not exist yet)
SAVES = {
    # the Trainer's torch.save of the optimizer state (after its adapter and training_args.bin), before the scheduler's
    "checkpoint": (processes.Hold("torch.save", needle=".checkpoint-6.partial/checkpoint-6/optimizer.pt", after=True),
                   ".checkpoint-6.partial/checkpoint-6/optimizer.pt", "checkpoint-6"),
    # PEFT writes the adapter weights with safetensors' save_file, imported into peft.peft_model
    "final adapter": (processes.Hold("peft.peft_model.safe_save_file", needle=".adapter.partial", after=True),
                      ".adapter.partial/adapter_model.safetensors", "adapter"),
}


@pytest.mark.parametrize("where", SAVES)
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_complete_and_the_run_resumable(tmp_path, reference, where):
    hold, written, absent = SAVES[where]
    run_dir = tmp_path / "run"
    child = processes.start([*TRAIN, "--output-dir", str(run_dir)], hold=hold)
    processes.kill_when(child, processes.held(child))
    assert (run_dir / written).is_file(), "the kill landed inside the save"
    assert not (run_dir / absent).exists() and not (run_dir / "run.json").exists()

    newest = sorted((p for p in run_dir.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert newest.name == ("checkpoint-3" if where == "checkpoint" else f"checkpoint-{STEPS}")
    # the previous checkpoint is whole: its adapter and optimizer state load (without pickle)
    loaded = load_adapter(load_base_model(str(STORIES)), newest)
    saved = load_file(newest / "adapter_model.safetensors")
    state = peft.get_peft_model_state_dict(loaded)
    assert saved and state.keys() == saved.keys() and all(torch.equal(t.cpu(), saved[k]) for k, t in state.items())
    assert torch.load(newest / "optimizer.pt", weights_only=True)["state"]

    resumed = processes.run(["train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run_dir.glob(".*")), "leftovers of the interrupted save are cleaned up"
    assert_same_result(run_dir, reference)


def test_an_evaluation_killed_mid_run_resumes_without_lost_or_duplicated_items(tmp_path, reference):
    evaluate = ["eval", str(reference), "--tasks", "boolq,piqa", "--limit", "5", "--decoding", "greedy", "--batch-size", "1"]
    whole = processes.run([*evaluate, "--output", str(tmp_path / "whole"), "--no-progress"])
    assert whole.returncode == 0, whole.stderr

    predictions = tmp_path / "killed" / "predictions.jsonl"
    # held as it starts the 4th batch of one item: exactly 3 predictions are on disk, on any machine
    child = processes.start([*evaluate, "--output", str(tmp_path / "killed"), "--no-progress"],
                            hold=processes.Hold("rosa.eval.runner.generate_responses", call=4))
    processes.kill_when(child, processes.held(child))
    assert predictions.read_text().count("\n") == 3 and not (tmp_path / "killed" / "metrics.json").exists()

    resumed = processes.run([*evaluate, "--output", str(tmp_path / "killed"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    items = [(p["task"], p["index"]) for p in map(json.loads, predictions.read_text().splitlines())]
    assert len(items) == len(set(items)) == 10
    assert predictions.read_text() == (tmp_path / "whole" / "predictions.jsonl").read_text()
    assert (tmp_path / "killed" / "metrics.json").read_text() == (tmp_path / "whole" / "metrics.json").read_text()


def test_a_nan_loss_stops_training_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    original = RoSATrainer.compute_loss

    def diverging(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step >= 4 else loss

    monkeypatch.setattr(RoSATrainer, "compute_loss", diverging)
    run_dir = tmp_path / "run"
    assert rosa_main([*TRAIN, "--output-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "the loss became nan in optimizer step 5" in err and "lower learning rate" in err
    assert f"the last good checkpoint, {run_dir / 'checkpoint-3'}, is kept" in err
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (run_dir / "adapter").exists() and not (run_dir / "run.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--lr", "0.1"], "cannot be combined with training.lr"),
    (["--overwrite"], "cannot be combined with --overwrite"),
])
def test_resume_refuses_changed_settings(tmp_path, capsys, extra, message):
    assert rosa_main(["train", "--resume", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_resume_of_a_finished_run_or_of_a_non_run_is_refused_unchanged(tmp_path, reference, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    assert rosa_main(["train", "--resume", str(reference)]) == 2
    assert "already finished (run.json exists); nothing to resume" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before
    assert rosa_main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory (no config.yaml); nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["lora-dls", "pissa"])
def test_peft_methods_resume_to_the_same_adapter(tmp_path, monkeypatch, method):
    """PEFT adapters come back through the Trainer's own PeftModel path (safetensors)."""
    argv = ["train", "--model", str(STORIES), "--data", "commonsense_mix", "--data-dir", str(DATA), "--method", method,
            "--max-steps", "6", "--max-samples", "24", "--batch-size", "4", "--micro-batch-size", "2",
            "--set", "training.cutoff_len=96", "--set", "training.save_steps=2", "--set", "lora.r=2",
            "--set", "dls.warmup=1", "--set", "dls.interval=2"]
    assert rosa_main([*argv, "--output-dir", str(tmp_path / "whole")]) == 0
    stop_training_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="killed"):
        rosa_main([*argv, "--output-dir", str(tmp_path / "resumed")])
    monkeypatch.undo()
    assert rosa_main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    whole, resumed = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("whole", "resumed"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    if method == "lora-dls":
        assert (tmp_path / "whole" / "dls_history.json").read_text() == (tmp_path / "resumed" / "dls_history.json").read_text()
