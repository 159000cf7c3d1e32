"""The README's main job: its shipped config, `rosa eval --baseline`, and what `precision: auto` picks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DATA, REPO, STORIES, require
from rosa.cli import main as rosa_main
from rosa.data.mixes import commonsense_mix
from rosa.data.prompts import training_lengths
from rosa.loading import native_bf16_cpu, resolve_dtype
from rosa.train.config import load_config
from rosa.train.recipe import response_cutoff

EVAL = ["--tasks", "boolq,piqa", "--limit", "3", "--decoding", "greedy", "--no-progress"]


def predictions(eval_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]


def test_the_shipped_example_cuts_no_response_on_its_model(real_smollm2):
    """Every example trains on whole answers: the cutoff leaves the response in every record checked."""
    config = load_config(REPO / "examples" / "quickstart.yaml", {})
    assert Path(config.model).name == real_smollm2.file.parent.name  # the example runs on the real model
    records = commonsense_mix(require(DATA), seed=config.seed)[:300]
    cut = response_cutoff(training_lengths(records, real_smollm2.tokenizer), config.training.cutoff_len)
    assert cut.lost == cut.partly == 0, cut


def test_baseline_evaluates_the_untuned_model_on_the_same_items_and_prints_both(tmp_path, capsys):
    run = tmp_path / "run"
    assert rosa_main(["train", "--model", str(require(STORIES)), "--data", "commonsense_mix", "--data-dir", str(require(DATA)),
                      "--output-dir", str(run), "--max-steps", "2", "--max-samples", "16", "--batch-size", "4",
                      "--precision", "fp32", "--report-to", "none", "--lr", "0.05", "--set", "training.warmup_steps=0",
                      "--set", "training.cutoff_len=512"]) == 0
    capsys.readouterr()
    assert rosa_main(["eval", str(run), *EVAL, "--baseline"]) == 0
    printed = capsys.readouterr().out

    untuned_dir, tuned_dir = run / "eval-untuned" / "greedy", run / "eval" / "greedy"
    untuned, tuned = (json.loads((d / "metrics.json").read_text()) for d in (untuned_dir, tuned_dir))
    assert [(p["task"], p["index"]) for p in predictions(untuned_dir)] == [(p["task"], p["index"]) for p in predictions(tuned_dir)]
    # the untuned side is exactly what evaluating the base model alone gives
    assert rosa_main(["eval", "--model", str(STORIES), *EVAL, "--precision", "fp32", "--output", str(tmp_path / "base")]) == 0
    assert [p["generation"] for p in predictions(tmp_path / "base")] == [p["generation"] for p in predictions(untuned_dir)]
    assert [p["generation"] for p in predictions(tuned_dir)] != [p["generation"] for p in predictions(untuned_dir)]

    for task in ("boolq", "piqa"):
        before, after = untuned["tasks"][task]["accuracy"], tuned["tasks"][task]["accuracy"]
        assert f"| {task} | 3 | {100 * before:.2f} | {100 * after:.2f} | {100 * (after - before):+.2f} |" in printed
    micro = (untuned["micro_average"], tuned["micro_average"])
    assert f"| **micro average** | 6 | **{100 * micro[0]:.2f}** | **{100 * micro[1]:.2f}** | **{100 * (micro[1] - micro[0]):+.2f}** |" in printed
    # the untuned evaluation is not one of the run's decodings: `rosa compare RUN` still finds the only one
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["greedy"]


def test_baseline_needs_an_adapter_to_compare_with(tmp_path, capsys):
    assert rosa_main(["eval", "--model", str(require(STORIES)), *EVAL, "--output", str(tmp_path / "out"), "--baseline"]) == 2
    assert "--baseline compares a fine-tuned model with its base: pass a run directory or --adapter." in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-untuned").exists()


def test_auto_precision_is_bf16_exactly_where_the_hardware_multiplies_bf16(monkeypatch):
    cpu = torch.device("cpu")
    for flags, expected in [({"avx512_bf16": True}, torch.bfloat16), ({"amx_bf16": True}, torch.bfloat16),
                            ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, torch.float32), ({}, torch.float32)]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flags=flags: flags)
        assert native_bf16_cpu() is (expected == torch.bfloat16)
        assert resolve_dtype("auto", cpu) == expected
        assert resolve_dtype("fp32", cpu) == torch.float32 and resolve_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # torch before 2.6 cannot tell: fp32, the safe choice
    assert resolve_dtype("auto", cpu) == torch.float32


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_a_bf16_run_trains_and_saves_its_adapter_in_fp32(precision, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert rosa_main(["train", "--model", str(require(STORIES)), "--data", "commonsense_mix", "--data-dir", str(require(DATA)),
                      "--output-dir", str(run), "--max-steps", "1", "--max-samples", "8", "--batch-size", "4",
                      "--precision", precision, "--report-to", "none", "--set", "training.cutoff_len=512"]) == 0
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert yaml.safe_load((run / "config.yaml").read_text())["precision"] == precision
    assert json.loads((run / "run.json").read_text())["dtype"] == "bfloat16"
