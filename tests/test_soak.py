"""The soak script (``python tests/soak_resume.py --minutes 30``, out of the default suite for its
length) on a short fixed schedule: it must kill at start-up, mid-save and mid-step, decide each next
command from the run directory, and report bit-identical results; and its decisions themselves,
including a kill before the run has written its ``config.yaml``."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest

import processes
import soak_resume as soak
from conftest import DATA, REPO, STORIES, require
from rosa.cli import main as rosa_main

STEPS = 12  # checkpoints at steps 5, 10 and 12
SCHEDULE = "start-up,mid-save@10,mid-step"
COMPARED = ("adapter/adapter_model.safetensors", "dls_history.json")


def make(run_dir, names):
    run_dir.mkdir()
    for name in names:
        if name.endswith("/"):
            (run_dir / name).mkdir()
        else:
            (run_dir / name).write_text("x")


# what a kill can leave: (files in the run directory, or None for no directory; what the soak runs next)
STATES = {
    "killed before the run directory was made": (None, "overwrite"),
    "killed before config.yaml was written": ([], "overwrite"),
    "killed while --overwrite cleared an older run": (["run.json", "train_log.jsonl", "checkpoint-5/", "adapter/"], "overwrite"),
    "killed before the first checkpoint": (["config.yaml", "train_log.jsonl"], "resume"),
    "killed mid-save": (["config.yaml", "checkpoint-5/", ".checkpoint-10.partial/"], "resume"),
    "finished": (["config.yaml", "checkpoint-12/", "adapter/", "run.json"], None),
}


@pytest.mark.parametrize("left", STATES)
def test_the_next_command_after_a_kill_is_decided_from_the_run_directory(tmp_path, capsys, left):
    names, expected = STATES[left]
    run_dir = tmp_path / "run"
    if names is not None:
        make(run_dir, names)
    original = soak.new_run(run_dir, STEPS)
    command = soak.next_command(run_dir, original)
    assert command == {"overwrite": [*original, "--overwrite"], "resume": ["train", "--resume", str(run_dir)], None: None}[expected]
    if expected == "overwrite":  # what the soak once did instead, and rosa rightly refuses
        assert rosa_main(["train", "--resume", str(run_dir)]) == 2
        assert "is not a run directory (no config.yaml); nothing to resume" in capsys.readouterr().err


@pytest.fixture(scope="module")
def soaked(tmp_path_factory):
    require(STORIES), require(DATA)
    out = tmp_path_factory.mktemp("soak")
    done = subprocess.run([sys.executable, str(REPO / "tests" / "soak_resume.py"), "--minutes", "0.25", "--steps", str(STEPS),
                           "--kills", SCHEDULE, "--seed", "0", "--out", str(out)],
                          env=processes.ENV, capture_output=True, text=True, timeout=processes.HANG_GUARD)
    return out, done


def test_the_soak_script_kills_resumes_and_reports_identical_weights(soaked):
    out, done = soaked
    assert done.returncode == 0, done.stdout + done.stderr
    report = done.stdout.splitlines()
    kills = [line for line in report if line.startswith("kill ")]
    assert len(kills) == 3 and "3 kills (1 start-up, 1 mid-step, 1 mid-save)" in done.stdout, done.stdout
    # held before config.yaml exists, whatever the machine's speed: the soak starts the run again
    assert kills[0].startswith("kill 1, at start-up") and ", held: no config.yaml" in kills[0], kills[0]
    assert kills[0].endswith("; next: the original command with --overwrite"), kills[0]
    # held inside the save of checkpoint-10: checkpoint-5 is the newest complete one, and the run resumes
    assert kills[1].startswith("kill 2, mid-save of checkpoint-10") and kills[1].endswith(
        "held: config.yaml, newest checkpoint-5; next: rosa train --resume"), kills[1]
    # at a random moment, at the latest inside step 12: the run exists (it resumed after kill 2)
    assert kills[2].startswith("kill 3, mid-step") and kills[2].endswith("; next: rosa train --resume"), kills[2]
    assert report[-2:] == [f"{name}: bit-identical" for name in COMPARED]
    assert json.loads((out / "interrupted" / "run.json").read_text())["resumed_from_step"] in (5, 10)


def test_a_replacement_killed_before_its_config_is_started_again_to_the_same_weights(soaked, tmp_path):
    """``--overwrite`` of a finished run, killed as it is about to write the new run's config.yaml:
    the directory holds no run (whatever the replacement did with the old one), so the soak runs the
    original command with ``--overwrite`` again instead of resuming or calling the run finished."""
    out, done = soaked
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = tmp_path / "run"
    shutil.copytree(out / "interrupted", run_dir)
    original = soak.new_run(run_dir, STEPS)
    writing_config = processes.Hold("rosa.train.recipe.atomic_write_bytes", needle="config.yaml")
    child = processes.start([*original, "--overwrite"], hold=writing_config)
    processes.kill_when(child, processes.held(child))
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "run.json").exists()
    assert soak.next_command(run_dir, original) == [*original, "--overwrite"]

    lines = []
    soak.interrupted_run(run_dir, STEPS, iter([]), (0.0, 0.0), random.Random(0), log=lines.append)
    assert lines == ["finished by the original command with --overwrite: from step 0"]
    for name in COMPARED:
        assert (run_dir / name).read_bytes() == (out / "clean" / name).read_bytes(), name
