"""benchmarks/generation.py: every variant timed per phase and clock, eager and compiled, on a tiny real Llama."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, STORIES, load_script, require

generation = load_script("benchmarks/generation.py")
TINY = str(REPO.parent / "shared" / "models" / "TinyStories-656K")
VARIANTS = {"base", "base-copy", "rosa", "lora", "lora-merged"}


@pytest.mark.parametrize("compile_backend", [None, "aot_eager"], ids=["eager", "compiled"])
def test_the_benchmark_times_every_variant_in_both_phases_and_clocks(tmp_path, compile_backend):
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    out = tmp_path / "generation.json"
    argv = ["--model", TINY, "--batch-sizes", "2", "--decodings", "greedy,beam4", "--new-tokens", "8", "--rounds", "1",
            "--json", str(out)]
    generation.main(argv + (["--compile", compile_backend] if compile_backend else []))
    report = json.loads(out.read_text())
    rows = {(row["decoding"], row["phase"], row["clock"]): row for row in report["results"]}
    assert set(rows) == {(decoding, phase, clock) for decoding in ("greedy", "beam4") for phase in ("prefill", "decode")
                         for clock in ("wall", "cpu")}
    for row in rows.values():
        assert set(row["seconds"]) == VARIANTS and all(seconds > 0 for seconds in row["seconds"].values())
        assert row["ratio_to_base"]["base"] == 1.0
        assert row["ratio_to_base"]["rosa"] == pytest.approx(row["seconds"]["rosa"] / row["seconds"]["base"])
    for acted in report["adapters_act"]:
        acts = acted["tokens_differ_from_base"]
        # the control does the base's work on the base's weights: the base's tokens exactly
        assert set(acts) == VARIANTS - {"base"} and not acts["base-copy"]
        assert acts["lora"]  # RoSA's change to the logits is too small to flip
        # this tiny model's tokens; tests/test_compiled.py checks that compiled RoSA generates as eager does


def test_a_shape_with_random_weights_is_timed_with_a_tokenizer_that_fits_it(tmp_path, capsys):
    """``--model tiny``: train_step's shape, random weights; the prompts come from ``--tokenizer``, and one whose
    vocabulary exceeds the model's is refused up front instead of failing inside the embedding."""
    require(STORIES / "tokenizer.json")
    out = tmp_path / "generation.json"
    generation.main(["--model", "tiny", "--tokenizer", str(STORIES), "--batch-sizes", "1", "--decodings", "greedy",
                     "--new-tokens", "4", "--rounds", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["args"]["model"] == "tiny"
    assert {row["phase"] for row in report["results"]} == {"prefill", "decode"}
    assert all(set(row["seconds"]) == VARIANTS for row in report["results"])
    with pytest.raises(SystemExit) as refused:
        generation.main(["--model", "tiny", "--tokenizer", TINY, "--rounds", "1"])
    assert refused.value.code == 2
    assert "the tokenizer has 2048 tokens, more than the model's vocabulary of 1024" in capsys.readouterr().err


def test_compiled_timing_compiles_one_decode_graph_per_distinct_model_and_shape(monkeypatch):
    """Beam search calls the model's own forward, so the benchmark compiles that forward (transformers
    compiles a call of its own for greedy decoding only) and runs the prefill eagerly, as transformers does."""
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    import torch
    from torch._dynamo.backends.registry import lookup_backend

    compiled, graphs = [], []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return lookup_backend("aot_eager")(graph, example_inputs)

    real_compile = torch.compile

    def compile_counting(function, **options):
        compiled.append(options)
        return real_compile(function, **{**options, "backend": counting_backend})

    monkeypatch.setattr(torch, "compile", compile_counting)
    torch._dynamo.reset()
    generation.main(["--model", TINY, "--batch-sizes", "1", "--decodings", "greedy,beam4", "--new-tokens", "4",
                     "--rounds", "1", "--compile", "aot_eager"])
    assert len(compiled) == len(VARIANTS)
    assert all(options == {"fullgraph": True, "dynamic": False, "backend": "aot_eager"} for options in compiled)
    shapes = 2  # greedy decodes 1 row, beam4 4 rows
    # the control runs the base's compiled code: dynamo guards on the code and the inputs, not on the module object
    assert len(graphs) == shapes * (len(VARIANTS) - 1)
    torch._dynamo.reset()


def test_decode_overhead_splits_rosas_cost_into_the_wrapper_and_the_adapter_math():
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "decode_overhead.py"), "--model", TINY,
                             "--rounds", "2", "--steps", "2", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = dict(re.findall(r"^\s*(base|base, second copy|rosa|rosa, adapter math skipped)\s+[\d.]+\s+([\d.]+)x\s+-?[\d.]+$",
                           result.stdout, re.MULTILINE))
    assert set(rows) == {"base", "base, second copy", "rosa", "rosa, adapter math skipped"} and rows["base"] == "1.000"
    control, floor = re.search(r"noise floor of this run: the base's second copy reads ([\d.]+)x; ratios within ([\d.]+) of 1",
                               result.stdout).groups()
    assert control == rows["base, second copy"] and float(floor) == pytest.approx(abs(float(control) - 1), abs=0.0015)
    assert "1 threads" in result.stdout
    assert re.search(r"one layer's adapter math: [\d.]+ µs called alone in a loop, -?[\d.]+ µs inside a decode step", result.stdout)
