"""The Python API in a few lines: wrap a causal LM, train RoAE with DLS in your own loop, save, reload.

RoSA is a PEFT method: `get_rosa_model` is `peft.get_peft_model`, the model it returns is a
`PeftModel`, and the saved adapter is PEFT's (`adapter_config.json` + `adapter_model.safetensors`),
loaded back with `PeftModel.from_pretrained` once `rosa` is imported.

`rosa train` / `rosa eval` run the whole pipeline; this script shows the pieces underneath. It runs on
CPU in seconds with the project's tiny pretrained Llama and BoolQ training records; pass --model /
--data for your own (any RoPE causal LM, any LLM-Adapters-format JSON file).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, get_rosa_model
from rosa.data import load_records
from rosa.data.prompts import eval_prompt, tokenize_for_training
from rosa.loading import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "stories260K-hf"))
    parser.add_argument("--data", default=str(SHARED / "data" / "llm-adapters" / "train" / "commonsense" / "boolq.json"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    records = load_records(args.data)[: args.steps * args.batch_size]
    examples = [tokenize_for_training(r, tokenizer, cutoff_len=512) for r in records]
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="pt")

    model = get_rosa_model(AutoModelForCausalLM.from_pretrained(args.model), RoSAConfig(rank=8, targets=("q", "k")))
    model.print_trainable_parameters()
    selector = DynamicLayerSelector(model, DLSConfig(warmup=10, interval=10, k_ratio=0.5, seed=0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    model.train()
    for step in range(args.steps):
        start = (step * args.batch_size) % len(examples)
        loss = model(**collate(examples[start : start + args.batch_size])).loss
        loss.backward()
        selector.step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}  training layers {selector.selected}")
    for record in selector.history:
        print(f"selection at step {record['step']}: {record['kind']:7s} -> layers {record['selected']}")

    with tempfile.TemporaryDirectory() as adapter_dir:
        model.save_pretrained(adapter_dir)
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.model), adapter_dir)
    prompt = tokenizer([eval_prompt(records[0]["instruction"])], return_tensors="pt")
    output = reloaded.generate(**prompt, max_new_tokens=8, do_sample=False)
    print("generation after save/load:", repr(tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])))


if __name__ == "__main__":
    main()
