"""``training.val_set_size``: a seeded held-out split, its evaluation loss logged during training and at
the end, and the checkpoint of lowest evaluation loss reloaded as the final adapter (really reloaded:
upstream LLM-Adapters asks for it, but its adapter is never loaded back, LLM-Adapters issue #58)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, STORIES, require, stop_training_after
from rosa.cli import main
from rosa.errors import RoSAConfigError
from rosa.train.config import ExperimentConfig, TrainingSettings
from rosa.train.recipe import training_arguments, validation_split
from rosa.train.trainer import RoSATrainer
from test_resume import losses

STEPS = 8
# 40 records: 8 held out, 32 trained on (8 steps of 4). A learning rate of 0.3 overshoots after the
# first steps, so the evaluation loss rises after its minimum and the best checkpoint is not the last.
# Evaluated at every step, checkpointed every 2 steps, 2 checkpoints kept (the newest and the best).
DIVERGING = ["train", "--precision", "fp32", "--data", "commonsense_mix", "--max-steps", str(STEPS), "--max-samples", "40", "--batch-size", "4",
             "--lr", "0.3", "--set", "training.warmup_steps=0", "--set", "training.cutoff_len=64",
             "--set", "training.logging_steps=1", "--set", "training.val_set_size=8", "--set", "training.eval_steps=1",
             "--set", "training.save_steps=2", "--set", "training.save_total_limit=2",
             "--set", "dls.warmup=1", "--set", "dls.interval=1", "--report-to", "none"]


def rosa_train(run_dir, argv) -> int:
    return main([*argv, "--model", str(require(STORIES)), "--data-dir", str(require(DATA)), "--output-dir", str(run_dir)])


def eval_losses(run_dir) -> dict[int, float]:
    logged = map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())
    return {e["step"]: e["eval_loss"] for e in logged if "eval_loss" in e}


def adapter(path):
    return load_file(path / "adapter_model.safetensors")


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("validation") / "run"
    assert rosa_train(run_dir, DIVERGING) == 0
    return run_dir


def config(val_set_size: int, seed: int = 42) -> ExperimentConfig:
    return ExperimentConfig(model="m", data="d", output_dir="o", seed=seed, training=TrainingSettings(val_set_size=val_set_size))


def test_the_split_holds_out_exactly_val_set_size_records_drawn_by_the_seed_alone():
    records = [{"index": i, "labels": [-100, i]} for i in range(50)]
    train, held = validation_split(records, config(12))
    order = [e["index"] for e in train]
    assert len(held) == 12 and len(train) == 38 and sorted(order + [e["index"] for e in held]) == list(range(50))
    assert order == sorted(order), "the training records keep their order"
    assert validation_split(records, config(12)) == (train, held), "the same split on resume and on every process"
    assert validation_split(records, config(12, seed=7))[1] != held
    assert validation_split(records, config(0)) == (records, [])


def test_eval_steps_defaults_to_save_steps_and_without_a_split_nothing_is_evaluated(tmp_path):
    settings = TrainingSettings(val_set_size=4, save_steps=50, lr=1e-3)
    args = training_arguments(ExperimentConfig(model="m", data="d", output_dir="o", training=settings), tmp_path,
                              torch.float32, torch.device("cpu"))
    assert (args.eval_strategy, args.eval_steps, args.load_best_model_at_end, args.metric_for_best_model,
            args.greater_is_better, args.prediction_loss_only) == ("steps", 50, True, "eval_loss", False, True)
    assert training_arguments(ExperimentConfig(model="m", data="d", output_dir="o", training=TrainingSettings(lr=1e-3)),
                              tmp_path, torch.float32, torch.device("cpu")).eval_strategy == "no"


def test_the_loss_is_evaluated_at_every_checkpoint_and_at_the_last_step_and_reaches_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["train", "--data", "commonsense_mix", "--max-steps", "4", "--max-samples", "20", "--batch-size", "4",
            "--set", "training.cutoff_len=64", "--set", "training.val_set_size=4", "--set", "training.save_steps=3",
            "--set", "dls.warmup=1", "--set", "dls.interval=1"]
    assert rosa_train(tmp_path / "run", argv) == 0
    assert sorted(eval_losses(tmp_path / "run")) == [3, 4]  # eval_steps = save_steps = 3, and the last step
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("eval/loss")] == \
        [(step, round(loss, 5)) for step, loss in sorted(eval_losses(tmp_path / "run").items())]
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["examples"] == 16 and summary["validation"]["examples"] == 4


def test_the_final_adapter_is_the_checkpoint_of_lowest_eval_loss_not_the_last(diverging):
    logged = eval_losses(diverging)
    assert sorted(logged) == list(range(1, STEPS + 1)), "eval_steps=1: evaluated at every step"
    checkpointed = {step: loss for step, loss in logged.items() if step % 2 == 0}
    best = min(checkpointed, key=checkpointed.get)
    assert best != STEPS and checkpointed[best] < logged[STEPS], "premise: the loss rose after its minimum"
    # premise: step 1 is the lowest of all, but no checkpoint holds it, so it cannot become the adapter
    assert min(logged, key=logged.get) == 1 and best == 2

    # save_total_limit=2 rotated checkpoint-4 and -6 out, never the best one
    assert sorted(p.name for p in diverging.glob("checkpoint-*")) == [f"checkpoint-{best}", f"checkpoint-{STEPS}"]
    final, last = adapter(diverging / "adapter"), adapter(diverging / f"checkpoint-{STEPS}")
    assert same(final, adapter(diverging / f"checkpoint-{best}"))
    assert final.keys() == last.keys() and not same(final, last)
    assert (diverging / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (diverging / f"checkpoint-{best}" / "adapter_model.safetensors").read_bytes()

    summary = json.loads((diverging / "run.json").read_text())
    assert summary["examples"] == 32 and summary["steps"] == STEPS
    assert summary["validation"] == {"examples": 8, "best_step": best, "best_eval_loss": logged[best],
                                     "last_step": STEPS, "last_eval_loss": logged[STEPS]}
    state = json.loads((diverging / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(diverging / f"checkpoint-{best}"), "named where it is published"
    # DLS ran alongside: its state in every checkpoint, one selection per step
    assert all((p / "dls_state.json").is_file() for p in diverging.glob("checkpoint-*"))
    assert len(json.loads((diverging / "dls_history.json").read_text())["history"]) == STEPS


def test_a_peft_lora_adapter_is_reloaded_too_and_save_total_limit_1_keeps_only_the_best(tmp_path, monkeypatch):
    """transformers reloads a PeftModel's best adapter with ``load_adapter``; a V-shaped evaluation loss
    (lowest at step 4) makes the premise independent of how LoRA happens to train."""
    original = RoSATrainer.evaluation_loop

    def v_shaped(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        output.metrics["eval_loss"] = float(abs(self.state.global_step - 4))
        return output

    last = {}  # the adapter of the last step, which transformers deletes with save_total_limit=1
    load_best = RoSATrainer._load_best_model

    def recording(self):
        last.update({k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(self.model).items()})
        load_best(self)

    monkeypatch.setattr(RoSATrainer, "evaluation_loop", v_shaped)
    monkeypatch.setattr(RoSATrainer, "_load_best_model", recording)
    argv = ["train", "--method", "lora", "--set", "lora.r=2", "--data", "commonsense_mix", "--max-steps", "6",
            "--max-samples", "28", "--batch-size", "4", "--set", "training.cutoff_len=64", "--set", "training.val_set_size=4",
            "--set", "training.save_steps=2", "--set", "training.save_total_limit=1", "--report-to", "none"]
    assert rosa_train(tmp_path / "run", argv) == 0
    run = tmp_path / "run"
    assert eval_losses(run) == {2: 2.0, 4: 0.0, 6: 2.0}
    # during training the best and the newest are kept; at the end transformers keeps only the best
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4"]
    final = adapter(run / "adapter")
    assert same(final, adapter(run / "checkpoint-4")) and last.keys() == final.keys() and not same(final, last)
    assert json.loads((run / "run.json").read_text())["validation"] == {
        "examples": 4, "best_step": 4, "best_eval_loss": 0.0, "last_step": 6, "last_eval_loss": 2.0}


@pytest.mark.parametrize("killed_at", ["step 5", "final adapter"])
def test_a_resumed_run_with_validation_ends_exactly_like_the_uninterrupted_one(tmp_path, monkeypatch, diverging, killed_at):
    run = tmp_path / "run"
    if killed_at == "step 5":  # after checkpoint-4; the best one, checkpoint-2, is kept beside it
        stop_training_after(monkeypatch, 4)
        with pytest.raises(RuntimeError, match="killed"):
            rosa_train(run, DIVERGING)
        resumed_from = 4
    else:  # resumed from the last checkpoint, the best one is reloaded without training a step
        def killed(*args, **kwargs):
            raise RuntimeError("killed")

        monkeypatch.setattr("rosa.train.recipe._save_final_adapter", killed)
        assert rosa_train(run, DIVERGING) == 2
        resumed_from = STEPS
    monkeypatch.undo()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", f"checkpoint-{resumed_from}"]
    assert not (run / "adapter").exists()
    assert main(["train", "--resume", str(run)]) == 0

    weights = "adapter/adapter_model.safetensors"
    assert (run / weights).read_bytes() == (diverging / weights).read_bytes()
    assert eval_losses(run) == eval_losses(diverging) and losses(run) == losses(diverging)
    assert (run / "dls_history.json").read_text() == (diverging / "dls_history.json").read_text()
    summary, expected = (json.loads((d / "run.json").read_text()) for d in (run, diverging))
    assert summary["validation"] == expected["validation"] and summary["resumed_from_step"] == resumed_from


@pytest.mark.parametrize("case", ["max-samples", "data", "eval-steps"])
def test_a_split_that_leaves_nothing_to_train_on_is_refused_before_anything_is_written(tmp_path, capsys, case):
    records = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}", "answer": f"{i}"} for i in range(5)]
    (tmp_path / "five.json").write_text(json.dumps(records))
    argv, message = {
        "max-samples": (["--data", "commonsense_mix", "--max-samples", "16", "--set", "training.val_set_size=16"],
                        "training.val_set_size (16) must be smaller than the number of records (16, training.max_samples): "
                        "no record would be left to train on. Lower training.val_set_size"),
        "data": (["--data", str(tmp_path / "five.json"), "--set", "training.val_set_size=5"],
                 f"training.val_set_size (5) must be smaller than the number of records (5, --data {tmp_path / 'five.json'})"),
        "eval-steps": (["--data", "commonsense_mix", "--set", "training.val_set_size=4", "--set", "training.eval_steps=3"],
                       "training.save_steps (200) must be a multiple of training.eval_steps (3)"),
    }[case]
    assert rosa_train(tmp_path / "run", ["train", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_held_out_examples_without_a_loss_token_are_not_evaluated():
    """With the prompt masked, a response the cutoff removed leaves no loss token: evaluating it would
    make the evaluation loss NaN (0/0) and no checkpoint could ever be best."""
    kept = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    emptied = {"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}
    examples = [kept, emptied] * 10
    training, evaluated = validation_split(examples, config(6))
    assert len(training) == 14 and evaluated and all(e is kept for e in evaluated)
    with pytest.raises(RoSAConfigError, match="none of the 6 held-out examples keeps a token"):
        validation_split([emptied] * 20, config(6))
