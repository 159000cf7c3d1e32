"""``rosa sweep`` end to end on the real tiny Llama: runs, table, plots, resume, refusals."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics

import pytest

from conftest import DATA, STORIES, require
from rosa.cli import main as rosa_main
from rosa.sweep import plots
from rosa.sweep.report import summary_rows

TRAINING = [  # fp32: a resumed evaluation regroups its batches, which bf16 (`auto` on this CPU) rounds differently
    "--precision", "fp32", "--max-steps", "2", "--max-samples", "16", "--batch-size", "4", "--micro-batch-size", "2",
    "--set", "training.cutoff_len=96", "--set", "training.warmup_steps=1", "--set", "training.save_steps=100",
    "--set", "training.logging_steps=1", "--set", "dls.warmup=1", "--set", "dls.interval=1",
]
EVAL = ["--tasks", "boolq,ARC-Easy", "--limit", "3", "--decoding", "greedy", "--no-progress"]
POINTS = ["method-roae__seed-1", "method-roae__seed-2", "method-lora-dls__seed-1", "method-lora-dls__seed-2"]


def sweep_args(directory, *extra):
    return ["sweep", "--model", str(require(STORIES)), "--data", "commonsense_mix", "--data-dir", str(require(DATA)),
            *TRAINING, *EVAL, "--grid", "method=roae,lora-dls", "--grid", "seed=1,2",
            "--set", "lora.r=2", "--output-dir", str(directory), *extra]


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sweep") / "grid"
    assert rosa_main(sweep_args(directory)) == 0
    return directory


def test_every_point_is_a_finished_run_with_an_evaluation(sweep_dir):
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["points"] == POINTS
    for name in POINTS:
        run = sweep_dir / "runs" / name
        summary = json.loads((run / "run.json").read_text())
        assert summary["steps"] == 2 and summary["method"] == name.split("__")[0].removeprefix("method-")
        metrics = json.loads((run / "eval" / "greedy" / "metrics.json").read_text())
        assert metrics["items"] == 6 and metrics["decoding"] == "greedy"


def test_the_table_holds_each_points_numbers_and_swept_fields(sweep_dir):
    rows = {row["run"]: row for row in read_csv(sweep_dir / "results.csv")}
    assert list(rows) == POINTS
    for name, row in rows.items():
        run = sweep_dir / "runs" / name
        summary = json.loads((run / "run.json").read_text())
        metrics = json.loads((run / "eval" / "greedy" / "metrics.json").read_text())
        assert (row["method"], row["seed"]) == (summary["method"], name[-1])
        assert float(row["micro"]) == pytest.approx(100 * metrics["micro_average"])
        assert float(row["boolq"]) == pytest.approx(100 * metrics["tasks"]["boolq"]["accuracy"])
        assert int(row["trainable_params"]) == summary["trainable_params"]
        assert float(row["train_loss"]) == pytest.approx(summary["train_loss"])


def test_seeds_are_summarised_and_plotted_but_never_a_plot_axis(sweep_dir):
    points = {row["run"]: row for row in read_csv(sweep_dir / "results.csv")}
    summary = read_csv(sweep_dir / "summary.csv")
    assert [(row["method"], row["runs"]) for row in summary] == [("roae", "2"), ("lora-dls", "2")]
    for row in summary:
        micros = [float(points[f"method-{row['method']}__seed-{s}"]["micro"]) for s in (1, 2)]
        assert float(row["micro_mean"]) == pytest.approx(statistics.fmean(micros))
        assert float(row["micro_std"]) == pytest.approx(statistics.stdev(micros))
    pngs = sorted(p.name for p in sweep_dir.glob("*.png"))
    assert pngs == ["accuracy_vs_method.png", "accuracy_vs_params.png"]
    assert all((sweep_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    report = (sweep_dir / "results.md").read_text()
    assert "4 of 4 points finished" in report and "![accuracy_vs_params.png](accuracy_vs_params.png)" in report


def test_a_rerun_skips_finished_points_and_resumes_interrupted_ones(sweep_dir, capsys):
    runs = sweep_dir / "runs"
    stamps = {name: (runs / name / "run.json").stat().st_mtime_ns for name in POINTS}
    predictions = {name: (runs / name / "eval" / "greedy" / "predictions.jsonl").read_text() for name in POINTS}
    # point 1 was killed before its training finished; point 2 during its evaluation, mid-line
    (runs / POINTS[0] / "run.json").unlink()
    shutil.rmtree(runs / POINTS[0] / "adapter")
    shutil.rmtree(runs / POINTS[0] / "eval")
    evaluation = runs / POINTS[1] / "eval" / "greedy"
    (evaluation / "metrics.json").unlink()
    lines = predictions[POINTS[1]].splitlines(keepends=True)
    (evaluation / "predictions.jsonl").write_text("".join(lines[:-2]) + lines[-2][:10])
    capsys.readouterr()

    assert rosa_main(sweep_args(sweep_dir)) == 0
    out = capsys.readouterr().out
    assert out.count("trained already: skipped") == 3 and "training was interrupted: resuming it from its last checkpoint" in out
    assert out.count("evaluated already: skipped") == 2
    for name in POINTS[1:]:
        assert (runs / name / "run.json").stat().st_mtime_ns == stamps[name]
    assert (runs / POINTS[0] / "run.json").stat().st_mtime_ns > stamps[POINTS[0]]
    # same seed, same data, same model: the retrained point predicts exactly as before
    for name in POINTS:
        assert (runs / name / "eval" / "greedy" / "predictions.jsonl").read_text() == predictions[name]


def test_another_plan_in_the_same_directory_is_refused_untouched(sweep_dir, capsys):
    before = (sweep_dir / "sweep.json").read_bytes()
    assert rosa_main(sweep_args(sweep_dir, "--limit", "4")) == 2
    assert "holds a sweep with another plan (evaluation differ); nothing was run" in capsys.readouterr().err
    assert (sweep_dir / "sweep.json").read_bytes() == before


def test_report_only_collects_without_training(sweep_dir, capsys):
    assert rosa_main([*sweep_args(sweep_dir), "--report-only"]) == 0
    assert "[1/4]" not in capsys.readouterr().out


def test_bad_grids_exit_2_and_create_nothing(tmp_path, capsys):
    cases = {
        ("--grid", "k_ratio=0.5,1.5"): "sweep point dls.k_ratio-1.5: k_ratio must be in (0, 1]",
        ("--preset", "ablations"): "unknown sweep preset 'ablations'",
        ("--grid", "ratio=1,2"): "unknown config field 'ratio'",
        ("--grid", "seed=1,2", "--shard", "2/2"): "--shard expects I/N with 0 <= I < N",
    }
    for extra, message in cases.items():
        target = tmp_path / "new"
        assert rosa_main(["sweep", "--model", "m", "--data", "d", "--output-dir", str(target), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not target.exists()


def test_a_task_file_that_cannot_be_evaluated_is_refused_before_any_point_trains(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "eval" / "boolq").mkdir(parents=True)
    (data / "eval" / "boolq" / "test.json").write_text("[]")
    (data / "train").symlink_to(require(DATA) / "train")
    target = tmp_path / "grid"
    args = sweep_args(target)
    args[args.index("--data-dir") + 1] = str(data)
    assert rosa_main(args) == 2
    assert "cannot evaluate boolq" in capsys.readouterr().err
    assert not target.exists()


def test_summary_statistics_and_plots_from_known_rows():
    rows = [
        {"run": "a", "dls.k_ratio": 0.5, "seed": 1, "micro": 10.0, "macro": 20.0, "trainable_params": 100, "train_time_s": 1.0, "train_loss": 2.0},
        {"run": "b", "dls.k_ratio": 0.5, "seed": 2, "micro": 14.0, "macro": 22.0, "trainable_params": 100, "train_time_s": 3.0, "train_loss": 1.0},
        {"run": "c", "dls.k_ratio": 1.0, "seed": 1, "micro": 30.0, "macro": None, "trainable_params": 100, "train_time_s": 2.0, "train_loss": 1.5},
    ]
    summary = summary_rows(rows, ["dls.k_ratio", "seed"])
    assert summary == [
        {"dls.k_ratio": 0.5, "runs": 2, "micro_mean": 12.0, "micro_std": statistics.stdev([10.0, 14.0]),
         "macro_mean": 21.0, "macro_std": statistics.stdev([20.0, 22.0]), "trainable_params": 100.0,
         "train_time_s": 2.0, "train_loss": 1.5},
        {"dls.k_ratio": 1.0, "runs": 1, "micro_mean": 30.0, "micro_std": None, "macro_mean": None,
         "macro_std": None, "trainable_params": 100.0, "train_time_s": 2.0, "train_loss": 1.5},
    ]
    for figure in (plots.accuracy_vs_field(summary, ["dls.k_ratio", "seed"], "dls.k_ratio"),
                   plots.accuracy_vs_params(summary, ["dls.k_ratio", "seed"])):
        axes = figure.axes[0]
        assert "mean ± std over seeds" in axes.get_title()
        assert axes.get_ylabel() == "micro-average accuracy (%)" and axes.get_xlabel()
    line = plots.accuracy_vs_field(summary, ["dls.k_ratio", "seed"], "dls.k_ratio").axes[0].lines[0]
    assert list(line.get_xdata()) == [0.5, 1.0] and list(line.get_ydata()) == [12.0, 30.0]


def test_a_failing_point_is_reported_and_the_others_still_run(tmp_path, capsys):
    directory = tmp_path / "partly"
    args = sweep_args(directory)
    args[args.index("method=roae,lora-dls")] = "method=roae"
    args[args.index("seed=1,2")] = "seed=1"
    args += ["--grid", f"model={require(STORIES)},{tmp_path / 'no-such-model'}"]
    assert rosa_main(args) == 1
    out = capsys.readouterr().out
    assert "failed: " in out and "no-such-model" in out.split("failed: ")[1].splitlines()[0]
    assert "1 point(s) failed" in out and "rerun the same command to retry them" in out
    rows = read_csv(directory / "results.csv")
    assert len(rows) == 1 and rows[0]["model"] == str(require(STORIES))
    assert "1 of 2 points finished" in (directory / "results.md").read_text()


def test_report_only_needs_an_existing_sweep(tmp_path, capsys):
    assert rosa_main(["sweep", "--model", "m", "--data", "d", "--grid", "seed=1,2", "--report-only",
                      "--output-dir", str(tmp_path / "typo")]) == 2
    assert "holds no sweep (sweep.json missing); check --output-dir" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
