"""RoAE on every supported RoPE family, with eager and sdpa attention (issue: per-family proofs 1-5)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from peft import PeftModel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from conftest import FAMILIES, tiny_model, randomize_adapters
from rosa import AdapterLoadError, RoSAConfig, UnsupportedModelError, get_rosa_model
from rosa.loading import load_adapter
from rosa.roae.attention import RoSALayer

FAMILY_NAMES = sorted(FAMILIES)


def _supports_sdpa(family: str) -> bool:
    return T.MODEL_FOR_CAUSAL_LM_MAPPING[FAMILIES[family][0]]._supports_sdpa


# Every family with eager attention, and with sdpa where transformers offers it (not Gemma 2).
FAMILY_ATTENTION = [(f, a) for f in FAMILY_NAMES for a in ("eager", "sdpa") if a == "eager" or _supports_sdpa(f)]

# An attention implementation that records the (already rotated) q and k it receives, through
# transformers' own AttentionInterface: an independent witness of what RoAE did to the states.
_RECORDED: list[tuple[torch.Tensor, torch.Tensor]] = []


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    _RECORDED.append((query.detach().clone(), key.detach().clone()))
    kwargs.pop("softcap", None)  # Gemma 2's logit soft-capping; irrelevant to what is recorded
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("rosa_test_recorder", _recording_attention)
AttentionMaskInterface.register("rosa_test_recorder", sdpa_mask)


def recorded_states(model, tokens):
    _RECORDED.clear()
    with torch.no_grad():
        model(tokens, use_cache=False)
    return list(_RECORDED)


def head_geometry(family: str, model):
    config = model.config
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    rotary_dim = int(head_dim * FAMILIES[family][2])
    return head_dim, rotary_dim


def expected_low_dims(rotary_dim: int, r_low: float) -> set[int]:
    """The spec's rule for standard RoPE, computed independently: the last n_low of each half."""
    half = rotary_dim // 2
    n_low = max(1, int(r_low * half + 0.5))
    return set(range(half - n_low, half)) | set(range(2 * half - n_low, 2 * half))


@pytest.mark.parametrize(("family", "attn"), FAMILY_ATTENTION)
def test_identity_at_init(family, attn, tokens):
    base = tiny_model(family, attn)
    with torch.no_grad():
        expected = base(tokens).logits
    model = get_rosa_model(base, RoSAConfig(targets=("q", "k")))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, expected)


@pytest.mark.parametrize("targets", [("q",), ("q", "k")])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_only_low_frequency_dims_of_targets_change(family, targets, tokens):
    """Adapt one layer at a time so that layer's input is the base model's: then exactly the
    low-frequency dims of the targeted states may differ, and nothing before that layer."""
    head_dim, rotary_dim = head_geometry(family, tiny_model(family))
    low = expected_low_dims(rotary_dim, 0.25)
    for layer in range(3):
        base = tiny_model(family, "rosa_test_recorder")
        before = recorded_states(base, tokens)
        model = get_rosa_model(base, RoSAConfig(targets=targets, r_low=0.25, layers=(layer,)))
        randomize_adapters(model)
        after = recorded_states(model, tokens)
        assert len(before) == len(after) == 3
        for index in range(layer + 1):
            (q0, k0), (q1, k1) = before[index], after[index]
            for name, old, new in (("q", q0, q1), ("k", k0, k1)):
                changed = {d for d in range(head_dim) if not torch.equal(old[..., d], new[..., d])}
                expected = low if (index == layer and name in targets) else set()
                assert changed == expected, (layer, index, name, sorted(changed), sorted(expected))


def test_low_frequency_dims_follow_the_models_frequencies_not_index_positions(tokens):
    """Reorder the rotary frequencies so the lowest ones sit at pairs 0 and 1: a rule that picks the
    last indices would adapt the wrong dimensions and fail here."""
    base = tiny_model("llama", "rosa_test_recorder")
    rotary = base.model.rotary_emb
    permuted = rotary.inv_freq.flip(0).clone()
    rotary.inv_freq.copy_(permuted)
    rotary.original_inv_freq = permuted.clone()
    before = recorded_states(base, tokens)
    model = get_rosa_model(base, RoSAConfig(r_low=0.25))
    randomize_adapters(model)
    after = recorded_states(model, tokens)
    assert model.geometry.rotary[0].low_frequency_pairs == (0, 1)
    (q0, _), (q1, _) = before[0], after[0]
    changed = {d for d in range(16) if not torch.equal(q0[..., d], q1[..., d])}
    assert changed == {0, 1, 8, 9}


@pytest.mark.parametrize(("family", "attn"), FAMILY_ATTENTION)
def test_cached_generation_matches_uncached_with_keys_targeted(family, attn, tokens):
    model = get_rosa_model(tiny_model(family, attn), RoSAConfig(targets=("q", "k")))
    randomize_adapters(model, std=1.0)
    prompt = tokens[:1, :5]

    def greedy(use_cache):
        out = model.generate(
            prompt, max_new_tokens=10, do_sample=False, use_cache=use_cache,
            output_logits=True, return_dict_in_generate=True,
        )
        return out.sequences, torch.stack(out.logits)

    tokens_cached, logits_cached = greedy(True)
    tokens_uncached, logits_uncached = greedy(False)
    assert tokens_cached.shape[1] == 15
    assert torch.equal(tokens_cached, tokens_uncached)
    torch.testing.assert_close(logits_cached, logits_uncached, rtol=1e-4, atol=1e-4)
    with model.disable_adapter():
        _, logits_plain = greedy(True)
    assert (logits_plain - logits_cached).abs().max() > 1e-2, "the random adapter must matter for this test"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_trainable_parameter_count_matches_the_spec_formula(family):
    base = tiny_model(family)
    config = base.config
    model = get_rosa_model(base, RoSAConfig(rank=4, targets=("q", "k"), r_low=0.5))
    _, rotary_dim = head_geometry(family, base)
    d_low = 2 * max(1, int(0.5 * rotary_dim / 2 + 0.5))
    n_q = config.num_attention_heads
    n_k = getattr(config, "num_key_value_heads", None) or n_q
    per_layer = (4 * config.hidden_size + 4 * n_q * d_low) + (4 * config.hidden_size + 4 * n_k * d_low)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == config.num_hidden_layers * per_layer
    assert total == trainable + sum(p.numel() for p in base.parameters() if not p.requires_grad)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_load_round_trip_reproduces_logits_exactly(family, tokens, tmp_path):
    model = get_rosa_model(tiny_model(family), RoSAConfig(targets=("q", "k"), layers=(0, 2)))
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(tokens).logits
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    loaded = PeftModel.from_pretrained(tiny_model(family), tmp_path)
    assert sorted(loaded.roae_adapters()) == [0, 2]
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, expected)


@pytest.mark.parametrize(
    "change",
    [dict(hidden_size=96), dict(num_hidden_layers=2), dict(num_attention_heads=8, num_key_value_heads=4)],
    ids=["hidden_size", "layer_count", "head_layout"],
)
def test_loading_onto_a_different_base_fails_clearly(change, tmp_path):
    get_rosa_model(tiny_model("llama"), RoSAConfig()).save_pretrained(tmp_path)
    other = tiny_model("llama", **change)
    before = {n: p.clone() for n, p in other.state_dict().items()}
    with pytest.raises(AdapterLoadError, match="made for another base model"):
        PeftModel.from_pretrained(other, tmp_path)
    assert not any("roae" in name for name, _ in other.named_modules()), "a failed load must not leave adapters"
    assert not any(isinstance(module, RoSALayer) for module in other.modules())
    assert all(torch.equal(before[n], p) for n, p in other.state_dict().items())


def test_corrupted_truncated_and_foreign_adapter_files_fail_clearly(tmp_path):
    """rosa's loader (rosa.loading.load_adapter) names what is wrong with a damaged adapter directory;
    PEFT's own loader would raise a bare SafetensorError, JSONDecodeError or Hub error."""
    model = get_rosa_model(tiny_model("llama"), RoSAConfig())
    model.save_pretrained(tmp_path / "good")
    weights = (tmp_path / "good" / "adapter_model.safetensors").read_bytes()
    header = (tmp_path / "good" / "adapter_config.json").read_text()

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "adapter_config.json").write_text(header)
    (truncated / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(AdapterLoadError, match="truncated or corrupted"):
        load_adapter(tiny_model("llama"), truncated)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "adapter_config.json").write_text(header)
    (garbage / "adapter_model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(AdapterLoadError, match="truncated or corrupted"):
        load_adapter(tiny_model("llama"), garbage)

    # Any PEFT method loads now (a LoRA adapter is no longer foreign), so the foreign file is a config
    # that neither PEFT nor rosa wrote; a PEFT config whose weights are not safetensors is refused too.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text(json.dumps({"format": "other-tool", "r": 8}))
    with pytest.raises(AdapterLoadError, match="neither a PEFT adapter config nor one written by rosa"):
        load_adapter(tiny_model("llama"), foreign)
    pickled = tmp_path / "peft"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(AdapterLoadError, match="only from safetensors"):
        load_adapter(tiny_model("llama"), pickled)

    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterLoadError, match="not valid JSON"):
        load_adapter(tiny_model("llama"), bad_json)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterLoadError, match="holds no adapter_config.json"):
        load_adapter(tiny_model("llama"), empty)
    with pytest.raises(AdapterLoadError, match="neither a directory nor a Hub repository id"):
        load_adapter(tiny_model("llama"), tmp_path / "nowhere")


def test_an_adapter_whose_tensors_do_not_match_its_config_is_refused(tmp_path):
    """Layer 0's tensors renamed to a layer 9 the config never adapted: loading must fail, not leave
    layer 0 at its initialisation with only a warning."""
    from safetensors.torch import load_file, save_file

    get_rosa_model(tiny_model("llama"), RoSAConfig()).save_pretrained(tmp_path / "good")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "adapter_config.json").write_text((tmp_path / "good" / "adapter_config.json").read_text())
    tensors = load_file(tmp_path / "good" / "adapter_model.safetensors")
    assert any("layers.0." in k for k in tensors)
    save_file({k.replace("layers.0.", "layers.9."): v for k, v in tensors.items()}, renamed / "adapter_model.safetensors")
    # Fails as of the PEFT port: PEFT loads with strict=False and only warns about the missing keys
    # (rosa 0.1 refused such a file as foreign or corrupted). Reported as a src bug, not fixed here.
    with pytest.raises(AdapterLoadError, match=r"layers\.0\."):
        load_adapter(tiny_model("llama"), renamed)


def test_an_adapter_saved_when_rosa_assumed_rotate_half_is_refused_with_the_reason(tmp_path):
    """format_version 1 exists only in rosa 0.1's own format (``"format": "rosa-roae"``), read by
    rosa.loading.load_adapter."""
    model = get_rosa_model(tiny_model("llama"), RoSAConfig())
    config = model.peft_config["default"]
    tmp_path.joinpath("adapter_config.json").write_text(json.dumps({
        "format": "rosa-roae", "format_version": 1, "rosa_version": "0.1.0", "config": config.settings(),
        "base_model": {**config.base_geometry, "name_or_path": ""}, "adapted_layers": [0, 1, 2],
    }))
    from safetensors.torch import save_file

    save_file({f"layers.{i}.{name.replace('_', '.')}.weight": p.detach().clone()
               for i, adapter in model.roae_adapters().items() for name, p in adapter.named_parameters()},
              tmp_path / "adapter_model.safetensors", metadata={"format": "rosa-roae"})
    with pytest.raises(AdapterLoadError, match="format_version 1.*assumed every model pairs its RoPE dimensions rotate-half"):
        load_adapter(tiny_model("llama"), tmp_path)


@pytest.mark.parametrize(
    "config",
    [
        T.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=2),
        T.OPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32),
    ],
    ids=["gpt2", "opt"],
)
def test_models_without_rope_are_refused(config):
    model = T.AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelError, match=f"model type '{config.model_type}' has no rotary"):
        get_rosa_model(model)
