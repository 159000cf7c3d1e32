"""Every row of the bad-input table in docs/reliability.md: a clear message naming the problem and
the fix, a non-zero exit, and nothing already on disk lost or changed."""

from __future__ import annotations

import errno
import hashlib
import re
import shutil

import pytest
import torch
import transformers as T

from conftest import DATA, REPO, STORIES, TINYSTORIES, require
from rosa.cli import main as rosa_main
from rosa.loading import load_for_inference
from rosa.train.trainer import RoSATrainer

DOC = REPO / "docs" / "reliability.md"
TRAIN = ["train", "--data", "commonsense_mix", "--max-steps", "4", "--max-samples", "16", "--batch-size", "2",
         "--micro-batch-size", "2", "--set", "training.cutoff_len=64", "--set", "training.save_steps=2"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A finished run (its adapter), a model without RoPE, and a model that ships its own code."""
    root = tmp_path_factory.mktemp("assets")
    assert rosa_main([*TRAIN, "--model", str(require(STORIES)), "--data-dir", str(require(DATA)), "--output-dir", str(root / "run")]) == 0
    T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=512)).save_pretrained(root / "gpt2")
    for tokenizer_file in [*STORIES.glob("tokenizer*"), *STORIES.glob("special_tokens_map.json")]:
        shutil.copy(tokenizer_file, root / "gpt2")
    return root


def train(tmp_path, *extra, model=STORIES):
    return [*TRAIN, "--model", str(model), "--data-dir", str(DATA), "--output-dir", str(tmp_path / "out"), *extra]


def evaluate(tmp_path, *extra):
    return ["eval", "--tasks", "boolq", "--limit", "2", "--output", str(tmp_path / "out"), *extra]


def write(path, text):
    path.write_text(text)
    return path


def truncated_adapter(tmp_path, assets):
    adapter = shutil.copytree(assets / "run" / "adapter", tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return adapter


def pickled_peft_adapter(tmp_path):
    adapter = tmp_path / "peft"
    adapter.mkdir()
    write(adapter / "adapter_config.json", '{"peft_type": "LORA", "base_model_name_or_path": "x", "r": 2, "target_modules": ["q_proj"]}')
    torch.save({}, adapter / "adapter_model.bin")
    return adapter


def existing_run(tmp_path):
    (tmp_path / "out").mkdir()
    write(tmp_path / "out" / "precious.txt", "results of last week")
    return []


# id -> (argv given tmp_path and assets, fragments the message must contain)
CASES = {
    "unknown-method": (lambda t, a: train(t, "--set", "method=foo"), ["unknown method 'foo'", "choose one of rosa, roae"]),
    "unknown-task": (lambda t, a: ["eval", "--model", str(STORIES), "--tasks", "nosuch", "--output", str(t / "out")],
                     ["unknown task 'nosuch'", "valid tasks are boolq"]),
    "r_low": (lambda t, a: train(t, "--set", "rosa.r_low=1.5"), ["r_low must be in (0, 1]", "got 1.5"]),
    "k_ratio": (lambda t, a: train(t, "--set", "dls.k_ratio=0"), ["k_ratio must be in (0, 1]", "got 0"]),
    "p_exploit": (lambda t, a: train(t, "--set", "dls.p_exploit=-0.1"), ["p_exploit must be a probability in [0, 1]"]),
    "rank-0": (lambda t, a: train(t, "--set", "rosa.rank=0"), ["rank must be a positive integer, got 0", "rank=8"]),
    "targets": (lambda t, a: train(t, "--set", "rosa.targets=[v]"), ["targets must be a non-empty subset of ('q', 'k')"]),
    "no-rope": (lambda t, a: train(t, model=a / "gpt2"), ["model type 'gpt2' has no rotary position embedding", "Use a RoPE model"]),
    "missing-model": (lambda t, a: train(t, model=t / "nowhere"), ["does not exist", "pass a local model directory or a hub id"]),
    "missing-data": (lambda t, a: train(t, "--data", str(t / "none.json")), ["none.json does not exist", "JSON file"]),
    "malformed-data": (lambda t, a: train(t, "--data", str(write(t / "bad.json", '[{"instruction": "x"'))),
                       ["bad.json is not valid JSON", "fix the file"]),
    "records-without-fields": (lambda t, a: train(t, "--data", str(write(t / "odd.json", '[{"question": "x"}]'))),
                               ["record 0 lacks fields", "LLM-Adapters format"]),
    "empty-dataset": (lambda t, a: train(t, "--data", str(write(t / "empty.json", "[]"))), ["contains no records"]),
    "foreign-adapter": (lambda t, a: evaluate(t, "--model", str(TINYSTORIES), "--adapter", str(a / "run" / "adapter")),
                        ["was made for another base model", "hidden_size: adapter 64 vs base 128", "Load it onto the base model"]),
    "truncated-safetensors": (lambda t, a: evaluate(t, "--model", str(STORIES), "--adapter", str(truncated_adapter(t, a))),
                              ["is not a readable safetensors file", "truncated or corrupted", "save the adapter again"]),
    "pickled-adapter": (lambda t, a: evaluate(t, "--model", str(STORIES), "--adapter", str(pickled_peft_adapter(t))),
                        ["has no adapter_model.safetensors", "a .bin file is a pickle"]),
    "existing-run-dir": (lambda t, a: train(t, *existing_run(t)), ["already exists and is not empty; nothing was changed", "--resume"]),
    "unwritable-output": (lambda t, a: [*train(t)[:-2], "--output-dir", "/sys/rosa-run"],
                          ["cannot write /sys/rosa-run: /sys is not writable", "Choose a writable --output-dir"]),
    "unwritable-eval-output": (lambda t, a: ["eval", "--model", str(STORIES), "--tasks", "boolq", "--output", "/sys/rosa-eval"],
                               ["is not writable", "Choose a writable --output"]),
    "resume-finished-run": (lambda t, a: ["train", "--resume", str(a / "run")], ["already finished", "nothing to resume"]),
    "resume-not-a-run": (lambda t, a: ["train", "--resume", str(t)], ["is not a run directory", "nothing to resume"]),
}


def snapshot(*roots):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for root in roots for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_with_a_message_and_nothing_on_disk_changes(case, tmp_path, assets, capsys):
    build, fragments = CASES[case]
    argv = build(tmp_path, assets)
    before = snapshot(tmp_path, assets)
    capsys.readouterr()
    assert rosa_main(argv) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err
    assert err.count(": error: ") == 1 and "Traceback" not in err
    assert snapshot(tmp_path, assets) == before


def full_disk(monkeypatch, where, writer):
    """Make the writes whose path contains ``where`` fail as a full disk does: rosa's adapter writer
    with ENOSPC, or torch.save (the Trainer's optimizer state) with the RuntimeError torch raises."""
    import rosa.model

    original_adapter, original_save = rosa.model.save_adapter, torch.save

    def save_adapter(directory, *args, **kwargs):
        if where in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return original_adapter(directory, *args, **kwargs)

    def save(obj, path, *args, **kwargs):
        if where in str(path) and str(path).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4352 vs 4240")
        return original_save(obj, path, *args, **kwargs)

    if writer == "adapter":
        monkeypatch.setattr(rosa.model, "save_adapter", save_adapter)
    else:
        monkeypatch.setattr(torch, "save", save)


# (path fragment that fails, which writer fails, what the message names, checkpoint that survives)
FULL_DISK = {
    "checkpoint adapter": ("checkpoint-4", "adapter", "No space left on device", "checkpoint-2"),
    "checkpoint optimizer": ("checkpoint-4", "torch", "unexpected pos", "checkpoint-2"),
    "final adapter": (".adapter.partial", "adapter", "No space left on device", "checkpoint-4"),
}


@pytest.mark.parametrize("case", FULL_DISK)
def test_a_full_disk_while_saving_keeps_the_last_checkpoint_and_the_run_resumes_once_space_is_free(tmp_path, monkeypatch, capsys, case):
    where, writer, reason, kept = FULL_DISK[case]
    full_disk(monkeypatch, where, writer)
    assert rosa_main(train(tmp_path)) == 2
    err = capsys.readouterr().err
    assert reason in err and f"rosa train --resume {tmp_path / 'out'}" in err and "Traceback" not in err
    assert f"the last complete checkpoint, {kept}, is intact" in err
    run = tmp_path / "out"
    assert sorted(p.name for p in run.glob("checkpoint-*"))[-1] == kept
    assert not list(run.glob(".*")) and not (run / "adapter").exists() and not (run / "run.json").exists()

    monkeypatch.undo()
    assert rosa_main(["train", "--resume", str(run)]) == 0
    assert (run / "run.json").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()


class Payload:
    """What a malicious checkpoint would carry: unpickling it runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_pickled_code_is_refused_without_running_it(tmp_path, capsys, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise RuntimeError("stopped after checkpoint-2")

    original = RoSATrainer.training_step
    monkeypatch.setattr(RoSATrainer, "training_step", lambda self, *a, **k: interrupted(self) if self.state.global_step >= 3 else original(self, *a, **k))
    with pytest.raises(RuntimeError, match="stopped after checkpoint-2"):
        rosa_main(train(tmp_path))
    monkeypatch.undo()
    marker = tmp_path / "code-ran"
    torch.save({"state": Payload(marker), "param_groups": []}, tmp_path / "out" / "checkpoint-2" / "optimizer.pt")
    capsys.readouterr()

    assert rosa_main(["train", "--resume", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not plain tensor data" in err and "weights_only=True" in err and "Delete" in err
    assert not marker.exists()


def test_a_model_that_ships_its_own_code_loads_without_running_it_unless_asked(tmp_path):
    model_dir = shutil.copytree(STORIES, tmp_path / "model")
    config = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text(config.replace("{", '{"auto_map": {"AutoModelForCausalLM": "modeling_custom.Custom"},', 1))
    write(model_dir / "modeling_custom.py", f"open({str(tmp_path / 'code-ran')!r}, 'w')\nfrom transformers import LlamaForCausalLM as Custom\n")
    model, _ = load_for_inference(str(model_dir))
    assert type(model).__name__ == "LlamaForCausalLM" and not (tmp_path / "code-ran").exists()


def test_the_documented_table_lists_exactly_the_tested_cases():
    rows = re.findall(r"^\| `([a-z0-9_-]+)` \|", DOC.read_text(), flags=re.MULTILINE)
    assert len(rows) == len(set(rows))
    assert set(rows) == set(CASES) | {"full-disk", "pickled-checkpoint", "remote-code"}
