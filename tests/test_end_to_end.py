"""A real pretrained RoPE Llama (stories260K) trained with RoSA + DLS on BoolQ training records."""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

from conftest import DATA, STORIES, require
from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, get_rosa_model
from rosa.data import load_records
from rosa.data.prompts import tokenize_for_training
from rosa.loading import load_tokenizer


def boolq_batches(tokenizer, n_records=96, batch_size=8):
    records = load_records(require(DATA / "train" / "commonsense" / "boolq.json"))[:n_records]
    examples = [tokenize_for_training(r, tokenizer, cutoff_len=160) for r in records]
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="pt")
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size])


def test_rosa_with_dls_trains_a_real_model_and_round_trips(tmp_path):
    tokenizer = load_tokenizer(str(require(STORIES)))
    base = AutoModelForCausalLM.from_pretrained(STORIES)
    base_state = {n: t.clone() for n, t in base.state_dict().items()}
    torch.manual_seed(0)
    model = get_rosa_model(base, RoSAConfig(rank=8, targets=("q", "k"), r_low=0.5, init_seed=0)).train()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=8, interval=8, k_ratio=0.6, seed=0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batches = list(boolq_batches(tokenizer))
    losses = []
    for step in range(36):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        selector.step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    first_epoch, last_epoch = sum(losses[:12]) / 12, sum(losses[-12:]) / 12
    print(f"mean loss, first 12 steps {first_epoch:.3f}, last 12 steps {last_epoch:.3f}")
    assert last_epoch < first_epoch - 0.2, (first_epoch, last_epoch)
    assert len(selector.history) == 4 and all(len(r["selected"]) == 3 for r in selector.history)
    # PEFT keeps each wrapped attention block as the RoSALayer's base_layer, beside the adapter (rosa_roae)
    current = {n.replace(".base_layer.", "."): t for n, t in base.state_dict().items() if ".rosa_roae." not in n}
    assert current.keys() == base_state.keys()
    assert all(torch.equal(current[n], t) for n, t in base_state.items()), "base weights must not change"

    model.eval()
    prompt = tokenizer(["Please answer the following question with true or false"], return_tensors="pt")
    before = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(STORIES), tmp_path)
    after = reloaded.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert after.shape[1] == prompt["input_ids"].shape[1] + 12
    assert torch.equal(after, before)
    with reloaded.disable_adapter():
        plain = reloaded.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert not torch.equal(plain, after), "36 steps of RoSA should change what the model generates"
