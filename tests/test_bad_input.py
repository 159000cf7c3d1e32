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

from conftest import DATA, REPO, STORIES, TINYSTORIES, require, stop_training_after
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
    T.GPTJForCausalLM(T.GPTJConfig(n_layer=2, n_embd=32, n_head=2, rotary_dim=8, vocab_size=512)).save_pretrained(root / "gptj")
    for tokenizer_file in [*STORIES.glob("tokenizer*"), *STORIES.glob("special_tokens_map.json")]:
        shutil.copy(tokenizer_file, root / "gpt2")
        shutil.copy(tokenizer_file, root / "gptj")
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
    "rope-q-k-apart": (lambda t, a: train(t, model=a / "gptj"), ["GPTJAttention", "rotates the query and the key in separate calls"]),
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
    """Make the writes whose path contains ``where`` fail as a full disk does: PEFT's adapter weights
    writer (safetensors' save_file, as peft.peft_model calls it) with ENOSPC, or torch.save (the
    Trainer's optimizer state) with the RuntimeError torch raises."""
    import peft.peft_model

    original_adapter, original_save = peft.peft_model.safe_save_file, torch.save

    def safe_save_file(tensors, filename, *args, **kwargs):
        if where in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return original_adapter(tensors, filename, *args, **kwargs)

    def save(obj, path, *args, **kwargs):
        if where in str(path) and str(path).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4352 vs 4240")
        return original_save(obj, path, *args, **kwargs)

    if writer == "adapter":
        monkeypatch.setattr(peft.peft_model, "safe_save_file", safe_save_file)
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
    stop_training_after(monkeypatch, 3, "stopped after checkpoint-2")
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


# --- Run directories: every input checked before the directory is touched, --overwrite that keeps the
# previous run until the new one has something to keep, and one writer per directory (rosa.locking). ---

import fcntl  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import processes  # noqa: E402
from rosa import RoSAConfig, RoSAConfigError, get_rosa_model  # noqa: E402
from rosa.locking import DirectoryLockedError, directory_lock, lock_path  # noqa: E402
from rosa.roae.attention import RoSALayer  # noqa: E402
from rosa.train.recipe import _logged_mean_loss  # noqa: E402

HELD_LOCKS: list[int] = []
HOLDER_PID = 4242


def held(directory, shared=False):
    """Hold ``directory``'s lock as another rosa process would (flock on an open file of its own)."""
    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    if not shared:
        os.write(fd, f"{HOLDER_PID}\n".encode())
    HELD_LOCKS.append(fd)
    return directory


@pytest.fixture(autouse=True)
def release_held_locks():
    yield
    while HELD_LOCKS:
        os.close(HELD_LOCKS.pop())


def locked(tmp_path):
    """tmp_path, with tmp_path/out held by another process."""
    held(tmp_path / "out")
    return tmp_path


def several_gguf(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        write(tmp_path / name, "GGUF")
    return tmp_path


def evaluate_run_in_training(tmp_path, assets):
    """``rosa eval`` of a finished run that another process is writing (resuming or replacing it)."""
    finished_run(tmp_path, assets)
    return ["eval", str(locked(tmp_path) / "out"), "--tasks", "boolq", "--limit", "2"]


def finished_run(tmp_path, assets):
    """A finished run at tmp_path/out, for --overwrite to replace (the snapshot proves it byte-identical after)."""
    shutil.copytree(assets / "run", tmp_path / "out")
    return ["--overwrite"]


def sweep(tmp_path):
    return ["sweep", "--model", str(STORIES), "--data", "commonsense_mix", "--data-dir", str(DATA), "--max-steps", "1",
            "--grid", "seed=1,2", "--tasks", "boolq", "--limit", "1", "--output-dir", str(tmp_path / "out")]


IN_USE = f"is in use by another rosa process (pid {HOLDER_PID})"
CASES.update({
    "norm-names": (lambda t, a: train(t, "--set", "dls.norm_names=[ln_1]"), ["norm(s) ['ln_1'] not found in LlamaDecoderLayer", "norm_names"]),
    "duplicate-layers": (lambda t, a: train(t, "--set", "rosa.layers=[1,1]"), ["layers has duplicates", "list each layer once, e.g. layers=[1]"]),
    "cutoff-len": (lambda t, a: train(t, "--set", "training.cutoff_len=1"), ["training.cutoff_len must be at least 2, got 1"]),
    "cutoff-len-prompt": (lambda t, a: train(t, "--set", "training.train_on_inputs=false"),
                          ["training.cutoff_len 64 is too small", "178 tokens for the prompt template", "at least 179"]),
    "max-steps-0": (lambda t, a: train(t, "--max-steps", "0"), ["training.max_steps must be a positive integer, got 0"]),
    "max-steps-negative": (lambda t, a: train(t, "--max-steps", "-5"), ["training.max_steps must be a positive integer, got -5"]),
    "epochs-0": (lambda t, a: train(t, "--epochs", "0"), ["training.epochs must be a positive number, got 0"]),
    "overwrite-bad-input": (lambda t, a: train(t, *finished_run(t, a), "--set", "dls.norm_names=[ln_1]"), ["norm(s) ['ln_1'] not found"]),
    "locked-run-dir": (lambda t, a: train(locked(t), "--overwrite"),
                       ["error: run directory /", f"/out {IN_USE}", "wait for it to finish, or choose another --output-dir"]),
    "locked-eval-output": (lambda t, a: evaluate(locked(t), "--model", str(STORIES)),
                           ["error: evaluation directory /", f"/out {IN_USE}", "choose another --output"]),
    "locked-sweep-dir": (lambda t, a: sweep(locked(t)), ["error: sweep directory /", f"/out {IN_USE}", "choose another --output-dir"]),
    "gguf-unreadable": (lambda t, a: train(t, model=write(t / "m.gguf", "not a gguf file")),
                        ["cannot read", "m.gguf as a GGUF model", "does not start with the GGUF magic bytes"]),
    "gguf-several": (lambda t, a: train(t, model=several_gguf(t)), ["holds several GGUF files (a.gguf, b.gguf); pass one of them"]),
    "locked-run-eval": (lambda t, a: evaluate_run_in_training(t, a), ["error: run directory /", f"/out {IN_USE}", "wait for its training to finish"]),
})


def test_duplicate_layers_are_refused_by_the_config_before_any_module_is_added(tmp_path):
    base = T.LlamaForCausalLM.from_pretrained(str(STORIES))
    with pytest.raises(RoSAConfigError, match=r"layers has duplicates: \[1, 1\] names layer\(s\) \[1\] more than once"):
        get_rosa_model(base, RoSAConfig(layers=(1, 1)))
    assert not any(isinstance(module, RoSALayer) for module in base.modules())
    assert not any("rosa_roae" in name for name, _ in base.named_parameters()) and not hasattr(base, "peft_config")


def test_run_json_is_strict_json_and_a_run_without_logged_loss_reports_none(assets):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads((assets / "run" / "run.json").read_text(), parse_constant=refuse)
    assert summary["steps"] == 4 and isinstance(summary["train_loss"], float)
    assert _logged_mean_loss([]) is None


def test_a_replacement_that_fails_after_its_first_checkpoint_keeps_the_previous_run_aside(tmp_path, assets, monkeypatch, capsys):
    """A NaN loss at step 3, after checkpoint-2: the new run keeps its checkpoint (for --resume), and the
    finished run it was replacing is not deleted for a run that may never finish: it waits aside, byte
    for byte, and the message says where."""
    previous = snapshot(assets / "run")
    original, calls = RoSATrainer.compute_loss, []

    def nan_from_step_3(self, *args, **kwargs):
        calls.append(None)  # one micro-batch per optimizer step here
        return original(self, *args, **kwargs) * (float("nan") if len(calls) >= 3 else 1.0)

    monkeypatch.setattr(RoSATrainer, "compute_loss", nan_from_step_3)
    capsys.readouterr()
    assert rosa_main(train(tmp_path, *finished_run(tmp_path, assets))) == 2
    err = capsys.readouterr().err
    aside = tmp_path / ".out.replaced"
    assert err.count(": error: ") == 1 and "the loss became nan in optimizer step 3" in err
    assert f"The previous run is kept in {aside} until a new run in {tmp_path / 'out'} finishes" in err
    assert {p.relative_to(aside): h for p, h in snapshot(aside).items()} == {p.relative_to(assets / "run"): h for p, h in previous.items()}
    assert (tmp_path / "out" / "checkpoint-2").is_dir() and not (tmp_path / "out" / "run.json").exists()


def test_a_model_that_fails_its_test_forward_is_refused_before_the_previous_run_is_touched(tmp_path, assets, monkeypatch, capsys):
    """A model that cannot run with its adapter (say, an attention layout RoAE cannot handle) fails the
    one forward pass made before the run directory is touched: exit 2 with one line, and the run that
    --overwrite would replace is unchanged."""
    def broken(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x64 and 96x64)")

    monkeypatch.setattr(T.models.llama.modeling_llama.LlamaMLP, "forward", broken)
    argv = train(tmp_path, *finished_run(tmp_path, assets))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert rosa_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 1 and "failed a test forward pass" in err and "mat1 and mat2 shapes" in err
    assert snapshot(tmp_path) == before


def nan_from_the_first_step(monkeypatch):
    original = RoSATrainer.compute_loss
    monkeypatch.setattr(RoSATrainer, "compute_loss", lambda self, *a, **k: original(self, *a, **k) * float("nan"))


@pytest.mark.parametrize("start", ["overwrite", "new"])
def test_a_run_that_fails_before_its_first_checkpoint_is_undone(tmp_path, assets, monkeypatch, capsys, start):
    """Failing after the directory was written (here a NaN loss at step 1), a replacement moves the
    previous run back byte for byte, and a new run leaves no directory, so the corrected command runs."""
    extra = finished_run(tmp_path, assets) if start == "overwrite" else []
    before = snapshot(tmp_path)
    nan_from_the_first_step(monkeypatch)
    capsys.readouterr()
    assert rosa_main(train(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 1 and "the loss became nan in optimizer step 1" in err
    assert ("moved back, unchanged" if start == "overwrite" else "Nothing of this run was kept") in err
    assert snapshot(tmp_path) == before  # no .out.replaced, no lock file, nothing of the failed run


def wait_for(condition, process, timeout=processes.HANG_GUARD):
    """Poll the disk until ``condition()`` holds, failing if ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the first writer ended early (rc {process.returncode}):\n{processes.output(process)}"
        assert time.monotonic() < deadline, "the first writer never got that far"
        time.sleep(0.05)


def test_a_second_writer_is_refused_while_the_first_holds_the_run_and_a_killed_one_can_be_resumed(tmp_path, assets, capsys):
    """Two `rosa train --overwrite` into one directory: the second is refused while the first runs (it
    holds the lock from before its checks; its new config.yaml and the previous run moved aside show it
    got past them). SIGKILL releases the lock, and --resume finishes the new run."""
    run = tmp_path / "out"
    argv = train(tmp_path, *finished_run(tmp_path, assets))
    first = processes.start(argv, hold=processes.Hold("rosa.train.trainer.RoSATrainer:training_step"))
    try:
        wait_for(processes.held(first), first)
        assert (run / "config.yaml").is_file() and (tmp_path / ".out.replaced").is_dir()
        capsys.readouterr()
        assert rosa_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count(": error: ") == 1 and "Traceback" not in err
        assert f"run directory {run} is in use by another rosa process (pid {first.pid}); wait for it to finish" in err
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / ".out.replaced" / "run.json").is_file() and not (run / "run.json").exists()

    assert rosa_main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["steps"] == 4
    assert not (tmp_path / ".out.replaced").exists() and not lock_path(run).exists()


def test_shared_locks_admit_each_other_and_refuse_an_exclusive_writer(tmp_path):
    """Sweep shards share their directory; a whole sweep (or a second run) has it to itself."""
    directory = held(tmp_path / "sweep", shared=True)
    with directory_lock(directory, "sweep directory", "fix.", shared=True) as path:
        assert path == lock_path(directory)
    with pytest.raises(DirectoryLockedError, match=r"sweep directory .* is in use by another rosa process; fix\."):
        with directory_lock(directory, "sweep directory", "fix."):
            pass
    os.close(HELD_LOCKS.pop())
    with directory_lock(directory, "sweep directory", "fix."):
        with pytest.raises(DirectoryLockedError, match="already in use by this process"):
            with directory_lock(directory, "sweep directory", "fix.", shared=True):
                pass
    assert not lock_path(directory).exists()


# --- Evaluations that would evaluate nothing, and paired tests across decoding settings (rosa eval's
# task checks in rosa.eval.targets.check_tasks, rosa compare's protocol check in rosa.compare.significance). ---

from rosa.eval.report import compute_metrics  # noqa: E402


def data_copy(tmp_path, **files):
    """A data directory holding eval/<task>/test.json: the shared file for a task given as None, else the text."""
    for task, text in files.items():
        path = tmp_path / "data" / "eval" / task / "test.json"
        path.parent.mkdir(parents=True)
        path.write_text((DATA / "eval" / task / "test.json").read_text() if text is None else text)
    return str(tmp_path / "data")


def evaluated(directory, decoding):
    """An evaluation directory as `rosa eval --decoding DECODING` leaves it (two boolq items)."""
    directory.mkdir(parents=True)
    predictions = [{"task": "boolq", "index": i, "prompt": f"q{i}", "generation": "true", "extracted": "true",
                    "label": "true", "correct": bool(i)} for i in range(2)]
    write(directory / "eval_config.json", json.dumps({"identity": {"model": "m"}, "decoding": decoding}))
    write(directory / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
    write(directory / "metrics.json", json.dumps({**compute_metrics(predictions, ["boolq"], {}), "decoding": decoding, "limit": None}))
    return str(directory)


CASES.update({
    "eval-no-task-file": (lambda t, a: ["eval", "--model", str(STORIES), "--tasks", "hellaswag", "--data-dir", str(DATA), "--output", str(t / "out")],
                          ["nothing to evaluate: no requested task has its test file (hellaswag: eval/hellaswag/test.json is not in",
                           "Pass --data-dir with the task files, or choose --tasks whose files are there."]),
    "eval-empty-task-file": (lambda t, a: ["eval", "--model", str(STORIES), "--tasks", "boolq,piqa", "--data-dir", data_copy(t, boolq="[]", piqa=None),
                                           "--output", str(t / "out")],
                             ["cannot evaluate boolq: ", "/data/eval/boolq/test.json contains no records",
                              "Restore ", "or leave boolq out of --tasks."]),
    "compare-other-decoding": (lambda t, a: ["compare", evaluated(t / "greedy", "greedy"), evaluated(t / "beam", "beam4"), "--ref", str(t / "beam"),
                                             "--output", str(t / "report")],
                               ["cannot pair greedy (greedy decoding) with beam (beam4 decoding)", "(decoding: greedy vs beam4)",
                                "Evaluate both with the same --decoding (`rosa eval RUN --decoding beam4`)", "or drop --ref"]),
})


def test_an_evaluation_with_nothing_to_evaluate_is_refused_before_the_model_is_loaded(tmp_path, monkeypatch, capsys):
    """Both refusals come from the task files alone: the model is never loaded, the output never created."""
    import rosa.loading

    monkeypatch.setattr(rosa.loading, "load_for_inference", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert rosa_main(["eval", "--model", str(STORIES), "--tasks", "hellaswag", "--data-dir", str(DATA), "--output", str(out)]) == 2
    assert rosa_main(["eval", "--model", str(STORIES), "--tasks", "boolq", "--data-dir", data_copy(tmp_path, boolq="[]"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[2] for line in err] == ["nothing to evaluate", "cannot evaluate boolq"] and not out.exists()
