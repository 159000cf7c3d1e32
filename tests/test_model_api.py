"""The RoSA PeftModel behaves like the model it wraps (PEFT's API), in fp32, bf16 and fp16."""

from __future__ import annotations

import pytest
import torch

from peft import PeftModel

from conftest import randomize_adapters, tiny_model
from rosa import RoSAConfig, get_rosa_model


def _adapter_parameters(model) -> list[torch.nn.Parameter]:
    """Every RoAE parameter of the active adapter."""
    return [p for adapter in model.roae_adapters().values() for p in adapter.parameters()]


def test_print_trainable_parameters_uses_the_peft_format(capsys):
    model = get_rosa_model(tiny_model("llama"), RoSAConfig(rank=2))
    model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()
    # 3 layers x (2*64 + 2*4 heads*4 low dims)
    assert trainable == 3 * (2 * 64 + 2 * 4 * 4)
    assert capsys.readouterr().out == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}\n"
    )


def test_base_is_frozen_and_attributes_reach_it(tokens):
    base = tiny_model("qwen2")
    model = get_rosa_model(base)
    assert model.config is base.config
    assert model.get_input_embeddings() is base.get_input_embeddings()
    assert all(not p.requires_grad for n, p in model.named_parameters() if "rosa_roae" not in n)
    assert all(p.requires_grad for n, p in model.named_parameters() if "rosa_roae" in n)
    assert sum("rosa_roae" in n for n, _ in model.named_parameters()) == 6  # 3 layers x q x (A, B)
    model.train()
    assert base.training
    model.eval()
    assert not base.training


def test_disable_adapter_runs_the_base_model_and_restores(tokens):
    base = tiny_model("mistral")
    with torch.no_grad():
        expected = base(tokens).logits
    model = get_rosa_model(base)
    randomize_adapters(model)
    with torch.no_grad():
        adapted = model(tokens).logits
        with model.disable_adapter():
            assert torch.equal(model(tokens).logits, expected)
        assert torch.equal(model(tokens).logits, adapted)
    assert not torch.equal(adapted, expected)


def test_merge_is_refused_with_the_reason_and_unload_restores_the_base(tokens):
    base = tiny_model("llama")
    with torch.no_grad():
        expected = base(tokens).logits
    model = get_rosa_model(base)
    randomize_adapters(model)
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        model.merge_and_unload()
    restored = model.unload()
    assert restored is base
    assert not any("roae" in name for name, _ in base.named_modules())
    with torch.no_grad():
        assert torch.equal(base(tokens).logits, expected)
    get_rosa_model(base)  # re-wrapping after unload works


def _adapter_grads(model, tokens):
    model.zero_grad(set_to_none=True)
    model(tokens, labels=tokens).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_gradient_checkpointing_gives_the_same_gradients(family, tokens):
    model = get_rosa_model(tiny_model(family), RoSAConfig(targets=("q", "k")))
    randomize_adapters(model)
    model.train()
    plain = _adapter_grads(model, tokens)
    model.gradient_checkpointing_enable()
    assert model.base_model.is_activation_checkpointing  # transformers 6 drops the is_gradient_checkpointing alias
    checkpointed = _adapter_grads(model, tokens)
    assert plain.keys() == checkpointed.keys() and len(plain) == 12  # 3 layers x (q, k) x (A, B)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)
        assert plain[name].abs().sum() > 0


@pytest.mark.parametrize("reentrant", [False, True])
def test_only_reentrant_checkpointing_makes_the_embedding_output_require_grad(reentrant, tokens):
    """Without it, backward stops at the lowest adapted layer instead of running down to the embeddings."""
    model = get_rosa_model(tiny_model("llama"), RoSAConfig()).train()
    model.gradient_checkpointing_enable({"use_reentrant": reentrant})
    embedded = model.get_input_embeddings()(tokens)
    assert embedded.requires_grad is reentrant


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_fp32_adapter_math(dtype, tokens):
    base = tiny_model("llama", dtype=dtype)
    with torch.no_grad():
        expected = base(tokens).logits
    model = get_rosa_model(base, RoSAConfig(targets=("q", "k")))
    assert {p.dtype for p in _adapter_parameters(model)} == {torch.float32}
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, expected), "identity at init must hold in half precision"
    randomize_adapters(model, std=0.1)
    model.train()
    out = model(tokens, labels=tokens)
    assert out.logits.dtype == dtype
    out.loss.backward()
    grads = [p.grad for p in _adapter_parameters(model)]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_adapter_dtype_auto_follows_the_base(tokens):
    model = get_rosa_model(tiny_model("llama", dtype=torch.bfloat16), RoSAConfig(adapter_dtype="auto"))
    assert {p.dtype for p in _adapter_parameters(model)} == {torch.bfloat16}


def test_from_pretrained_is_trainable_on_request(tmp_path):
    get_rosa_model(tiny_model("llama")).save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    parameters = _adapter_parameters(model)
    assert len(parameters) == 6 and all(p.requires_grad for p in parameters)


def test_nope_layers_are_left_out_and_reported(tokens):
    import transformers as T

    config = T.SmolLM3Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, no_rope_layers=[1, 0, 1], pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = get_rosa_model(T.AutoModelForCausalLM.from_config(config).eval())
    assert sorted(model.roae_adapters()) == [0, 2] and model.nope_layers == [1]
    randomize_adapters(model)
    with torch.no_grad():
        model(tokens)  # every adapted block applied RoPE, so no adapter was silently skipped


def test_a_failing_forward_leaves_no_adapter_active(tokens):
    from rosa.roae.rotary_hook import _ACTIVE

    model = get_rosa_model(tiny_model("llama"))
    attention = model.get_base_model().model.layers[0].self_attn
    with pytest.raises(Exception):
        attention(hidden_states=torch.zeros(1, 4, 64), position_embeddings=None, attention_mask=None)
    assert _ACTIVE.get() is None
