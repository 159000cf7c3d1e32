"""The command-line pipeline as a user runs it: ``rosa train`` then ``rosa eval``, plus ``rosa data verify``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from conftest import DATA, STORIES, require
from processes import HANG_GUARD
from rosa.cli import main as rosa_main
from rosa.eval.targets import adapter_fingerprint

TASKS = ["boolq", "piqa", "gsm8k", "AddSub"]
LIMIT = 3


def rosa(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "rosa.cli", *map(str, args)], capture_output=True, text=True, timeout=HANG_GUARD, cwd=cwd)
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
    assert json.loads((out / "eval_config.json").read_text())["identity"]["adapter"] == adapter_fingerprint(run / "adapter")


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


# --- a moved run directory continues its own evaluation -------------------------------------------

EVAL = ["--tasks", "boolq,piqa", "--decoding", "greedy", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert rosa_main(["train", "--model", str(require(STORIES)), "--data", "commonsense_mix", "--data-dir", str(require(DATA)),
                      "--output-dir", str(run), "--max-steps", "2", "--max-samples", "16", "--batch-size", "4",
                      "--set", "training.cutoff_len=64"]) == 0
    return run


@pytest.fixture
def trained(tmp_path, finished_run):
    """A finished run directory of this test's own, not evaluated yet."""
    return shutil.copytree(finished_run, tmp_path / "old" / "run")


@pytest.fixture
def generated(monkeypatch):
    """The number of prompts each evaluation generates answers for."""
    import rosa.eval.runner

    counts, original = [], rosa.eval.runner.generate_responses
    monkeypatch.setattr(rosa.eval.runner, "generate_responses", lambda model, tokenizer, prompts, *rest: counts.append(len(prompts)) or original(model, tokenizer, prompts, *rest))
    return counts


def predictions(eval_dir):
    return [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]


def test_a_moved_run_directory_extends_its_evaluation_instead_of_refusing_or_restarting(tmp_path, trained, generated):
    assert rosa_main(["eval", str(trained), *EVAL, "--limit", "2"]) == 0
    first = predictions(trained / "eval" / "greedy")
    config = (trained / "eval" / "greedy" / "eval_config.json").read_text()
    moved = tmp_path / "new" / "place"
    moved.parent.mkdir()
    shutil.move(trained, moved)
    generated.clear()

    assert rosa_main(["eval", str(moved), *EVAL, "--limit", "4"]) == 0
    assert sum(generated) == 4, "only items 2 and 3 of each task are generated"
    out = moved / "eval" / "greedy"
    assert (out / "eval_config.json").read_text() == config
    extended = predictions(out)
    assert [(p["task"], p["index"]) for p in extended] == [(t, i) for t in ("boolq", "piqa") for i in range(4)]
    assert [p for p in extended if p["index"] < 2] == first
    assert json.loads((out / "metrics.json").read_text())["items"] == 8

    copy = shutil.copytree(moved, tmp_path / "copy")  # a copy continues too: nothing left to generate
    generated.clear()
    assert rosa_main(["eval", str(copy), *EVAL, "--limit", "4"]) == 0
    assert generated == [] and predictions(copy / "eval" / "greedy") == extended


def test_an_evaluation_recorded_with_an_absolute_adapter_path_continues_and_another_adapter_is_refused(tmp_path, trained, generated, capsys):
    assert rosa_main(["eval", str(trained), *EVAL, "--limit", "2"]) == 0
    config_file = trained / "eval" / "greedy" / "eval_config.json"
    settings = json.loads(config_file.read_text())
    fingerprint = settings["identity"]["adapter"]
    assert fingerprint == adapter_fingerprint(trained / "adapter") and fingerprint.startswith("sha256:") and len(fingerprint) == 71
    # as rosa recorded it before identities were portable
    config_file.write_text(json.dumps({**settings, "identity": {**settings["identity"], "adapter": str((trained / "adapter").resolve())}}))
    generated.clear()
    assert rosa_main(["eval", str(trained), *EVAL, "--limit", "3"]) == 0
    assert sum(generated) == 2 and json.loads(config_file.read_text()) == settings

    other = shutil.copytree(trained / "adapter", tmp_path / "other-adapter")
    weights = load_file(other / "adapter_model.safetensors")
    other_weights = {name: tensor if name.endswith("low_frequencies") else tensor + 1 for name, tensor in weights.items()}
    save_file(other_weights, other / "adapter_model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert rosa_main(["eval", "--model", str(STORIES), "--adapter", str(other), "--output", str(config_file.parent), *EVAL, "--limit", "3"]) == 2
    assert "holds predictions made with other settings (identity differ" in capsys.readouterr().err
