"""benchmarks/generation.py and decode_overhead.py: every variant timed, eager and compiled, on a tiny real Llama."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys

import pytest

from conftest import REPO, STORIES, load_script, require

generation = load_script("benchmarks/generation.py")
decode_overhead = load_script("benchmarks/decode_overhead.py")
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


def test_decode_overhead_splits_rosas_cost_into_the_wrapper_and_the_adapter_math(tmp_path):
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    out = tmp_path / "decode.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "decode_overhead.py"), "--model", TINY,
                             "--rounds", "2", "--steps", "2", "--threads", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = dict(re.findall(r"^\s*(base|base, second copy|rosa|rosa, adapter math skipped)\s+[\d.]+\s+([\d.]+)x\s+-?[\d.]+$",
                           result.stdout, re.MULTILINE))
    assert set(rows) == {"base", "base, second copy", "rosa", "rosa, adapter math skipped"} and rows["base"] == "1.000"
    control, floor = re.search(r"noise floor of this run: the base's second copy reads ([\d.]+)x; ratios within ([\d.]+) of 1",
                               result.stdout).groups()
    assert control == rows["base, second copy"] and float(floor) == pytest.approx(abs(float(control) - 1), abs=0.0015)
    assert "1 threads" in result.stdout and "(fp32, adapter in float32, decode, eager)" in result.stdout
    assert re.search(r"one layer's adapter math: [\d.]+ µs called alone in a loop, -?[\d.]+ µs inside a decode step", result.stdout)
    report = json.loads(out.read_text())
    assert set(report["ratio_to_base"]) == set(rows) and set(report["adapter_math_us"]) == {"alone", "inside_a_step"}
    assert f"{report['ratio_to_base']['rosa']:.3f}" == rows["rosa"]


def test_decode_overhead_builds_the_adapter_in_the_dtype_asked_for(tmp_path, capsys):
    """``--adapter-dtype auto`` on a bf16 base times an adapter whose weights and math are bf16 (RoSAConfig's
    ``auto``), not the default fp32 one, and the report says which it timed."""
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    out = tmp_path / "decode.json"
    decode_overhead.main(["--model", TINY, "--dtype", "bf16", "--adapter-dtype", "auto", "--prefill", "--rounds", "1",
                          "--json", str(out)])
    assert "(bf16, adapter in bfloat16, prefill, eager)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["adapter_dtype"] == "bfloat16" and report["args"]["adapter_dtype"] == "auto"


def test_a_compiled_step_on_a_cropped_static_cache_is_the_eager_decode_step():
    """``decode_overhead.py --compile`` times one compiled step over and over, cropping the static cache back after
    each: every step must compute what eager decoding computes at that position, or it would time other work."""
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    import torch
    from transformers import DynamicCache

    torch._dynamo.reset()
    base = decode_overhead.build_base(TINY, "fp32", torch.device("cpu")).eval()
    compiled = decode_overhead.shared_copy(base).eval()
    generation.compile_decode_steps(compiled, "aot_eager")
    context = torch.randint(0, base.config.vocab_size, (2, decode_overhead.CONTEXT), generator=torch.Generator().manual_seed(0))
    token = context[:, -1:]
    with torch.no_grad():
        eager_cache = DynamicCache(config=base.config)
        base(input_ids=context, cache=eager_cache, use_cache=True)
        eager = base(input_ids=token, cache=eager_cache, use_cache=True).logits
        static_cache = decode_overhead.new_cache(base.config, compiled=True)
        compiled(input_ids=context, cache=static_cache, use_cache=True)
        steps = []
        for _ in range(3):
            steps.append(compiled(input_ids=token, cache=static_cache, use_cache=True).logits)
            static_cache.crop(-1)
    assert static_cache.get_seq_length() == decode_overhead.CONTEXT
    assert torch.equal(steps[0], steps[1]) and torch.equal(steps[0], steps[2])
    # the static cache's attention masks its one spare slot where the dynamic cache has none: the same sums
    # in another kernel, so close rather than equal
    torch.testing.assert_close(steps[0], eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_decode_overhead_compiled_times_the_base_its_copy_and_rosa(tmp_path, capsys):
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    import torch

    torch._dynamo.reset()
    out = tmp_path / "decode.json"
    decode_overhead.main(["--model", TINY, "--rounds", "3", "--steps", "2", "--compile", "aot_eager", "--json", str(out)])
    report = json.loads(out.read_text())
    variants = {"base", "base, second copy", "rosa"}  # no wrapper to time apart: the adapter is inside the graph
    assert set(report["ms_per_step"]) == set(report["ratio_to_base"]) == set(report["samples_ms"]) == variants
    for variant, samples in report["samples_ms"].items():
        assert len(samples) == 3 and report["ms_per_step"][variant] == pytest.approx(statistics.median(samples), abs=1e-3)
    assert report["ratio_to_base"]["base"] == 1.0 and "adapter_math_us" not in report
    assert report["noise_floor"] == pytest.approx(abs(report["ratio_to_base"]["base, second copy"] - 1))
    assert report["args"]["compile"] == "aot_eager"
    printed = capsys.readouterr().out
    assert "compiled (aot_eager, static cache)" in printed and "adapter math" not in printed
    torch._dynamo.reset()


def test_decode_overhead_times_the_prefill_the_same_way_eagerly_only(tmp_path, capsys):
    require(REPO.parent / "shared" / "models" / "TinyStories-656K" / "model.safetensors")
    out = tmp_path / "prefill.json"
    decode_overhead.main(["--model", TINY, "--rounds", "2", "--prefill", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["ratio_to_base"]) == {"base", "base, second copy", "rosa", "rosa, adapter math skipped"}
    assert report["args"]["prefill"] and set(report["adapter_math_us"]) == {"alone", "inside_a_step"}
    printed = capsys.readouterr().out
    assert "(fp32, adapter in float32, prefill, eager)" in printed and "µs inside a prefill step" in printed
    with pytest.raises(SystemExit) as refused:  # transformers compiles decode steps only
        decode_overhead.main(["--model", TINY, "--prefill", "--compile"])
    assert refused.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
