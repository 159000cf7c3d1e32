"""Files rosa writes atomically, and the directories it stages, get the modes the umask allows, as
a plain ``open()``/``mkdir()`` would give them; never the private 0600/0700 of a temporary file."""

from __future__ import annotations

import os
import stat

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from conftest import DATA, STORIES, require, tiny_model  # noqa: E402
from rosa import RoSAConfig, get_rosa_model  # noqa: E402
from rosa.cli import main as rosa_main  # noqa: E402
from rosa.serialization import (  # noqa: E402
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_png,
    current_umask,
    staged_directory,
)


@pytest.fixture(params=[0o022, 0o002], ids=["umask-022", "umask-002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_and_staged_directories_follow_the_umask(tmp_path, umask):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert current_umask() == umask and {file_mode, dir_mode} <= {0o644, 0o755, 0o664, 0o775}

    atomic_write_bytes(tmp_path / "results.csv", b"run,acc\n")
    atomic_write_json(tmp_path / "metrics.json", {"micro": 0.5})
    figure = plt.figure()
    atomic_write_png(tmp_path / "plot.png", figure)
    plt.close(figure)
    private = tmp_path / "config.yaml"
    private.write_text("old")
    private.chmod(0o600)  # as an earlier rosa left it: rewriting gives the umask's mode
    atomic_write_bytes(private, b"new")
    model = get_rosa_model(tiny_model("llama"), RoSAConfig(rank=2))
    with staged_directory(tmp_path / "adapter") as staged:  # as `rosa train` saves its final adapter
        assert mode(staged) == dir_mode
        model.save_pretrained(str(staged))

    found = {p.name: mode(p) for p in tmp_path.rglob("*")}
    assert found == {
        "results.csv": file_mode, "metrics.json": file_mode, "plot.png": file_mode, "config.yaml": file_mode,
        "adapter": dir_mode, "adapter_model.safetensors": file_mode, "adapter_config.json": file_mode, "README.md": file_mode,
    }


def test_a_whole_run_directory_and_its_evaluation_are_readable_by_the_group(tmp_path):
    """umask 002 (a team's shared group): every file of a real run and its evaluation is group-readable
    and -writable, every directory group-searchable; nothing is left private."""
    previous = os.umask(0o002)
    try:
        run = tmp_path / "run"
        assert rosa_main(["train", "--model", str(require(STORIES)), "--data", "commonsense_mix", "--data-dir", str(require(DATA)),
                          "--output-dir", str(run), "--max-steps", "2", "--max-samples", "16", "--batch-size", "4",
                          "--set", "training.cutoff_len=64", "--set", "training.save_steps=1"]) == 0
        assert rosa_main(["eval", str(run), "--tasks", "boolq", "--limit", "1", "--decoding", "greedy", "--no-progress"]) == 0
    finally:
        os.umask(previous)
    paths = sorted(run.rglob("*"))
    assert {"config.yaml", "run.json", "dls_history.json", "adapter_model.safetensors", "optimizer.pt", "metrics.json",
            "predictions.jsonl", "eval_config.json"} <= {p.name for p in paths}
    wrong = {str(p.relative_to(run)): oct(mode(p)) for p in paths if mode(p) != (0o775 if p.is_dir() else 0o664)}
    assert wrong == {}
