"""The command-line pipeline as a user runs it: ``rosa train`` then ``rosa eval``, plus ``rosa data verify``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import DATA, STORIES, require
from rosa.cli import main as rosa_main

TASKS = ["boolq", "piqa", "gsm8k", "AddSub"]
LIMIT = 3


def rosa(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "rosa.cli", *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)
    return result


def test_train_then_eval_from_the_command_line_writes_every_file_with_the_right_counts(tmp_path):
    run = tmp_path / "run"
    trained = rosa("train", "--model", require(STORIES), "--data", "commonsense_mix", "--data-dir", require(DATA),
                   "--output-dir", run, "--max-steps", 4, "--max-samples", 64, "--batch-size", 8,
                   "--set", "dls.warmup=2", "--set", "dls.interval=2", "--set", "training.save_steps=2")
    assert trained.returncode == 0, trained.stderr
    assert "trained 4 steps" in trained.stdout
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "run.json", "adapter", "train_log.jsonl", "dls_history.json",
                                               "tensorboard", "checkpoint-4"}

    evaluated = rosa("eval", run, "--tasks", ",".join(TASKS), "--limit", LIMIT, "--decoding", "greedy", "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    out = run / "eval" / "greedy"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(p["task"], p["index"]) for p in predictions] == [(t, i) for t in TASKS for i in range(LIMIT)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["items"] == len(TASKS) * LIMIT and list(metrics["tasks"]) == TASKS
    for task in TASKS:
        correct = sum(p["correct"] for p in predictions if p["task"] == task)
        assert metrics["tasks"][task] == {"correct": correct, "total": LIMIT, "accuracy": correct / LIMIT}
    table = (out / "results.md").read_text()
    assert table in evaluated.stdout and all(f"| {task} | {LIMIT} |" in table for task in TASKS)
    assert json.loads((out / "eval_config.json").read_text())["identity"]["adapter"] == str((run / "adapter").resolve())


def test_eval_runs_on_a_base_model_alone_and_on_a_peft_adapter(tmp_path, capsys):
    args = ["--tasks", "boolq", "--limit", "2", "--decoding", "greedy", "--data-dir", str(require(DATA)), "--no-progress"]
    assert rosa_main(["eval", "--model", str(require(STORIES)), "--output", str(tmp_path / "base"), *args]) == 0
    lora_run = tmp_path / "lora"
    assert rosa_main(["train", "--model", str(STORIES), "--method", "lora", "--data", "math_mix", "--data-dir", str(DATA),
                      "--output-dir", str(lora_run), "--max-steps", "2", "--max-samples", "16", "--batch-size", "8",
                      "--set", "lora.r=2", "--set", "training.warmup_steps=0", "--set", "training.lr=0.05"]) == 0
    assert rosa_main(["eval", "--model", str(STORIES), "--adapter", str(lora_run / "adapter"),
                      "--output", str(tmp_path / "peft"), *args]) == 0
    base_lines = (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()
    peft_lines = (tmp_path / "peft" / "predictions.jsonl").read_text().splitlines()
    assert len(base_lines) == len(peft_lines) == 2
    assert [json.loads(x)["generation"] for x in base_lines] != [json.loads(x)["generation"] for x in peft_lines]


def test_eval_refuses_pickled_peft_adapters(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (adapter / "adapter_model.bin").write_bytes(b"not loaded")
    code = rosa_main(["eval", "--model", str(require(STORIES)), "--adapter", str(adapter), "--output", str(tmp_path / "o")])
    assert code == 2 and "a .bin file is a pickle" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_without_a_target_or_with_an_unknown_task_exits_2_and_writes_nothing(tmp_path, capsys):
    assert rosa_main(["eval"]) == 2
    assert "pass a run directory" in capsys.readouterr().err
    out = tmp_path / "o"
    assert rosa_main(["eval", "--model", str(STORIES), "--output", str(out), "--tasks", "boolq,nope", "--data-dir", str(DATA)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err and not out.exists()


def test_data_verify_passes_on_the_shared_data_and_fails_on_a_tampered_copy(tmp_path, capsys):
    assert rosa_main(["data", "verify", "--data-dir", str(require(DATA))]) == 0
    assert "20 ok, 0 mismatched, 4 missing" in capsys.readouterr().out
    copy = tmp_path / "data"
    (copy / "eval" / "boolq").mkdir(parents=True)
    shutil.copy(DATA / "eval" / "boolq" / "test.json", copy / "eval" / "boolq" / "test.json")
    with open(copy / "eval" / "boolq" / "test.json", "r+b") as handle:
        handle.seek(100)
        handle.write(b"X")
    assert rosa_main(["data", "verify", "--data-dir", str(copy)]) == 1
    assert "mismatch  eval/boolq/test.json" in capsys.readouterr().out
