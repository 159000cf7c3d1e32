"""`rosa train` sends its logs, DLS selections included, where ``training.report_to`` says."""

from __future__ import annotations

import json

from conftest import DATA, STORIES, require
from rosa.cli import main

TRAIN = ["train", "--data", "commonsense_mix", "--max-steps", "4", "--max-samples", "16", "--batch-size", "4",
         "--set", "dls.warmup=1", "--set", "dls.interval=1", "--set", "training.cutoff_len=64"]


def train(tmp_path, name, *extra) -> int:
    return main([*TRAIN, "--model", str(require(STORIES)), "--data-dir", str(require(DATA)), "--output-dir",
                 str(tmp_path / name), *extra])


def test_dls_selections_reach_tensorboard_and_the_run_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train(tmp_path, "run") == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert len(events.Scalars("train/dls/exploit")) == 4  # one selection per step with interval 1
    assert {"train/dls/selected/layer_0", "train/dls/score/layer_4", "train/loss"} <= set(events.Tags()["scalars"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    history = json.loads((tmp_path / "run" / "dls_history.json").read_text())["history"]
    selections = [entry for entry in logged if "dls/exploit" in entry]
    assert [[i for i in range(5) if entry[f"dls/selected/layer_{i}"]] for entry in selections] == [h["selected"] for h in history]
    assert [entry["dls/exploit"] for entry in selections] == [float(h["kind"] == "exploit") for h in history]


def test_report_to_none_writes_no_tensorboard_and_unknown_loggers_are_refused(tmp_path, capsys):
    assert train(tmp_path, "quiet", "--report-to", "none") == 0
    assert not (tmp_path / "quiet" / "tensorboard").exists() and (tmp_path / "quiet" / "run.json").is_file()
    assert train(tmp_path, "bad", "--report-to", "tensorboard,nonsense") == 2
    assert "training.report_to must be 'none' or a list of" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_console_prints_each_dls_selection_as_one_line_of_layers(tmp_path, capsys):
    assert train(tmp_path, "run", "--report-to", "none") == 0
    printed = capsys.readouterr()
    console = printed.out + printed.err
    history = json.loads((tmp_path / "run" / "dls_history.json").read_text())["history"]
    for entry in history:
        assert f"'dls': '{entry['kind']}: layers {', '.join(map(str, entry['selected']))}'" in console
    assert console.count("'dls': '") == len(history) == 4
    assert "dls/score" not in console and "dls/selected" not in console
    logged = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert sum("dls/score/layer_0" in entry for entry in logged) == 4  # the loggers still get every scalar
