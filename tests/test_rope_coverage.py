"""scripts/rope_coverage.py on the families the project names: each is supported and passes every
measured check (identity, exactly the lowest-frequency dims of q and k change in every RoPE layer,
cached = uncached generation), or is refused before any work with the true reason."""

from __future__ import annotations

import pytest

from conftest import load_script

rope_coverage = load_script("scripts/rope_coverage.py")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 32,
            "short_factor": [1.0, 1.0, 1.1, 1.3, 1.6, 2.0, 2.6, 3.3], "long_factor": [1.0, 1.2, 1.5, 2.0, 2.6, 3.4, 4.3, 5.5]}

# (family, extra config, layout every RoPE layer must be measured in, layers without RoPE)
SUPPORTED = [
    # interleaved RoPE: these adapted the rotate-half pairs before
    ("cohere", {}, "interleaved", []),
    ("cohere2", {}, "interleaved", [2]),  # its full-attention layer applies no RoPE
    ("glm", {}, "interleaved", []),
    ("glm4", {}, "interleaved", []),
    ("ernie4_5", {}, "interleaved", []),
    ("helium", {}, "interleaved", []),
    # one rotary embedding per layer type
    ("gemma3_text", {}, "rotate_half", []),
    ("olmo3", {}, "rotate_half", []),
    ("exaone4", {}, "rotate_half", [2]),
    # multi-head latent attention: only the decoupled rotary part, one shared rotary key head
    ("deepseek_v3", {}, "rotate_half", []),  # interleaved input, permuted to rotate-half by the model
    ("deepseek_v3", {"rope_interleave": False}, "rotate_half", []),
    ("minicpm3", {}, "rotate_half", []),
    # a token indexer nested in the attention applies RoPE of its own first: only the block's call is adapted
    ("hy_v4", {}, "rotate_half", []),
    # one shared key head (falcon-7b), mixture-of-attention heads
    ("falcon", {}, "rotate_half", []),
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}, "rotate_half", []),
    ("jetmoe", {}, "rotate_half", []),
    # families that passed before, with scaled RoPE and sliding windows
    ("llama", {}, "rotate_half", []),
    ("llama", {"rope_parameters": LLAMA3}, "rotate_half", []),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 32}}, "rotate_half", []),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}, "rotate_half", []),
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}, "rotate_half", []),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4}, "rotate_half", []),
    ("mistral", {"sliding_window": 4}, "rotate_half", []),
    ("stablelm", {}, "rotate_half", []),
    ("phi", {}, "rotate_half", []),
    ("gpt_neox", {}, "rotate_half", []),
    ("persimmon", {}, "rotate_half", []),
    ("nemotron", {}, "rotate_half", []),
    ("starcoder2", {}, "rotate_half", []),
    ("qwen3_moe", {}, "rotate_half", []),
    ("mixtral", {}, "rotate_half", []),
    ("qwen2_moe", {}, "rotate_half", []),
    ("olmoe", {}, "rotate_half", []),
    ("phimoe", {}, "rotate_half", []),  # frequencies from the config on each call: dims stated in the script
    ("dbrx", {}, "rotate_half", []),
    ("glm4_moe", {}, "rotate_half", []),
    ("phi3", {"rope_parameters": LONGROPE}, "rotate_half", []),
    ("smollm3", {"no_rope_layer_interval": 3}, "rotate_half", [2]),  # NoPE layers from config.no_rope_layers
    ("gpt_oss", {}, "rotate_half", []),
    ("granite", {}, "rotate_half", []),
    ("diffllama", {}, "rotate_half", []),
    ("bamba", {}, "rotate_half", [0, 2]),  # mamba layers
    ("falcon_h1", {}, "rotate_half", []),
    ("hunyuan_v1_dense", {}, "rotate_half", []),
    ("seed_oss", {}, "rotate_half", []),
    ("apertus", {}, "rotate_half", []),
    ("arcee", {}, "rotate_half", []),
    ("bitnet", {}, "rotate_half", []),
]

REFUSED = [
    ("gptj", r"rotates with apply_rotary_pos_emb\('tensor', 'sin', 'cos'\).*separate calls"),
    ("codegen", r"rotates with apply_rotary_pos_emb\('tensor', 'sin', 'cos'\).*separate calls"),
    ("gpt2", r"model type 'gpt2' has no rotary position embedding"),
]


def _id(case) -> str:
    family, extra = case[0], case[1]
    return family + "".join(f"-{k}={v['rope_type'] if isinstance(v, dict) else v}" for k, v in extra.items())


@pytest.mark.parametrize("case", SUPPORTED, ids=[_id(c) for c in SUPPORTED])
def test_supported_family_adapts_exactly_its_lowest_frequency_dims(case):
    family, extra, layout, without_rope = case
    row = rope_coverage.check_family(family, **extra)
    assert row.status == "supported", row.detail
    assert row.failures == [], row.failures
    assert row.detail.startswith(f"{layout};"), row.detail
    # every check was made, except where the witness cannot measure a family and the script says so
    unmade = [note for note in ("not checked", "not measured", "dims stated") if note in row.detail]
    assert unmade == (["dims stated"] if family == "phimoe" else []), row.detail
    assert (f"without RoPE: {without_rope}" in row.detail) == bool(without_rope), row.detail


@pytest.mark.parametrize(("family", "reason"), REFUSED, ids=[f for f, _ in REFUSED])
def test_unsupported_family_is_refused_with_the_true_reason(family, reason):
    row = rope_coverage.check_family(family)
    assert row.status == "refused"
    assert __import__("re").search(reason, row.detail), row.detail


def test_the_measured_check_catches_a_wrong_layout(monkeypatch):
    """The witness must fail an adapter that modulates the rotate-half pairs of an interleaved
    family, which is what rosa did before it measured layouts."""
    from rosa.roae import layout

    monkeypatch.setattr(layout.RotaryLayout, "low_frequency_dims",
                        lambda self, n_low: sorted(d for i in self.low_frequency_pairs(n_low) for d in (i, i + self.n_pairs)))
    row = rope_coverage.check_family("cohere")
    assert any("changed dims [6, 7, 14, 15], lowest-frequency dims [12, 13, 14, 15]" in f for f in row.failures), row.failures


def test_the_nested_indexer_is_shielded_only_while_rosa_needs_it():
    """HunYuan V4's token indexer gets hooks that hide its RoPE from the wrapper while a probe or an
    adapter needs them; probing alone leaves none, and unload() removes the adapter's."""
    from rosa import RoSAConfig, get_rosa_model
    from rosa.roae import rotary_geometry

    base = rope_coverage.tiny_model("hy_v4")
    indexers = [m for m in base.modules() if type(m).__name__ == "HYV4Indexer"]
    assert indexers  # not every layer has one

    def hooked():
        return [bool(m._forward_pre_hooks or m._forward_hooks or "_rosa_shield" in m.__dict__) for m in indexers]

    rotary_geometry(base)
    assert hooked() == [False] * len(indexers)
    model = get_rosa_model(base, RoSAConfig())
    assert hooked() == [True] * len(indexers)
    model.unload()
    assert hooked() == [False] * len(indexers)


def test_a_deep_copy_carries_its_own_shields():
    """Unloading a copy of a RoSA model gives back the copy's shields, never the original's."""
    import copy

    from rosa import RoSAConfig, get_rosa_model

    model = get_rosa_model(rope_coverage.tiny_model("hy_v4"), RoSAConfig())
    twin = copy.deepcopy(model)
    unloaded = twin.unload()

    def shields(root):
        return [m.__dict__.get("_rosa_shield", {}).get("holders") for m in root.modules() if type(m).__name__ == "HYV4Indexer"]

    assert shields(unloaded) and set(shields(unloaded)) == {None}
    assert set(shields(model)) == {1}
    assert all(m._forward_pre_hooks for m in model.modules() if type(m).__name__ == "HYV4Indexer")
