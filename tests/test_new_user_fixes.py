"""Issue 17, found by a new user's first run: a cutoff that silently cuts the answers, training on a
test set, the selection after the last DLS step, overlapping sweep points, and the activation title."""

from __future__ import annotations

import json
import math

import pytest

from conftest import DATA, STORIES, require, tiny_model
from rosa import DLSConfig, RoSAConfig, get_rosa_model
from rosa.analyze import selection_summary
from rosa.analyze.plots import AFTER_LAST_STEP_HATCH, selection_frequency, selection_heatmap, strength_heatmap
from rosa.cli import main
from rosa.loading import load_tokenizer
from rosa.sweep import plots
from rosa.train.config import ExperimentConfig
from rosa.train.recipe import evaluation_task, memorisation_warning, response_cutoff, tokenized_dataset

QUESTION = {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}
# On stories260K (prompt tokens, prompt + response tokens): QUESTION (188, 204), LONG_PROMPT (310, 326),
# LONG_ANSWER (188, 290); so at cutoff_len 256 they keep all, none and part of their response.
LONG_PROMPT = {**QUESTION, "instruction": "Is the sky blue? " * 12}
LONG_ANSWER = {**QUESTION, "output": "the correct answer is true " * 6}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(require(STORIES)))


def tokenize(tmp_path, tokenizer, records, **training) -> list[str]:
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    config = ExperimentConfig.from_dict({"model": str(STORIES), "data": str(data), "output_dir": str(tmp_path / "run"),
                                         "training": {"cutoff_len": 256, **training}})
    logged: list[str] = []
    tokenized_dataset(config, tokenizer, logged.append)
    return logged


# -- 1. responses cut by training.cutoff_len ---------------------------------------------------------
def test_response_cutoff_counts_lost_and_partly_cut_responses():
    cut = response_cutoff([(10, 20), (30, 40), (5, 8), (25, 26)], cutoff_len=15)
    assert (cut.records, cut.lost, cut.partly, cut.median_length, cut.keeps_most) == (4, 2, 1, 23, 41)
    assert cut.share == 0.75


def test_a_cutoff_that_cuts_many_responses_is_warned_about_with_the_fix(tmp_path, tokenizer):
    records = [QUESTION] * 7 + [LONG_PROMPT] * 2 + [LONG_ANSWER]
    logged = tokenize(tmp_path, tokenizer, records)
    assert logged == [
        f"warning: training.cutoff_len 256 cuts the response of 3 of 10 records of {tmp_path / 'data.json'} (30.0%): "
        "2 keep no response token, 1 only its start; the median record is 204 tokens with its response. The cut "
        "records lose their answer, and they still train on their prompt (training.train_on_inputs is on), so the "
        "run learns to continue prompts more than to answer them. Raise training.cutoff_len: "
        "--set training.cutoff_len=327 keeps 90% of the responses whole."
    ]


def test_without_train_on_inputs_the_warning_says_the_cut_records_add_nothing(tmp_path, tokenizer):
    logged = tokenize(tmp_path, tokenizer, [QUESTION] * 8 + [LONG_PROMPT] * 2, train_on_inputs=False)
    assert len(logged) == 1 and "cuts the response of 2 of 10 records" in logged[0]
    assert "2 keep no response token, 0 only its start" in logged[0]
    assert "those without a response token add nothing to the loss" in logged[0]


def test_a_few_cut_responses_stay_below_the_threshold(tmp_path, tokenizer):
    assert tokenize(tmp_path, tokenizer, [QUESTION] * 9 + [LONG_PROMPT]) == []  # 10% is not more than 10%
    assert tokenize(tmp_path, tokenizer, [QUESTION] * 19 + [LONG_PROMPT], train_on_inputs=False) == [
        "1 of 20 examples have no response token within training.cutoff_len 256; they add nothing to the loss"
    ]


def test_every_prompt_filling_the_cutoff_is_still_refused(tmp_path, tokenizer):
    from rosa.errors import RoSAConfigError

    with pytest.raises(RoSAConfigError, match="no example of .* keeps a token to learn from at training.cutoff_len 256"):
        tokenize(tmp_path, tokenizer, [LONG_PROMPT] * 3, train_on_inputs=False)


# -- 2. training on a task's test set -----------------------------------------------------------------
def test_task_names_are_recognised_as_test_sets_and_files_are_not(tmp_path, monkeypatch):
    assert [evaluation_task(name) for name in ("boolq", " BoolQ", "arc-easy", "gsm8k")] == ["boolq", "boolq", "ARC-Easy", "gsm8k"]
    assert [evaluation_task(name) for name in ("commonsense_mix", "math_10k", "boolq.json", "data/boolq.json")] == [None] * 4
    monkeypatch.chdir(tmp_path)
    (tmp_path / "boolq").write_text("[]")
    assert evaluation_task("boolq") is None  # load_dataset reads an existing file of that name, not the task


def test_training_on_a_task_warns_that_evaluating_it_measures_memorisation(tmp_path):
    logged: list[str] = []
    config = ExperimentConfig.from_dict({"model": str(STORIES), "data": "ARC-Easy", "data_dir": str(require(DATA)),
                                         "output_dir": str(tmp_path / "run"), "training": {"max_samples": 4, "cutoff_len": 1024}})
    tokenized_dataset(config, load_tokenizer(str(require(STORIES))), logged.append)
    assert logged == [memorisation_warning("ARC-Easy")]
    assert logged[0] == (
        "warning: --data ARC-Easy trains on the ARC-Easy *test* set, the items `rosa eval --tasks ARC-Easy` scores: an "
        "evaluation on ARC-Easy after this run measures memorisation, not what the method learned. For a fair score, "
        "train on a training set (commonsense_15k, math_10k, commonsense_mix, math_mix) or a JSON file of your own."
    )


def test_rosa_train_on_a_task_prints_both_warnings(tmp_path, capsys):
    code = main(["train", "--model", str(require(STORIES)), "--method", "lora", "--data", "boolq", "--data-dir", str(require(DATA)),
                 "--max-samples", "4", "--max-steps", "1", "--batch-size", "4", "--micro-batch-size", "4",
                 "--report-to", "none", "--output-dir", str(tmp_path / "run")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert memorisation_warning("boolq") in lines
    assert any(line.startswith("warning: training.cutoff_len 256 cuts the response of 4 of 4 records of boolq (100.0%)")
               for line in lines)


# -- 3. the DLS selection made after the last step ----------------------------------------------------
def record(step: int, selected: list[int], kind: str) -> dict:
    return {"step": step, "scored_at_step": step - 1, "scores": [1.0] * 4, "selected": selected, "kind": kind}


def history(last_step: int) -> dict:
    return {
        "config": DLSConfig(warmup=3, interval=2, k_ratio=0.5).to_dict(), "n_layers": 4, "step_count": 9, "selected": [],
        "history": [record(3, [0, 2], "exploit"), record(5, [1, 2], "explore"), record(last_step, [1, 3], "explore")],
        "generator_state": [],
    }


def test_the_selection_after_the_last_step_is_counted_and_marked_as_untrained():
    summary = selection_summary(history(last_step=9), "run-a")
    assert summary["selection_events"] == 3
    assert summary["after_last_step"] == [{"step": 9, "kind": "explore", "selected": [1, 3]}]
    rows = [(r["explore"], r["trained_steps"], r["after_last_step"]) for r in summary["layers"]]
    assert rows == [(0, 5, {"exploit": 0, "explore": 0}), (2, 7, {"exploit": 0, "explore": 1}),
                    (1, 9, {"exploit": 0, "explore": 0}), (1, 3, {"exploit": 0, "explore": 1})]

    heatmap = selection_heatmap(summary)
    ax = heatmap.axes[0]
    cells = [(p.get_x(), p.get_y(), p.get_width(), p.get_height(), p.get_hatch()) for p in ax.patches]
    assert cells == [(9.5, 0.5, 1, 1, AFTER_LAST_STEP_HATCH), (9.5, 2.5, 1, 1, AFTER_LAST_STEP_HATCH)]
    assert ax.get_xlim() == (0.5, 10.5)
    assert [line.get_xdata()[0] for line in ax.lines] == [9.5]  # the end of training
    note = "selected after the last step (9): counted, but trained nothing"
    assert [t.get_text() for t in heatmap.legends[0].get_texts()] == [note]

    frequency = selection_frequency(summary)
    bars = frequency.axes[0].patches
    hatched = [(b.get_x() + b.get_width() / 2, b.get_y(), b.get_height()) for b in bars if b.get_hatch() == AFTER_LAST_STEP_HATCH]
    assert hatched == [(0, 1, 0), (1, 1, 1), (2, 2, 0), (3, 0, 1)]  # on top of each layer's trained explore count
    heights = [sum(b.get_height() for b in bars if round(b.get_x() + b.get_width() / 2) == layer) for layer in range(4)]
    assert heights == [r["total"] for r in summary["layers"]] == [1, 2, 2, 1]
    assert [t.get_text() for t in frequency.legends[0].get_texts()] == [note]


def test_in_a_long_run_the_selection_after_the_last_step_stays_visible():
    long_run = {**history(last_step=200), "step_count": 200}
    ax = selection_heatmap(selection_summary(long_run, "run-c")).axes[0]
    assert [(p.get_x(), p.get_width()) for p in ax.patches] == [(200.5, 6), (200.5, 6)]  # 3% of the steps axis
    assert ax.get_xlim() == (0.5, 206.5)


def test_without_a_selection_after_the_last_step_nothing_is_marked():
    summary = selection_summary(history(last_step=7), "run-b")
    assert summary["after_last_step"] == [] and all(r["after_last_step"] == {"exploit": 0, "explore": 0} for r in summary["layers"])
    heatmap = selection_heatmap(summary)
    assert len(heatmap.axes[0].patches) == 0 and heatmap.legends == [] and heatmap.axes[0].get_xlim() == (0.5, 9.5)
    frequency = selection_frequency(summary)
    assert not any(b.get_hatch() for b in frequency.axes[0].patches) and frequency.legends == []


# -- 4. accuracy against parameters: equal budgets side by side, every budget labelled ---------------
def summary_entry(method: str, params: float, accuracy: float) -> dict:
    return {"method": method, "runs": 1, "micro_mean": accuracy, "micro_std": None, "trainable_params": params}


def test_equal_budgets_are_spread_and_every_budget_has_its_tick_label():
    summary = [summary_entry("rosa", 2500, 40.0), summary_entry("lora", 100, 41.0), summary_entry("dora", 100, 42.0),
               summary_entry("pissa", 100, 43.0), summary_entry("roae", 1000, 44.0)]
    axes = plots.accuracy_vs_params(summary, ["method"]).axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["100", "1,000", "2,500"]
    assert list(axes.get_xticks()) == [100, 1000, 2500] and list(axes.get_xticks(minor=True)) == []

    xs = [container.lines[0].get_xdata()[0] for container in axes.containers]
    step = 10 ** (plots.DODGE * math.log10(2500 / 100))  # a fraction of the axis's log span
    assert xs == pytest.approx([2500, 100 / step, 100, 100 * step, 1000])
    assert len({container.lines[0].get_marker() for container in axes.containers}) == 5
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["method=rosa", "method=lora", "method=dora",
                                                                    "method=pissa", "method=roae"]


def test_nearly_equal_budgets_are_set_apart_and_their_labels_on_two_rows():
    summary = [summary_entry("lora", 2560, 41.0), summary_entry("dora", 2624, 42.0), summary_entry("rosa", 1184, 40.0)]
    axes = plots.accuracy_vs_params(summary, ["method"]).axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["1,184", "2,560", "\n2,624"]  # 2,624 on the second row
    xs = [container.lines[0].get_xdata()[0] for container in axes.containers]
    step = 10 ** (plots.DODGE * math.log10(2624 / 1184))
    centre = math.sqrt(2560 * 2624)  # the two are closer than one step: side by side around their middle
    assert xs == pytest.approx([centre / math.sqrt(step), centre * math.sqrt(step), 1184])


def test_one_shared_budget_is_spread_too():
    assert plots.budget_offsets([500.0, 500.0]) == pytest.approx([10 ** (-plots.DODGE * 0.125), 10 ** (plots.DODGE * 0.125)])
    assert plots.budget_offsets([500.0, 5000.0]) == [1.0, 1.0]


# -- 5. the activation heatmap says when an adapter was on ------------------------------------------
def synthetic_report(**extra) -> dict:
    return {
        "model": "base", "layers": [0], "r_low": 0.5, "tokens": 10, "prompts": 1,
        "rotary": [{"layers": [0], "rotary_pairs": 2, "low_frequency_pairs": [1]}],
        "frequency": [[1.0, 0.1, 1.0, 0.1]], "low_frequency": [[False, True, False, True]], "query": [[1.0, 2.0, 3.0, 4.0]],
        **extra,
    }


def test_the_title_names_the_adapter_only_when_there_is_one():
    title = strength_heatmap(synthetic_report(adapter="/home/u/runs/quickstart/adapter"), "query").axes[0].get_title()
    assert title.startswith("base: query states after RoPE and the adapter (quickstart/adapter), per layer and head dimension\n")
    for report in (synthetic_report(), synthetic_report(adapter=None)):
        title = strength_heatmap(report, "query").axes[0].get_title()
        assert title.startswith("base: query states after RoPE, per layer and head dimension\n")


def test_rosa_analyze_activations_with_an_adapter_titles_its_figures_so(tmp_path):
    base = tiny_model("llama", vocab_size=512)
    base.save_pretrained(str(tmp_path / "base"))
    load_tokenizer(str(require(STORIES))).save_pretrained(str(tmp_path / "base"))
    adapter = tmp_path / "run" / "adapter"
    get_rosa_model(base, RoSAConfig(init_seed=0)).save_pretrained(str(adapter))
    assert main(["analyze", "activations", "--model", str(tmp_path / "base"), "--adapter", str(adapter),
                 "--prompts", str(require(DATA) / "eval" / "boolq" / "test.json"), "--limit", "2",
                 "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "activations.json").read_text())
    assert "key states after RoPE and the adapter (run/adapter)" in strength_heatmap(report, "key").axes[0].get_title()
