"""torch.compile captures a RoSA model whole (issue 18): no graph break of RoSA's own, the same predictions
as eager, generation with transformers' own compiled static-cache path, a partly compiled model that
still applies every adapter, and threads that each see their own adapter in eager mode.

``aot_eager`` traces like inductor does (dynamo, then AOTAutograd) without inductor's C++ compile, which
takes minutes on this CPU; the inductor figures are measured by ``benchmarks/generation.py --compile``."""

from __future__ import annotations

import threading

import pytest
import torch
import torch._dynamo
from transformers import CompileConfig, GenerationConfig

from conftest import load_script, randomize_adapters, tiny_model
from rosa import RoSAConfig, get_rosa_model
from rosa.roae import layer as roae_layer

rope_coverage = load_script("scripts/rope_coverage.py")

FAMILIES = {  # one of each way RoAE reaches the rotated states
    "llama": "rotate-half, [batch, heads, seq, dim]",
    "cohere": "interleaved pairs",
    "phi": "partial rotary, the rotated part split off before RoPE",
    "deepseek_v3": "multi-head latent attention, one shared rotary key head",
    "hy_v4": "a token indexer nested in the attention, with RoPE of its own",
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def rosa_model(family: str):
    base = rope_coverage.tiny_model(family)
    model = get_rosa_model(base, RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize_adapters(model)
    return model


def adapter_matmuls(model, tokens) -> int:
    """How many ``torch.mm`` calls the whole-model graph dynamo captures holds (``fullgraph=True`` raises
    at any break); the base models here project with ``F.linear``, so every one is an adapter's."""
    graphs = []

    def count(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    with torch.no_grad():
        torch.compile(model, backend=count, fullgraph=True)(tokens)
    (graph,) = graphs
    return sum(node.op == "call_function" and node.target is torch.mm for node in graph.graph.nodes)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_whole_model_compiles_as_one_graph_and_predicts_like_eager(family, tokens, monkeypatch):
    """Each of these plain models compiles as one graph (``fullgraph=True`` raises at any break). With the
    adapter's projections as matmuls, as eager runs them, the compiled model gives eager's bits."""
    monkeypatch.setattr(roae_layer, "SUMMED_ROWS", 0)
    model = rosa_model(family)
    with torch.no_grad():
        eager = model(tokens).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(tokens).logits
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_compiled_decode_step_sums_products_instead_of_calling_matmuls(family, tokens):
    """Up to ``SUMMED_ROWS`` rows the compiled adapter has no matmul call left for inductor to keep (two
    per target otherwise), and predicts like eager within fp32 rounding: only the summation order differs."""
    model = rosa_model(family)
    targets = sum(len(adapter.heads) for adapter in model.roae_adapters().values())
    assert tokens.numel() <= roae_layer.SUMMED_ROWS
    assert adapter_matmuls(model, tokens) == 0
    with torch.no_grad():
        eager = model(tokens).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(tokens).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)  # fp32 rounding, carried through every layer
    assert not torch.equal(compiled, eager), "the summed products should round differently from a matmul"
    torch._dynamo.reset()
    many = tokens.repeat(roae_layer.SUMMED_ROWS // tokens.shape[1] + 1, 1)
    assert adapter_matmuls(model, many) == 2 * targets


def test_generate_with_transformers_compiled_static_cache_matches_eager(tokens):
    """transformers compiles the forward itself when generating with a static cache (on GPUs by default);
    here forced on the CPU, with ``fullgraph=True`` so any graph break fails."""
    model = get_rosa_model(tiny_model("llama", attn="sdpa"), RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize_adapters(model)
    eager_config = GenerationConfig(max_new_tokens=6, do_sample=False, cache_implementation="static", pad_token_id=0,
                                    disable_compile=True)
    config = GenerationConfig(**{**eager_config.to_diff_dict(), "disable_compile": False})
    config.compile_config = CompileConfig(fullgraph=True, dynamic=False, backend="aot_eager", mode=None)
    config.compile_config._compile_all_devices = True
    with torch.no_grad():
        eager = model.generate(tokens, generation_config=eager_config)
        compiled = model.generate(tokens, generation_config=config)
        with model.disable_adapter():
            base = model.generate(tokens, generation_config=eager_config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "generate did not compile"
    assert torch.equal(compiled, eager)
    assert not torch.equal(eager, base), "the adapters should change what is generated"


def test_beam_search_with_a_compiled_forward_matches_eager(tokens):
    """transformers' beam search calls the model's own forward; compiled by the user, as
    docs/inference-cost.md shows, it must generate what eager beam search generates."""
    model = get_rosa_model(tiny_model("llama", attn="sdpa"), RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize_adapters(model)
    config = GenerationConfig(max_new_tokens=6, num_beams=3, do_sample=False, cache_implementation="static",
                              pad_token_id=0, disable_compile=True)
    with torch.no_grad():
        eager = model.generate(tokens, generation_config=config)
        inner = model.get_base_model()
        inner.forward = torch.compile(inner.forward, fullgraph=True, dynamic=False, backend="aot_eager")
        compiled = model.generate(tokens, generation_config=config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2, "prefill and decode should have compiled"
    assert torch.equal(compiled, eager)


def test_a_compiled_attention_inside_an_eager_rosa_layer_still_applies_the_adapter(tokens, monkeypatch):
    """The adapter published outside the compiled region is read inside it (as a graph break), never skipped."""
    monkeypatch.setattr(roae_layer, "SUMMED_ROWS", 0)  # matmuls, as in eager, so the check is bitwise
    model = get_rosa_model(tiny_model("llama", attn="sdpa"), RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize_adapters(model)
    with torch.no_grad():
        eager = model(tokens).logits
        with model.disable_adapter():
            base = model(tokens).logits
        for layer in model.get_base_model().model.layers:
            layer.self_attn.base_layer.compile(backend="aot_eager")
        partly_compiled = model(tokens).logits
    assert torch.equal(partly_compiled, eager) and not torch.equal(eager, base)


def test_threads_running_two_rosa_models_each_apply_their_own_adapter(tokens):
    models = []
    for seed in (1, 2):
        model = get_rosa_model(tiny_model("llama"), RoSAConfig(targets=("q", "k"), init_seed=0))
        randomize_adapters(model, seed=seed)
        models.append(model)
    with torch.no_grad():
        expected = [model(tokens).logits for model in models]
    assert not torch.equal(*expected)
    mismatches = []

    def run(model, reference):
        with torch.no_grad():
            for _ in range(25):
                if not torch.equal(model(tokens).logits, reference):
                    mismatches.append(model)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(models, expected)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches


def test_a_graph_break_inside_an_adapted_block_still_applies_the_adapter_and_leaves_nothing_published(tokens, monkeypatch):
    """An attention function dynamo cannot trace splits each adapted block; the adapter published in the
    traced part must reach the rotary call, and nothing may stay published afterwards."""
    monkeypatch.setattr(roae_layer, "SUMMED_ROWS", 0)  # matmuls, as in eager, so the check is bitwise
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from rosa.roae import rotary_hook

    def untraceable_attention(*args, **kwargs):
        torch._dynamo.graph_break()
        return sdpa_attention_forward(*args, **kwargs)

    AttentionInterface.register("rosa_test_graph_break", untraceable_attention)
    model = get_rosa_model(tiny_model("llama", attn="sdpa"), RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize_adapters(model)
    with torch.no_grad():
        eager = model(tokens).logits
        model.get_base_model().set_attn_implementation("rosa_test_graph_break")
        compiled = torch.compile(model, backend="aot_eager")(tokens).logits
    assert torch._dynamo.utils.counters["graph_break"], "the attention function should have split the graph"
    assert torch.equal(compiled, eager)
    assert rotary_hook._ACTIVE.traced == [] and rotary_hook._published == 0
