"""``rosa analyze``: observing RoPE-rotated states, activation strength, DLS selection views, plots, CLI."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch
import transformers as T

from conftest import DATA, STORIES, randomize_adapters, require, tiny_model
from processes import HANG_GUARD
from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, RoSAError, get_rosa_model
from rosa.analyze import activation_strength, analyze_layers, load_prompts, save_activation_report, selection_summary, step_matrix
from rosa.analyze.activations import low_frequency_contrast
from rosa.cli import main
from rosa.analyze.plots import LOW_FREQUENCY_COLOR, selection_frequency, selection_heatmap, strength_heatmap
from rosa.loading import load_base_model, load_tokenizer
from rosa.roae.rotary_hook import _OBSERVER, observe_rotary_states

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = [
    "Once upon a time there was a little cat.",
    "Hi",
    "The dog ran to the park and played with a red ball all day long until the sun went down.",
    "Lily and Tom went to the shop.",
    "A big fish",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(require(STORIES)))


def capture(model, **inputs) -> dict[int, tuple[torch.Tensor, torch.Tensor, int]]:
    seen = {}
    with torch.no_grad(), observe_rotary_states(model, lambda i, q, k, axis: seen.setdefault(i, (q.clone(), k.clone(), axis))):
        model(**inputs, use_cache=False)
    return seen


# -- observation ------------------------------------------------------------------------------------
def test_observed_states_are_the_rotated_projections_and_logits_are_unchanged(tokens):
    model = tiny_model("llama")
    with torch.no_grad():
        expected = model(tokens).logits
        seen = {}
        with observe_rotary_states(model, lambda i, q, k, axis: seen.setdefault(i, (q.clone(), k.clone(), axis))) as layers:
            logits = model(tokens).logits
    assert torch.equal(logits, expected)
    assert layers == [0, 1, 2] and sorted(seen) == [0, 1, 2]

    # Layer 0 by hand: input norm of the embeddings, projections split into heads, the family's own RoPE.
    attention = model.model.layers[0].self_attn
    rope = inspect.unwrap(sys.modules[type(attention).__module__].apply_rotary_pos_emb)
    with torch.no_grad():
        hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(tokens))
        q = attention.q_proj(hidden).view(2, 12, 4, 16).transpose(1, 2)
        k = attention.k_proj(hidden).view(2, 12, 2, 16).transpose(1, 2)
        cos, sin = model.model.rotary_emb(hidden, torch.arange(12)[None])
        q, k = rope(q, k, cos, sin)
    observed_q, observed_k, heads_axis = seen[0]
    assert heads_axis == 1
    torch.testing.assert_close(observed_q, q)
    torch.testing.assert_close(observed_k, k)


def test_observation_is_withdrawn_on_exit_and_when_a_forward_raises(tokens):
    model = tiny_model("llama")
    calls = []
    with observe_rotary_states(model, lambda i, q, k, axis: calls.append(i)):
        pass
    with pytest.raises(ZeroDivisionError), torch.no_grad():
        with observe_rotary_states(model, lambda i, q, k, axis: 1 / 0):
            model(tokens)
    assert _OBSERVER.get() is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        model(tokens)
    assert calls == []


def test_with_a_rosa_adapter_the_observed_queries_are_the_modulated_ones(tokens):
    model = get_rosa_model(tiny_model("llama"))
    randomize_adapters(model)
    adapted = capture(model, input_ids=tokens)[0]
    with model.disable_adapter():
        base = capture(model, input_ids=tokens)[0]
    changed = (adapted[0] != base[0]).flatten(0, 2).any(dim=0).nonzero().flatten().tolist()
    assert changed == [6, 7, 14, 15]  # layer 0 sees the base input: only its low-frequency query dims move
    assert torch.equal(adapted[1], base[1])


# -- activation strength ----------------------------------------------------------------------------
def direct_strength(model, tokenizer, prompts):
    """The definition computed one unpadded prompt at a time, from the observed states."""
    norms, per_head, n_tokens = {}, {}, 0
    for prompt in prompts:
        ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
        n_tokens += ids.shape[1]
        for layer, (q, k, _) in capture(model, input_ids=ids).items():
            for name, z in (("query", q[0].transpose(0, 1)), ("key", k[0].transpose(0, 1))):  # [tokens, heads, dim]
                norms[(name, layer)] = norms.get((name, layer), 0) + z.double().pow(2).sum(1).sqrt().sum(0)
                per_head[(name, layer)] = per_head.get((name, layer), 0) + z.double().abs().sum(0)
    return {key: value / n_tokens for key, value in norms.items()}, {key: v / n_tokens for key, v in per_head.items()}, n_tokens


def test_strength_matches_the_definition_and_batched_equals_one_prompt_at_a_time(tokenizer):
    model = tiny_model("llama", vocab_size=512)
    batched = activation_strength(model, tokenizer, PROMPTS, batch_size=3)
    single = activation_strength(model, tokenizer, PROMPTS, batch_size=1)
    norms, per_head, n_tokens = direct_strength(model, tokenizer, PROMPTS)
    assert batched["tokens"] == single["tokens"] == n_tokens
    for name in ("query", "key"):
        for row, layer in enumerate(batched["layers"]):
            expected = norms[(name, layer)].float()
            torch.testing.assert_close(torch.tensor(batched[name][row]), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.tensor(single[name][row]), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.tensor(batched[f"{name}_per_head"][row]), per_head[(name, layer)].float(), rtol=1e-5, atol=1e-5)
    # GQA: 4 query heads, 2 key/value heads
    assert (batched["query_heads"], batched["key_heads"]) == (4, 2)
    assert len(batched["query_per_head"][0]) == 4 and len(batched["key_per_head"][0]) == 2


def low_dims(report) -> list[list[int]]:
    """Each measured layer's low-frequency dims, from the report's flags."""
    return [[d for d, low in enumerate(row) if low] for row in report["low_frequency"]]


@pytest.mark.parametrize("family", ["phi", "gpt_neox"])
def test_partial_rotary_dims_have_no_frequency(family, tokenizer):
    report = activation_strength(tiny_model(family, vocab_size=512), tokenizer, PROMPTS[:2])
    # Phi hands only the rotated half to its rotary function; GPT-NeoX hands the whole head and rotates half
    width = 8 if family == "phi" else 16
    assert report["head_dim"] == 16 and report["r_low"] == 0.25
    assert [(g["layers"], g["dim"], g["layout"], g["rotary_pairs"], g["low_frequency_pairs"], g["low_frequency_dims"])
            for g in report["rotary"]] == [([0, 1, 2], width, "rotate_half", 4, [3], [3, 7])]
    assert not {"rotary_dim", "n_pairs", "n_low_pairs"} & set(report)
    assert len(report["frequency"]) == len(report["low_frequency"]) == 3
    for row in report["frequency"]:
        assert row[8:] == [None] * 8 and all(f is not None for f in row[:8]) and row[:4] == row[4:8]
    assert low_dims(report) == [[3, 7]] * 3
    assert report["observed_dims"] == [width] * 3
    if family == "phi":  # the dims split off before RoPE are not observed
        assert all(row[8:] == [None] * 8 and None not in row[:8] for row in report["query"])
    else:
        assert all(None not in row for row in report["query"] + report["key"])


def test_an_interleaved_family_reports_adjacent_pairs(tokenizer):
    """Cohere pairs dims 2i and 2i+1: the low-frequency dims are the last four, each pair at its inv_freq."""
    config = T.CohereConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    report = activation_strength(model, tokenizer, PROMPTS[:2])
    assert report["head_dim"] == 16 and report["layers"] == [0, 1, 2]
    [group] = report["rotary"]
    assert (group["layout"], group["dim"], group["rotary_pairs"]) == ("interleaved", 16, 8)
    assert group["pairs"] == [[2 * i, 2 * i + 1] for i in range(8)]
    assert (group["low_frequency_pairs"], group["low_frequency_dims"]) == ([6, 7], [12, 13, 14, 15])
    assert low_dims(report) == [[12, 13, 14, 15]] * 3
    inv_freq = model.model.rotary_emb.inv_freq.tolist()
    for row in report["frequency"]:
        assert row[0::2] == pytest.approx(inv_freq, rel=1e-6) and row[1::2] == pytest.approx(inv_freq, rel=1e-6)
    for (layer, low, other), values in zip(low_frequency_contrast(report, "query"), report["query"]):
        assert low == pytest.approx(sum(values[12:]) / 4) and other == pytest.approx(sum(values[:12]) / 12)


def test_gemma3_layer_types_report_their_own_frequencies(tokenizer):
    """Gemma 3's sliding and full-attention layers rotate with different bases: each row has its own."""
    config = T.Gemma3TextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        sliding_window=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    report = activation_strength(model, tokenizer, PROMPTS[:2])
    assert [(g["layers"], g["layer_type"], g["layout"], g["low_frequency_dims"]) for g in report["rotary"]] == [
        ([0, 1], "sliding_attention", "rotate_half", [6, 7, 14, 15]),
        ([2], "full_attention", "rotate_half", [6, 7, 14, 15]),
    ]
    embedding = model.model.rotary_emb
    for row, layer_type in zip(report["frequency"], config.layer_types):
        inv_freq = getattr(embedding, f"{layer_type}_inv_freq").tolist()
        assert row[:8] == pytest.approx(inv_freq, rel=1e-6) and row[8:] == pytest.approx(inv_freq, rel=1e-6)
    assert report["frequency"][0] == report["frequency"][1]
    assert report["frequency"][2][1:8] != pytest.approx(report["frequency"][0][1:8], rel=1e-3)
    assert low_dims(report) == [[6, 7, 14, 15]] * 3

    ax = strength_heatmap(report, "query").axes[0]
    assert ax.child_axes[0].get_xlabel() == "rotary frequency of the dimension in layer 0 (radians per position; other layers differ)"
    # the same low-frequency dims in every layer: one outline per half of the head, spanning all three rows
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in ax.patches] == [(5.5, -0.5, 2, 3), (13.5, -0.5, 2, 3)]


def test_mla_reports_only_the_decoupled_rotary_dims(tokenizer):
    """DeepSeek-V3 rotates an 8-dim part of each 24-dim query head (and one shared key head): rows are 8 wide."""
    config = T.DeepseekV3Config(
        vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    report = activation_strength(model, tokenizer, PROMPTS[:2])
    assert (report["head_dim"], report["observed_dims"], report["query_heads"], report["key_heads"]) == (8, [8, 8], 4, 1)
    assert [(g["function"], g["dim"], g["layout"], g["low_frequency_dims"]) for g in report["rotary"]] == [
        ("apply_rotary_pos_emb_interleave", 8, "rotate_half", [3, 7])  # the interleaved input comes out rotate-half
    ]
    inv_freq = model.model.rotary_emb.inv_freq.tolist()
    assert all(row == pytest.approx(inv_freq * 2, rel=1e-6) for row in report["frequency"])
    assert low_dims(report) == [[3, 7]] * 2 and all(len(row) == 8 and None not in row for row in report["query"])


def test_each_layer_is_outlined_and_contrasted_with_its_own_low_frequency_dims():
    low = [[False, False, True, True], [False, False, True, True], [True, True, False, False]]
    report = {
        "model": "synthetic", "layers": [0, 1, 3], "r_low": 0.5, "tokens": 10, "prompts": 1,
        "rotary": [{"layers": [0, 1], "rotary_pairs": 2, "low_frequency_pairs": [1]},
                   {"layers": [3], "rotary_pairs": 4, "low_frequency_pairs": [0, 1]}],
        "frequency": [[1.0, 1.0, 0.1, 0.1], [1.0, 1.0, 0.1, 0.1], [0.01, 0.01, 0.1, None]],
        "low_frequency": low,
        "query": [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 5.0, None]],
    }
    assert low_frequency_contrast(report, "query") == [(0, 3.5, 1.5), (1, 3.5, 1.5), (3, 2.0, 5.0)]
    figure = strength_heatmap(report, "query")
    ax = figure.axes[0]
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in ax.patches] == [(1.5, -0.5, 2, 2), (-0.5, 1.5, 2, 1)]
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["1.0e+00", "1.0e+00", "1.0e-01", "1.0e-01"]
    assert [t.get_color() == LOW_FREQUENCY_COLOR for t in top.get_xticklabels()] == low[0]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["low-frequency dims (r_low=0.5: layers 0-1: 1 of 2 pairs; layers 3: 2 of 4 pairs)",
                      "not observed (split off before RoPE)"]


def test_nope_layers_are_absent_and_listed(tokenizer):
    config = T.SmolLM3Config(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, no_rope_layers=[1, 0, 1], pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    report = activation_strength(T.AutoModelForCausalLM.from_config(config).eval(), tokenizer, PROMPTS[:2])
    assert report["layers"] == [0, 2] and report["nope_layers"] == [1] and len(report["query"]) == 2


def test_the_real_model_report_and_its_figures(tmp_path, tokenizer):
    model = load_base_model(str(require(STORIES)), precision="fp32", device=torch.device("cpu"))
    report = activation_strength(model, tokenizer, PROMPTS)
    assert report["n_layers"] == 5 and report["layers"] == list(range(5))
    assert len(report["query"]) == len(report["key"]) == 5 and all(len(row) == 8 for row in report["query"] + report["key"])
    expected = [1 / 10000 ** (2 * i / 8) for i in range(4)] * 2
    assert len(report["frequency"]) == 5 and all(row == pytest.approx(expected, rel=1e-6) for row in report["frequency"])
    assert report["head_dim"] == 8 and report["observed_dims"] == [8] * 5 and low_dims(report) == [[3, 7]] * 5
    assert [(g["layers"], g["layout"], g["rotary_pairs"], g["low_frequency_dims"]) for g in report["rotary"]] == [
        ([0, 1, 2, 3, 4], "rotate_half", 4, [3, 7])
    ]
    assert "sqrt(sum over heads" in report["definition"] and "the layer's rotary function" in report["definition"]

    figure = strength_heatmap(report, "query")
    ax = figure.axes[0]
    assert "query states after RoPE" in ax.get_title() and f"{report['tokens']:,} tokens" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.images[0].colorbar.ax.get_ylabel() == "mean L2 norm over heads"
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()][:4] == ["1.0e+00", "1.0e-01", "1.0e-02", "1.0e-03"]
    assert top.get_xlabel() == "rotary frequency of the dimension (radians per position)"
    # the two low-frequency blocks over all five layers, and their legend
    assert [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in ax.patches] == [(2.5, -0.5, 1, 5), (6.5, -0.5, 1, 5)]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["low-frequency dims (r_low=0.25: 1 of 4 pairs)"]

    paths = save_activation_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["activations.json", "query_strength.png", "key_strength.png"]
    assert json.loads(paths[0].read_text())["query"] == report["query"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths[1:])


def test_prompts_from_a_text_file_skip_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first\n\n  second  \nthird\n")
    assert load_prompts(str(path), limit=2) == ["first", "second"]
    assert load_prompts(str(path), limit=None) == ["first", "second", "third"]


# -- DLS layer selection ----------------------------------------------------------------------------
def record(step: int, selected: list[int], kind: str) -> dict:
    return {"step": step, "scored_at_step": step - 1, "scores": [1.0] * 4, "selected": selected, "kind": kind}


def synthetic_history() -> dict:
    return {
        "config": DLSConfig(warmup=3, interval=2, k_ratio=0.5).to_dict(),
        "n_layers": 4,
        "step_count": 9,
        "selected": [2, 3],
        # the last selection is made at the run's final step, so it trains no step
        "history": [record(3, [0, 2], "exploit"), record(5, [1, 2], "explore"), record(7, [0, 2], "exploit"), record(9, [2, 3], "exploit")],
        "generator_state": [],
    }


def test_step_matrix_and_counts_of_a_known_history():
    summary = selection_summary(synthetic_history(), "run-a")
    N, W, X, R = 0, 1, 2, 3  # not trained, warm-up, exploit, explore
    assert summary["matrix"] == [
        [W, W, W, X, X, N, N, X, X],
        [W, W, W, N, N, R, R, N, N],
        [W, W, W, X, X, R, R, X, X],
        [W, W, W, N, N, N, N, N, N],
    ]
    rows = [(r["exploit"], r["explore"], r["total"], r["fraction"], r["trained_steps"]) for r in summary["layers"]]
    assert rows == [(2, 0, 2, 0.5, 7), (0, 1, 1, 0.25, 5), (3, 1, 4, 1.0, 9), (1, 0, 1, 0.25, 3)]
    assert (summary["k"], summary["interval"], summary["warmup"], summary["steps"], summary["selection_events"]) == (2, 2, 3, 9, 4)


def test_step_matrix_shows_the_layers_a_real_selector_trained():
    model = get_rosa_model(tiny_model("llama", num_hidden_layers=4), RoSAConfig(init_seed=0)).train()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=3, interval=2, k_ratio=0.5, p_exploit=0.5, seed=3))
    trained = []
    for step in range(11):
        trained.append(list(selector.selected))
        tokens = torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(step))
        model(tokens, labels=tokens).loss.backward()
        selector.step()
        model.zero_grad(set_to_none=True)
    matrix = step_matrix({"config": selector.config.to_dict(), **selector.state_dict()})
    assert [sorted(matrix[:, j].nonzero()[0].tolist()) for j in range(11)] == trained


def test_layers_writes_json_and_figures(tmp_path):
    run = tmp_path / "run-a"
    run.mkdir()
    (run / "dls_history.json").write_text(json.dumps(synthetic_history()))
    summary, paths = analyze_layers(run)
    assert [p.name for p in paths] == ["dls_selection.json", "dls_selection.png", "dls_frequency.png"]
    assert all(p.parent == run / "analysis" for p in paths)
    assert json.loads(paths[0].read_text()) == summary
    assert all(p.stat().st_size > 0 and p.read_bytes().startswith(PNG_MAGIC) for p in paths[1:])

    heatmap = selection_heatmap(summary).axes[0]
    assert "run-a" in heatmap.get_title() and "k=2" in heatmap.get_title() and "every 2 steps" in heatmap.get_title()
    assert heatmap.get_xlabel() == "optimizer step" and heatmap.get_ylabel() == "layer"
    colorbar = heatmap.images[0].colorbar
    assert [t.get_text() for t in colorbar.ax.get_yticklabels()] == summary["categories"]
    frequency = selection_frequency(summary).axes[0]
    assert frequency.get_title() and frequency.get_xlabel() and frequency.get_ylabel()
    assert [t.get_text() for t in frequency.get_legend().get_texts()] == ["exploit (top-k by score)", "explore (random)"]


def test_a_run_without_dls_history_names_its_method(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"method": "lora"}))
    with pytest.raises(RoSAError, match="method is 'lora'; only rosa and lora-dls runs have DLS selections"):
        analyze_layers(tmp_path)


# -- command line -----------------------------------------------------------------------------------
def rosa(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rosa.cli", "analyze", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_both_analyses_exit_0_and_write_their_files(tmp_path):
    """Both commands run at once: each process spends seconds importing torch and transformers."""
    run = tmp_path / "run-a"
    run.mkdir()
    (run / "dls_history.json").write_text(json.dumps(synthetic_history()))
    out = tmp_path / "activations"
    activations = rosa("activations", "--model", str(require(STORIES)), "--prompts", "boolq", "--data-dir", str(require(DATA)),
                       "--limit", "4", "--precision", "fp32", "--output", str(out))
    layers = rosa("layers", str(run), "--output", str(tmp_path / "layers"))
    (a_stdout, a_stderr), (l_stdout, l_stderr) = activations.communicate(timeout=HANG_GUARD), layers.communicate(timeout=HANG_GUARD)

    assert activations.returncode == 0, a_stderr
    assert {p.name for p in out.iterdir()} == {"activations.json", "query_strength.png", "key_strength.png"}
    assert json.loads((out / "activations.json").read_text())["prompts"] == 4
    assert "low-freq" in a_stdout
    assert "  layers 0-4 (rotate_half, 4 pairs in 8 dims) -> [3, 7]" in a_stdout.splitlines()
    assert layers.returncode == 0, l_stderr
    assert {p.name for p in (tmp_path / "layers").iterdir()} == {"dls_selection.json", "dls_selection.png", "dls_frequency.png"}
    assert "    2        3        1      4      1.00              9" in l_stdout.splitlines()


def test_cli_errors_exit_2_with_the_reason(tmp_path, capsys):
    assert main(["analyze", "layers", str(tmp_path)]) == 2
    assert "only rosa and lora-dls runs have DLS selections" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["analyze", "activations", "--model", str(require(STORIES)), "--output", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "keep me"
