"""A hand-written RoSA + DLS training loop, run on one process or on several under FSDP2
(``torchrun --nproc-per-node 2 tests/fsdp_worker.py --sharded ...``, gloo on CPU): what
``tests/test_fsdp.py`` compares. Every process takes its equal slice of the same global batch, so
FSDP's gradient average is the one-process gradient of the whole batch."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, fsdp, get_rosa_model

GLOBAL_BATCH, SEQ_LEN, VOCAB = 4, 12, 96


def tiny_rosa_model():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)
    return get_rosa_model(LlamaForCausalLM(config), RoSAConfig(init_seed=0)).train()


def global_batch(step: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (GLOBAL_BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(100 + step))


def train(output: Path, steps: int, mode: str, sharded: bool, stop_after: int | None = None, resume: Path | None = None,
          adapter_dir: Path | None = None) -> None:
    """Train ``steps`` optimizer steps; ``stop_after`` saves a checkpoint after that many and returns,
    ``resume`` continues from one. Writes ``rank<i>.json`` (selections) and, at the end, the adapter
    (in ``output/adapter`` unless ``adapter_dir`` says otherwise)."""
    adapter_dir = adapter_dir or output / "adapter"
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    model = tiny_rosa_model()
    if sharded:
        fsdp.shard_model(model)
    selector = DynamicLayerSelector(model, DLSConfig(warmup=1, interval=2, p_exploit=0.5, mode=mode, seed=1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=steps)
    start = fsdp.load_checkpoint(resume, model, optimizer, selector, scheduler) if resume else 0
    share = GLOBAL_BATCH // world
    for step in range(start, steps):
        tokens = global_batch(step)[rank * share:(rank + 1) * share]
        model(tokens, labels=tokens).loss.backward()
        selector.step()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if stop_after is not None and step + 1 == stop_after:
            fsdp.save_checkpoint(output / "checkpoint", model, optimizer, step=step + 1, selector=selector, scheduler=scheduler)
            return
    (output / f"rank{rank}.json").write_text(json.dumps({"world_size": world, "history": selector.history}))
    if sharded:
        fsdp.save_pretrained(model, adapter_dir)
    else:
        model.save_pretrained(str(adapter_dir))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--mode", default="skip")
    parser.add_argument("--sharded", action="store_true")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--resume", type=Path)
    parser.add_argument("--adapter-dir", type=Path)
    args = parser.parse_args()
    if args.sharded:
        dist.init_process_group("gloo")
    train(args.output, args.steps, args.mode, args.sharded, args.stop_after, args.resume, args.adapter_dir)
    if args.sharded:
        dist.barrier()
        dist.destroy_process_group()
        # Every file is written and the group is gone. About one run in ten (torch 2.13, gloo, CPU) then
        # aborted in the interpreter's teardown ("terminate called without an active exception", no
        # Python frame), which torchrun reports as a failed run; leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
