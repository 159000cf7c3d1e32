"""RoSA on a real model: SmolLM2-135M-Instruct (30 layers, d_model 576, 9 query / 3 kv heads of 64 dims,
rope_theta 1e5, 49,152-token vocabulary), read from its Q4_1 GGUF file in ../shared.

The tiny random models of the other tests cover every RoPE family; these tests check, on real weights,
a real tokenizer and real text, that RoSA is exactly the base model at initialisation, that its KV-cache
path generates what the full recomputation generates, that a saved adapter reloads bit for bit, and that
a few optimiser steps learn while leaving every base weight untouched. The conversion of the file is paid
once per session (the ``real_smollm2`` fixture); each base model after it is a cheap reload.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from conftest import DATA, randomize_adapters, require
from rosa import RoSAConfig, get_rosa_model
from rosa.data.prompts import tokenize_for_training

LAYERS = 30
PROMPTS = ["The capital of France is", "Water boils at a temperature of"]
CONFIG = dict(targets=("q", "k"), init_seed=0)


def batch(tokenizer, prompts=PROMPTS):
    return tokenizer(prompts, return_tensors="pt", padding=True)  # right-padded, with an attention mask


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_rosa_is_exactly_the_base_model_at_initialisation(real_smollm2, precision, dtype):
    inputs = batch(real_smollm2.tokenizer)
    assert inputs["input_ids"].shape[1] >= 5 and not inputs["attention_mask"].all()  # real text, one row padded
    base = real_smollm2.base(precision)
    expected = logits(base, inputs)
    model = get_rosa_model(base, RoSAConfig(**CONFIG))
    adapters = model.roae_adapters()
    assert sorted(adapters) == list(range(LAYERS))
    assert all(torch.count_nonzero(getattr(a, name)) == 0 for a in adapters.values() for name in ("q_B", "k_B"))
    actual = logits(model, inputs)
    assert actual.dtype == dtype
    assert torch.equal(actual, expected)
    # The adapters are in the forward path: once B is non-zero the logits move.
    randomize_adapters(model, std=0.5, seed=1)
    assert (logits(model, inputs) - expected).abs().max() > 0.1


def test_greedy_generation_with_the_kv_cache_equals_generation_without_it(real_smollm2):
    tokenizer = real_smollm2.tokenizer
    inputs = tokenizer(PROMPTS[:1], return_tensors="pt")
    model = get_rosa_model(real_smollm2.base("fp32"), RoSAConfig(**CONFIG))
    randomize_adapters(model, std=1.0, seed=1)
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                    output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **settings)
        recomputed = model.generate(**inputs, use_cache=False, **settings)
        with model.disable_adapter():
            base = model.generate(**inputs, use_cache=True, **settings)
    prompt = inputs["input_ids"].shape[1]
    assert cached.sequences.shape == (1, prompt + 8)
    assert torch.equal(cached.sequences, recomputed.sequences), (
        tokenizer.decode(cached.sequences[0]), tokenizer.decode(recomputed.sequences[0]))
    # Same positions, same rotations: the two paths differ only by fp32 rounding (measured 2.4e-5).
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(recomputed.scores), rtol=0, atol=1e-3)
    # The adapter matters: with it the model writes another continuation than the base.
    assert not torch.equal(cached.sequences[0, prompt:], base.sequences[0, prompt:]), tokenizer.decode(base.sequences[0])


def test_a_saved_adapter_reloads_onto_a_fresh_base_with_the_same_logits(real_smollm2, tmp_path):
    inputs = batch(real_smollm2.tokenizer)
    model = get_rosa_model(real_smollm2.base("fp32"), RoSAConfig(**CONFIG))
    randomize_adapters(model, std=0.5, seed=2)
    expected = logits(model, inputs)
    with model.disable_adapter():
        assert (logits(model, inputs) - expected).abs().max() > 0.1  # the adapter is not a no-op
    model.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(real_smollm2.base("fp32"), str(tmp_path))
    saved, restored = model.roae_adapters(), loaded.roae_adapters()
    assert sorted(restored) == list(range(LAYERS))
    for layer, adapter in saved.items():
        for name, weight in adapter.named_parameters():
            assert torch.equal(getattr(restored[layer], name), weight), (layer, name)
    assert torch.equal(logits(loaded, inputs), expected)


def boolq_batch(tokenizer, n=4):
    """The first ``n`` boolq training records, tokenised as upstream trains on them, right-padded."""
    records = json.loads(require(DATA / "train" / "commonsense" / "boolq.json").read_text())[:n]
    features = [tokenize_for_training(record, tokenizer, cutoff_len=128) for record in records]
    assert all(f["input_ids"][-1] == tokenizer.eos_token_id for f in features)  # none truncated
    width = max(len(f["input_ids"]) for f in features)

    def padded(key, value):
        return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])

    return dict(input_ids=padded("input_ids", tokenizer.pad_token_id), attention_mask=padded("attention_mask", 0),
                labels=padded("labels", -100))


def test_a_few_adamw_steps_lower_the_loss_and_leave_every_base_weight_bit_identical(real_smollm2):
    data = boolq_batch(real_smollm2.tokenizer)
    model = get_rosa_model(real_smollm2.base("fp32"), RoSAConfig(**CONFIG))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 4 * LAYERS and all(".rosa_roae.default." in name for name in trainable)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) == 272  # every weight of the base (embeddings and LM head are tied)
    with torch.no_grad():
        before = model(**data).loss.item()

    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    for _ in range(5):
        model(**data).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        after = model(**data).loss.item()

    assert after < 0.75 * before, (before, after)  # measured: 3.98 -> about 2.0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and torch.equal(p, frozen[name]), name
