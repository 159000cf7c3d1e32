"""The training-memory estimate of `rosa info`, checked against what autograd and the weights really hold."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from conftest import STORIES, require
from rosa.cli import main
from rosa.estimate import GIB, Adapter, Shape, activation_bytes_per_token, weight_bytes
from rosa.loading import load_base_model
from rosa.train.config import ExperimentConfig
from rosa.train.methods import apply_method

CPU = torch.device("cpu")


def saved_activation_bytes(model, tokens) -> int:
    """Bytes of every distinct storage autograd keeps for the backward pass, weights and buffers left out."""
    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=tokens, labels=tokens)
    return sum(kept.values())


def adapted(path, method: str, precision: str, dropout: float = 0.05):
    config = ExperimentConfig(model=str(path), data="boolq", output_dir="unused", method=method, precision=precision)
    config.rosa.targets, config.lora.r, config.lora.dropout = ("q", "k"), 2, dropout
    base = load_base_model(config.model, precision=precision, device=CPU)
    model = apply_method(base, config)
    shape = Shape.of(base)
    if method == "rosa":
        low = len(model.geometry.rotary[0].low_frequency_dims)
        return model, shape, Adapter(roae_targets=config.rosa.targets, roae_rank=config.rosa.rank, low_dims=low)
    return model, shape, Adapter(lora_targets=config.lora.targets, lora_rank=config.lora.r, lora_dropout=dropout)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method, dropout, tolerance", [("rosa", 0.0, 0.002), ("lora", 0.0, 0.002), ("lora", 0.05, 0.03)])
def test_the_activation_term_is_what_autograd_keeps(method, dropout, tolerance, precision):
    model, shape, adapter = adapted(require(STORIES), method, precision, dropout)
    batch, seq_len = 4, 96
    tokens = torch.randint(3, 500, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    logits_kept = batch * seq_len * shape.vocab * 4  # the loss keeps its fp32 log-softmax; the logits term covers it
    measured = saved_activation_bytes(model, tokens) - logits_kept
    element = 2 if precision == "bf16" else 4
    estimated = batch * seq_len * shape.layers * activation_bytes_per_token(shape, adapter, element)
    assert measured == pytest.approx(estimated, rel=tolerance)


def test_the_activation_term_holds_on_the_real_model(real_smollm2):
    """SmolLM2's grouped-query attention (9 query, 3 key-value heads) and its 1536-wide MLP, in bf16."""
    from rosa.config import RoSAConfig
    from rosa.model import get_rosa_model

    model = get_rosa_model(real_smollm2.base("bf16"), RoSAConfig(rank=8, targets=("q", "k")))
    shape = Shape.of(model.get_base_model())
    adapter = Adapter(roae_targets=("q", "k"), roae_rank=8, low_dims=len(model.geometry.rotary[0].low_frequency_dims))
    tokens = torch.randint(3, 40000, (1, 48), generator=torch.Generator().manual_seed(0))
    measured = saved_activation_bytes(model, tokens) - 48 * shape.vocab * 4
    assert measured == pytest.approx(48 * shape.layers * activation_bytes_per_token(shape, adapter, 2), rel=0.002)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_weight_term_is_the_loaded_base(precision, dtype):
    model, _, _ = adapted(require(STORIES), "lora", precision)
    frozen = {id(p): p for n, p in model.named_parameters() if "lora_" not in n}
    assert weight_bytes(model, dtype, None) == sum(p.numel() * p.element_size() for p in frozen.values())


def test_the_int8_weight_term_is_optimum_quantos_storage(real_smollm2, monkeypatch):
    monkeypatch.setenv("ROSA_CACHE_DIR", str(real_smollm2.cache))
    model = load_base_model(str(real_smollm2.file), precision="fp32", device=CPU, quantize="int8")
    held = 0
    for parameter in model.parameters():
        parts = [getattr(parameter, name) for name in parameter.__tensor_flatten__()[0]] if hasattr(parameter, "_data") else [parameter]
        held += sum(part.numel() * part.element_size() for part in parts)  # int8 data and fp32 scales
    assert weight_bytes(model, torch.float32, "int8") == pytest.approx(held, rel=0.01)


def test_rosa_info_prints_the_estimate_for_rosa_and_matched_lora_on_a_7b_config(tmp_path, capsys):
    # Llama-2-7B's shape: 6,738,415,616 parameters, so 12.55 GiB of bf16 weights
    T.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  vocab_size=32000).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--targets", "q,k", "--batch-size", "4", "--seq-len", "256"]) == 0
    printed = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in printed.splitlines() if line.startswith("| ")}
    rosa, lora = rows["rosa (rank 8, q,k)"], next(v for k, v in rows.items() if k.startswith("lora (rank "))
    assert rosa[2] == lora[2] == f"{6_738_415_616 * 2 / GIB:.2f} GiB"
    assert float(lora[4].split()[0]) > 1.8 * float(rosa[4].split()[0])  # LoRA's dropout keeps fp32 input copies
    assert main(["info", str(tmp_path), "--targets", "q,k", "--quantize", "nf4"]) == 0
    nf4 = next(line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| rosa"))
    assert float(nf4[2].split()[0]) < 0.3 * float(rosa[2].split()[0])  # 4.127 bits a decoder weight
