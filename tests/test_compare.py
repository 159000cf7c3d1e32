"""``rosa compare``: loading evaluations, the comparison table, and paired significance tests."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from processes import HANG_GUARD
from rosa.cli import main
from rosa.compare import (
    check_paired,
    comparison_rows,
    load_result,
    mcnemar_exact,
    paired_bootstrap,
    render_csv,
    render_markdown,
    render_significance_markdown,
    significance_rows,
)
from rosa.compare.significance import render_significance_csv
from rosa.errors import RoSAError
from rosa.eval.report import compute_metrics

RUN_SUMMARY = {
    "method": "lora",
    "model": "stories",
    "trainable_params": 1234567,
    "total_params": 9999999,
    "train_runtime_s": 12.34,
    "peak_memory_bytes": 3 * 2**20 + 3 * 2**18,  # 3.75 MiB
    "peak_memory_kind": "process max RSS",
    "budget": None,
}


def write_eval(directory: Path, answers: dict[str, list[bool]], *, limit: int | None = None, decoding: str = "beam4", label: str = "true") -> Path:
    """An evaluation directory as the runner leaves it: metrics.json counts the first ``limit`` items."""
    directory.mkdir(parents=True)
    predictions = [
        {"task": task, "index": i, "prompt": f"{task} question {i}", "generation": "x", "extracted": "x", "label": label, "correct": ok}
        for task, oks in answers.items()
        for i, ok in enumerate(oks)
    ]
    counted = [p for p in predictions if limit is None or p["index"] < limit]
    metrics = {**compute_metrics(counted, list(answers), {}), "decoding": decoding, "limit": limit}
    (directory / "eval_config.json").write_text(json.dumps({"decoding": decoding}))
    (directory / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def write_run(root: Path, name: str, answers: dict[str, list[bool]], decodings=("beam4",), **summary) -> Path:
    run_dir = root / name
    for decoding in decodings:
        write_eval(run_dir / "eval" / decoding, answers, decoding=decoding)
    (run_dir / "config.yaml").write_text("method: lora\n")
    (run_dir / "run.json").write_text(json.dumps({**RUN_SUMMARY, **summary}))
    return run_dir


def pairs(b: int, c: int, both: int = 0, neither: int = 0) -> tuple[list[bool], list[bool]]:
    """ref/other answers with b items only ref got right and c items only other got right."""
    ref = [True] * b + [False] * c + [True] * both + [False] * neither
    other = [False] * b + [True] * c + [True] * both + [False] * neither
    return ref, other


# --- McNemar ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [(0, 6, 2 * 0.5**6), (6, 0, 0.03125), (3, 3, 1.0), (0, 0, 1.0), (1, 9, 2 * (1 + 10) / 1024)],
)
def test_mcnemar_is_the_exact_two_sided_binomial_test_on_discordant_pairs(b, c, p):
    ref, other = pairs(b, c, both=4, neither=2)  # concordant items must not change anything
    test = mcnemar_exact(ref, other)
    assert (test.b, test.c) == (b, c)
    assert test.p_value == pytest.approx(p, rel=1e-12)


# --- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_delta_is_exact_and_its_interval_matches_the_normal_approximation():
    ref, other = pairs(0, 30, both=15, neither=15)  # differences: 30 ones, 30 zeros
    ci = paired_bootstrap(ref, other, seed=1)
    assert ci.delta == 0.5
    assert ci.low < ci.delta < ci.high
    # sd of the differences is 0.5, so the 95% half-width is about 1.96 * 0.5 / sqrt(60) = 0.1265
    assert ci.low == pytest.approx(0.5 - 0.1265, abs=0.02)
    assert ci.high == pytest.approx(0.5 + 0.1265, abs=0.02)
    assert ci.significant and ci.confidence == 0.95


def test_bootstrap_is_reproducible_with_a_seed():
    ref, other = pairs(4, 9, both=20, neither=7)
    assert paired_bootstrap(ref, other, seed=3) == paired_bootstrap(ref, other, seed=3)


@pytest.mark.parametrize(("ref", "other", "delta"), [(*pairs(0, 0, both=5, neither=5), 0.0), (*pairs(0, 8), 1.0)])
def test_bootstrap_of_identical_differences_is_a_point_without_warnings(ref, other, delta):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = paired_bootstrap(ref, other)
    assert (ci.delta, ci.low, ci.high) == (delta, delta, delta)
    assert ci.significant == (delta != 0)


# --- significance rows --------------------------------------------------------------------------


def test_a_clearly_better_run_is_significant_and_an_identical_one_is_not(tmp_path):
    ref_answers, better_answers = pairs(0, 30, both=10, neither=20)
    ref = load_result(write_run(tmp_path, "ref", {"boolq": ref_answers, "SVAMP": [True, False]}))
    better = load_result(write_run(tmp_path, "better", {"boolq": better_answers, "SVAMP": [True, False]}))
    same = load_result(write_run(tmp_path, "same", {"boolq": ref_answers, "SVAMP": [True, False]}))
    rows = significance_rows(ref, [better, same], n_resamples=2000)

    assert [r["run"] for r in rows] == ["better", "same"] and rows[0]["ref"] == "ref"
    boolq = rows[0]["tasks"]["boolq"]
    assert boolq == {"delta": 50.0, "b": 0, "c": 30, "p_value": pytest.approx(2 * 0.5**30), "significant": True}
    assert rows[0]["tasks"]["SVAMP"] == {"delta": 0.0, "b": 0, "c": 0, "p_value": 1.0, "significant": False}
    micro = rows[0]["micro"]
    assert micro["delta"] == pytest.approx(100 * 30 / 62) and micro["low"] > 0 and micro["significant"]
    assert (micro["confidence"], micro["n_resamples"]) == (0.95, 2000)

    assert not any(t["significant"] for t in rows[1]["tasks"].values())
    assert rows[1]["micro"] == {"delta": 0.0, "low": 0.0, "high": 0.0, "confidence": 0.95, "n_resamples": 2000, "significant": False}


def test_significance_markdown_and_csv():
    rows = [{
        "run": "rosa", "ref": "lora",
        "tasks": {"boolq": {"delta": 3.0, "b": 1, "c": 9, "p_value": 0.021484375, "significant": True},
                  "SVAMP": {"delta": -1.5, "b": 2, "c": 1, "p_value": 1.0, "significant": False}},
        "micro": {"delta": 1.2, "low": -0.5, "high": 2.9, "confidence": 0.95, "n_resamples": 10000, "significant": False},
    }]
    assert render_significance_markdown(rows, "lora", 0.05) == (
        "| run vs lora | boolq | SVAMP | micro |\n"
        "|---|---:|---:|---:|\n"
        "| rosa | Δ +3.00 (p=0.021)* | Δ −1.50 (p=1.000) | Δ +1.20 [−0.5, +2.9] |\n"
        "\n"
        "Δ = accuracy minus lora's, in percentage points. * = significant at α = 0.05: per task, exact two-sided "
        "McNemar test on the items the runs disagree on; for the micro average, a paired bootstrap percentile 95% "
        "CI over items (10,000 resamples) that excludes 0. p-values are not corrected for multiple comparisons.\n"
    )
    lines = list(csv.DictReader(io.StringIO(render_significance_csv(rows))))
    assert [(r["task"], r["delta_pp"], r["p_value"], r["low_pp"]) for r in lines] == [
        ("boolq", "3.0", "0.021484375", ""), ("SVAMP", "-1.5", "1.0", ""), ("micro", "1.2", "", "-0.5")
    ]


# --- pairing ------------------------------------------------------------------------------------


def test_check_paired_refuses_other_limits_tasks_and_labels(tmp_path):
    answers = {"boolq": [True, False, True, True, False], "AQuA": [True, False]}
    ref = load_result(write_eval(tmp_path / "ref", answers))
    check_paired(ref, load_result(write_eval(tmp_path / "same", answers)))

    shorter = load_result(write_eval(tmp_path / "shorter", answers, limit=4))
    with pytest.raises(RoSAError, match=r"boolq: ref has 5 items, shorter has 4.*same --tasks, --limit and data"):
        check_paired(ref, shorter)
    fewer = load_result(write_eval(tmp_path / "fewer", {"boolq": answers["boolq"]}))
    with pytest.raises(RoSAError, match=r"cannot pair fewer with ref.*AQuA: ref has 2 items, fewer has 0"):
        check_paired(ref, fewer)
    relabelled = load_result(write_eval(tmp_path / "relabelled", answers, label="false"))
    with pytest.raises(RoSAError, match=r"boolq: 5 of 5 items have another label or prompt; AQuA: 2 of 2"):
        check_paired(ref, relabelled)
    with pytest.raises(RoSAError, match="cannot pair shorter with ref"):
        significance_rows(ref, [shorter])


# --- table --------------------------------------------------------------------------------------


def table_results(tmp_path):
    # SVAMP listed first: the table must still follow benchmark order (boolq first).
    run = write_run(tmp_path, "lora-run", {"SVAMP": [True, False], "boolq": [True, True, True, False]})
    base = write_eval(tmp_path / "base", {"boolq": [True, False, False, False]})
    return [load_result(run), load_result(base)]


def test_comparison_rows_hold_raw_values_in_column_order(tmp_path):
    rows = comparison_rows(table_results(tmp_path), {"lr": [0.001, None]})
    assert list(rows[0]) == [
        "run", "lr", "method", "boolq", "SVAMP", "macro", "micro", "items",
        "trainable_params", "train_time_s", "peak_memory_mib", "peak_memory_kind",
    ]
    assert rows[0] == {
        "run": "lora-run", "lr": 0.001, "method": "lora", "boolq": 75.0, "SVAMP": 50.0, "macro": 62.5,
        "micro": 100 * (4 / 6), "items": 6, "trainable_params": 1234567, "train_time_s": 12.34,
        "peak_memory_mib": 3.75, "peak_memory_kind": "process max RSS",
    }
    assert rows[1] == {
        "run": "base", "lr": None, "method": None, "boolq": 25.0, "SVAMP": None, "macro": 25.0, "micro": 25.0,
        "items": 4, "trainable_params": None, "train_time_s": None, "peak_memory_mib": None, "peak_memory_kind": None,
    }
    with pytest.raises(RoSAError, match="extra column 'lr' has 1 values for 2 runs"):
        comparison_rows(table_results(tmp_path / "again"), {"lr": [0.001]})


def test_markdown_and_csv_rendering(tmp_path):
    rows = comparison_rows(table_results(tmp_path), {"lr": [0.001, None]})
    assert render_markdown(rows) == (
        "| run | lr | method | boolq | SVAMP | macro | micro | items | trainable params | train time (s) | peak memory (MiB) |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| lora-run | 0.001 | lora | 75.00 | 50.00 | 62.50 | 66.67 | 6 | 1,234,567 | 12.3 | 4 |\n"
        "| base | – | – | 25.00 | – | 25.00 | 25.00 | 4 | – | – | – |\n"
        "\n"
        "Accuracy in %; macro = mean over tasks, micro = all correct answers / all items.\n"
        "The runs were evaluated on different numbers of items (4, 6); their averages are not directly comparable.\n"
        "Peak memory is the process max RSS.\n"
    )
    assert render_csv(rows) == (
        "run,lr,method,boolq,SVAMP,macro,micro,items,trainable_params,train_time_s,peak_memory_mib,peak_memory_kind\n"
        "lora-run,0.001,lora,75.0,50.0,62.5,66.66666666666666,6,1234567,12.34,3.75,process max RSS\n"
        "base,,,25.0,,25.0,25.0,4,,,,\n"
    )


# --- loading ------------------------------------------------------------------------------------


def test_load_a_run_directory_with_one_evaluation(tmp_path):
    result = load_result(write_run(tmp_path, "rosa-q", {"boolq": [True, False]}))
    assert (result.label, result.method, result.decoding) == ("rosa-q", "lora", "beam4")
    assert result.eval_dir == tmp_path / "rosa-q" / "eval" / "beam4"
    assert result.run["trainable_params"] == 1234567
    assert sorted(result.predictions) == [("boolq", 0), ("boolq", 1)]


def test_a_run_with_two_evaluations_needs_a_decoding(tmp_path):
    run_dir = write_run(tmp_path, "run", {"boolq": [True]}, decodings=("beam4", "greedy"))
    with pytest.raises(RoSAError, match=r"several evaluations \(beam4, greedy\); pass --decoding"):
        load_result(run_dir)
    assert load_result(run_dir, "greedy").eval_dir == run_dir / "eval" / "greedy"
    with pytest.raises(RoSAError, match="is a beam4 evaluation, not greedy"):
        load_result(run_dir / "eval" / "beam4", "greedy")


def test_load_an_evaluation_directory_keeps_only_the_counted_items(tmp_path):
    base = load_result(write_eval(tmp_path / "base-eval", {"boolq": [True] * 6, "AQuA": [False] * 3}, limit=4), label="base")
    assert base.label == "base" and base.run is None and base.method is None
    assert sorted(base.predictions) == [("AQuA", i) for i in range(3)] + [("boolq", i) for i in range(4)]
    inside = load_result(write_run(tmp_path, "run", {"boolq": [True]}) / "eval" / "beam4")
    assert inside.label == "run" and inside.run["method"] == "lora"


def test_load_errors_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(RoSAError, match="does not exist"):
        load_result(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(RoSAError, match="notes.txt is a file"):
        load_result(tmp_path / "notes.txt")
    run_dir = write_run(tmp_path, "run", {"boolq": [True, False]})
    with pytest.raises(RoSAError, match=r"no greedy evaluation \(found: beam4\)"):
        load_result(run_dir, "greedy")
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "run.json").write_text("{}")
    with pytest.raises(RoSAError, match=r"no evaluation yet .* run `rosa eval .*fresh` first"):
        load_result(tmp_path / "fresh")
    metrics = run_dir / "eval" / "beam4" / "metrics.json"
    text = metrics.read_text()
    metrics.write_text(text[:-5])
    with pytest.raises(RoSAError, match="metrics.json is not valid JSON"):
        load_result(run_dir)
    metrics.unlink()
    with pytest.raises(RoSAError, match=r"unfinished .* rerun the same `rosa eval` command"):
        load_result(run_dir)
    metrics.write_text(text)
    predictions = run_dir / "eval" / "beam4" / "predictions.jsonl"
    predictions.write_text(predictions.read_text().splitlines()[0] + "\n")
    with pytest.raises(RoSAError, match="boolq: 1 predictions, 2 counted"):
        load_result(run_dir)


# --- command line -------------------------------------------------------------------------------


def three_runs(root: Path) -> tuple[Path, Path, Path]:
    ref_answers, better_answers = pairs(0, 12, both=8, neither=4)
    return (
        write_run(root, "lora", {"boolq": ref_answers, "SVAMP": [True, False, True]}),
        write_run(root, "rosa", {"boolq": better_answers, "SVAMP": [True, True, True]}, method="rosa"),
        write_eval(root / "base", {"boolq": [False] * 24, "SVAMP": [False] * 3}),
    )


def test_cli_writes_the_tables_and_tests_against_the_reference(tmp_path):
    lora, rosa, base = three_runs(tmp_path)
    out = tmp_path / "report" / "nested"
    result = subprocess.run(
        [sys.executable, "-m", "rosa.cli", "compare", str(lora), str(rosa), str(base), "--ref", str(lora),
         "--labels", "LoRA,RoSA,base", "--resamples", "500", "--output", str(out)],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )
    assert result.returncode == 0, result.stderr
    assert "| RoSA | rosa | 83.33 | 100.00 | 91.67 | 85.19 | 27 | 1,234,567 | 12.3 | 4 |" in result.stdout
    assert "| RoSA | Δ +50.00 (p<0.001)* | Δ +33.33 (p=1.000) |" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.json", "comparison.md", "significance.csv"]
    assert (out / "comparison.md").read_text() + f"wrote comparison.md, comparison.csv, comparison.json, significance.csv to {out}\n" == result.stdout
    assert [r["run"] for r in csv.DictReader((out / "comparison.csv").open())] == ["LoRA", "RoSA", "base"]
    significance = list(csv.DictReader((out / "significance.csv").open()))
    assert [(r["run"], r["task"]) for r in significance] == [(run, task) for run in ("RoSA", "base") for task in ("boolq", "SVAMP", "micro")]
    report = json.loads((out / "comparison.json").read_text())
    assert report["ref"] == "LoRA" and report["significance"][0]["tasks"]["boolq"]["c"] == 12


def compare(*args: str) -> int:
    return main(["compare", *map(str, args)])


def test_cli_refuses_unpaired_runs_and_missing_paths_writing_nothing(tmp_path, capsys):
    lora, rosa, _ = three_runs(tmp_path)
    short = write_eval(tmp_path / "short", {"boolq": [True] * 5, "SVAMP": [True] * 3})
    out = tmp_path / "out"
    assert compare(lora, short, "--ref", lora, "--output", out) == 2
    assert "rosa compare: error: cannot pair short with lora" in capsys.readouterr().err
    assert compare(lora, tmp_path / "nowhere", "--output", out) == 2
    assert f"rosa compare: error: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "a,b,c"], "--labels gives 3 names for 2 RUN_DIRs"),
        (["--labels", "a,a"], "several runs are named a; pass --labels"),
        (["--alpha", "1.5"], "--alpha must be between 0 and 1"),
    ],
)
def test_cli_option_errors(tmp_path, capsys, args, message):
    lora, rosa, _ = three_runs(tmp_path)
    assert compare(lora, rosa, *args) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_an_output_path_that_is_a_file(tmp_path, capsys):
    lora, rosa, _ = three_runs(tmp_path)
    (tmp_path / "taken").write_text("")
    assert compare(lora, rosa, "--output", tmp_path / "taken") == 2
    assert "is a file; give a directory path" in capsys.readouterr().err


# --- evaluation protocol ----------------------------------------------------------------------------


def test_cli_refuses_to_pair_a_greedy_run_with_a_beam4_run_naming_both_and_the_fix(tmp_path, capsys):
    beam_answers, greedy_answers = pairs(2, 10, both=8)
    beam = write_run(tmp_path, "beam", {"boolq": beam_answers})
    greedy = write_run(tmp_path, "greedy", {"boolq": greedy_answers}, decodings=("greedy",))
    out = tmp_path / "out"
    assert compare(greedy, beam, "--ref", beam, "--output", out) == 2
    assert capsys.readouterr().err == (
        "rosa compare: error: cannot pair greedy (greedy decoding) with beam (beam4 decoding): they were evaluated "
        "with different settings (decoding: greedy vs beam4), so McNemar and the paired bootstrap would compare "
        "answers produced under different protocols. Evaluate both with the same --decoding (`rosa eval RUN "
        "--decoding beam4`) and compare those evaluations, or drop --ref to only tabulate them.\n"
    )
    assert not out.exists()
    assert compare(greedy, beam) == 0, "a table without paired tests is still allowed"


def test_check_paired_refuses_another_generation_length_and_accepts_the_same_protocol(tmp_path):
    answers = {"boolq": [True, False, True]}
    settings = {"decoding": "beam4", "max_new_tokens": {"commonsense": 32, "math": 256}, "prompt": "llm-adapters evaluation template"}
    for name, tokens in (("a", 32), ("b", 32), ("c", 64)):
        write_eval(tmp_path / name, answers)
        config = {**settings, "max_new_tokens": {"commonsense": tokens, "math": 256}, "identity": {"model": name}}
        (tmp_path / name / "eval_config.json").write_text(json.dumps(config))
    a, b, c = (load_result(tmp_path / name) for name in "abc")
    assert a.settings == settings and "identity" not in a.settings
    check_paired(a, b)  # other identities (models) are what a comparison is for
    with pytest.raises(RoSAError) as refused:
        check_paired(a, c)
    assert str(refused.value).startswith(
        "cannot pair c (beam4 decoding) with a (beam4 decoding): they were evaluated with different settings "
        "(max_new_tokens: {'commonsense': 64, 'math': 256} vs {'commonsense': 32, 'math': 256})"
    )
    assert "Evaluate both with the same settings (the same rosa version and --decoding)" in str(refused.value)
