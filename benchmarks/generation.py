"""What an adapter costs at inference: prefill and decode time of the base model, RoSA, and LoRA
unmerged and merged at RoSA's parameter budget, measured side by side in one process.

    python benchmarks/generation.py [--model GGUF_OR_DIR | qwen0.5b] [--tokenizer DIR] [--dtype fp32|bf16]
                                    [--batch-sizes 1,8] [--decodings greedy,beam4] [--new-tokens 32] [--rounds 4]
                                    [--compile [BACKEND]] [--json out.json]

``--model`` also takes a shape of ``train_step.py`` (``qwen0.5b``, ``tiny``) with random weights: RoSA's cost
per layer and token is nearly fixed while the base's grows with the model, so a real model's size, not only
its layer count, sets the ratio. Its prompts are tokenized by ``--tokenizer`` (default: SmolLM2's).

RoSA and unmerged LoRA run on the base's own weight tensors (RoSA wraps the attention blocks, unmerged
LoRA wraps the projections); merged LoRA is a second copy with the update folded in, so its ratio also
shows what a fresh copy of the weights alone does to the time. A second copy of the base (its own modules and
caches, the same weight matrices and, under ``--compile``, the base's compiled code) runs as a control: it does
the base's work exactly, so its ratio is the run's noise floor, and a ratio closer to 1 than that says nothing.
Rounds are interleaved (each round times every variant once, in turn), and both the wall clock and the
process's CPU time are recorded: on a shared machine a slow spell falls on all variants, and CPU
time is what a busy neighbour disturbs least. Prefill is one forward pass over the prompt batch;
decode is ``generate`` starting from that prefill's KV cache (as ``rosa eval`` runs it), so the two
are reported separately. Adapters carry random non-zero weights, and each variant's generated tokens
are printed as a check that the adapters act.

``--compile`` times every variant compiled: a static cache, and the forward of each decode step compiled
with ``torch.compile`` (inductor, ``fullgraph=True``, static shapes) while the prefill runs eagerly. That
is how transformers runs greedy decoding with a static cache (on GPUs by default); it runs beam search
uncompiled, so the benchmark compiles the transformers model's forward itself (under a PeftModel, its
base model's) for both, with transformers' own compiling off. Prefill is a generate's time until the first
token's logits, decode the rest of it. The first round of each variant and shape compiles and is left out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rosa import RoSAConfig, get_rosa_model
from rosa.eval.generation import _prefill, generation_config
from rosa.loading import load_tokenizer

from host import cpu_machine
from train_step import SHAPES, build_base, shared_copy

DEFAULT_MODEL = "../shared/models/SmolLM2-135M-Instruct-GGUF"
MODEL_HELP = f"a local model (directory or GGUF file), or {' | '.join(SHAPES)} (that shape with random weights)"

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
          "### Instruction:\nPlease answer the following question with true or false. Question: is the sky blue "
          "on a clear day?\n\n### Response:\n")


def randomize(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and ("_B" in name or "lora_B" in name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * 0.5)


def variants(base, lora_rank: int) -> dict:
    from peft import LoraConfig, get_peft_model

    # RoSA and unmerged LoRA leave the weight matrices unchanged, so they run on the very memory the base
    # runs on: a separate copy of the weights, laid out afresh, alone moved a variant's time by up to 9%
    # either way here (merged LoRA, which needs its own copy, shows that effect).
    rosa = get_rosa_model(shared_copy(base), RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize(rosa)
    lora = get_peft_model(shared_copy(base), LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                                      target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))
    randomize(lora)
    merged = copy.deepcopy(lora).merge_and_unload()
    return {"base": base, "base-copy": shared_copy(base).eval(), "rosa": rosa.eval(), "lora": lora.eval(),
            "lora-merged": merged.eval()}


def lora_rank_matching(base, rosa_params: int) -> int:
    """The LoRA rank (q,k,v,up,down) whose trainable count is closest to RoSA's (at least 1)."""
    from peft import LoraConfig, get_peft_model

    one = get_peft_model(copy.deepcopy(base), LoraConfig(r=1, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))
    per_rank = one.get_nb_trainable_parameters()[0]
    return max(1, round(rosa_params / per_rank))


def clocks() -> tuple[float, float]:
    """Both clocks every figure is taken by: the wall clock and the process's CPU time."""
    return time.perf_counter(), time.process_time()


def timed(function) -> tuple[float, float, object]:
    wall, cpu = clocks()
    result = function()
    end_wall, end_cpu = clocks()
    return end_wall - wall, end_cpu - cpu, result


@torch.no_grad()
def measure(model, batch, config) -> dict:
    """Prefill: the KV cache of the prompts (all but the last token, copied to each beam), as ``rosa eval``
    computes it; decode: ``generate`` from that cache, every new token."""
    prefill_wall, prefill_cpu, cache = timed(lambda: _prefill(model, batch, config.num_beams))
    decode_wall, decode_cpu, sequences = timed(lambda: model.generate(**batch, **cache, generation_config=config))
    return {"prefill": (prefill_wall, prefill_cpu), "decode": (decode_wall, decode_cpu), "tokens": sequences[:, batch["input_ids"].shape[1]:].tolist()}


@torch.no_grad()
@torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True)
def measure_compiled(model, batch, config) -> dict:
    """Generation with a static cache and a compiled forward, split inside one ``generate``: prefill lasts until
    the first token's logits arrive, decode is the rest. Each batch size and beam count is a graph of its own:
    the recompile limit is raised to fit many, and reaching it raises rather than falling back to eager unseen."""
    first = _FirstLogits()
    start = clocks()
    sequences = model.generate(**batch, generation_config=config, logits_processor=LogitsProcessorList([first]))
    end = clocks()
    return {"prefill": tuple(f - s for f, s in zip(first.at, start)), "decode": tuple(e - f for e, f in zip(end, first.at)),
            "tokens": sequences[:, batch["input_ids"].shape[1]:].tolist()}


class _FirstLogits(LogitsProcessor):
    """Notes both clocks when ``generate`` hands over the first token's logits: where its prefill ends. Timing a
    one-token ``generate`` apart and subtracting it from a full one, as before, could leave a decode time below
    zero on a busy machine."""

    def __init__(self):
        self.at = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = clocks()
        return scores


def compile_decode_steps(model, backend: str) -> None:
    """Compile the forward ``generate`` calls for each new token, as transformers does for greedy decoding
    with a static cache, where the prefill stays eager (its shape changes with every prompt); here for beam
    search too, which transformers runs uncompiled."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    eager = inner.forward
    compiled = torch.compile(eager, fullgraph=True, dynamic=False, backend=backend)

    def forward(*args, **kwargs):
        return (compiled if kwargs["input_ids"].shape[1] == 1 else eager)(*args, **kwargs)

    inner.forward = forward


def with_static_cache(config: GenerationConfig) -> GenerationConfig:
    """``config`` with the static cache a compiled forward needs, and transformers' own compiling off (the
    forward is compiled already)."""
    config.cache_implementation = "static"
    config.disable_compile = True
    return config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--tokenizer", help="the prompts' tokenizer (default: the model's; for a shape, the default model's)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--decodings", default="greedy,beam4")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                        help="a static cache and compiled decode steps (backend: inductor)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.tokenizer or (DEFAULT_MODEL if args.model in SHAPES else args.model))
    base = build_base(args.model, args.dtype, torch.device("cpu")).eval()
    if len(tokenizer) > base.config.vocab_size:
        parser.error(f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary of "
                     f"{base.config.vocab_size}; pass a --tokenizer that fits it")
    rosa_params = get_rosa_model(copy.deepcopy(base), RoSAConfig(targets=("q", "k"))).get_nb_trainable_parameters()[0]
    rank = lora_rank_matching(base, rosa_params)
    models = variants(base, rank)
    if args.compile:
        for model in models.values():
            compile_decode_steps(model, args.compile)
    results, changed = [], []
    for batch_size in map(int, args.batch_sizes.split(",")):
        batch = tokenizer([PROMPT] * batch_size, return_tensors="pt", padding=True, padding_side="left")
        for decoding in args.decodings.split(","):
            config = generation_config(decoding, args.new_tokens, tokenizer)
            config.min_new_tokens = args.new_tokens  # every variant decodes the same number of tokens
            run = measure
            if args.compile:
                config, run = with_static_cache(config), measure_compiled
            for model in models.values():
                run(model, batch, config)  # warm-up (and compilation)
            samples = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, model in models.items():
                    samples[name].append(run(model, batch, config))
            for phase in ("prefill", "decode"):
                for clock, index in (("wall", 0), ("cpu", 1)):
                    medians = {name: statistics.median(s[phase][index] for s in runs) for name, runs in samples.items()}
                    results.append({"batch_size": batch_size, "decoding": decoding, "phase": phase, "clock": clock,
                                    "seconds": medians, "ratio_to_base": {n: medians[n] / medians["base"] for n in medians}})
            acts = {name: runs[0]["tokens"] != samples["base"][0]["tokens"] for name, runs in samples.items() if name != "base"}
            changed.append({"batch_size": batch_size, "decoding": decoding, "tokens_differ_from_base": acts})
            print(f"batch {batch_size}, {decoding}: generated tokens differ from the base's: {acts}", flush=True)

    print(f"\nmodel {args.model} ({args.dtype}{f', compiled ({args.compile}), static cache' if args.compile else ''}); RoSA q,k on every "
          f"layer: {rosa_params:,d} parameters; LoRA r={rank} on q,k,v,up,down; {args.new_tokens} new tokens; median of "
          f"{args.rounds} interleaved rounds")
    machine = f"{cpu_machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}\n")
    print(f"{'batch':>5} {'decoding':>8} {'phase':>7} {'clock':>5} {'base s':>8} {'control':>8} {'rosa':>7} {'lora':>7} {'merged':>7}")
    for row in results:
        r = row["ratio_to_base"]
        print(f"{row['batch_size']:>5} {row['decoding']:>8} {row['phase']:>7} {row['clock']:>5} {row['seconds']['base']:>8.3f} "
              f"{r['base-copy']:>7.3f}x {r['rosa']:>6.3f}x {r['lora']:>6.3f}x {r['lora-merged']:>6.3f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "machine": machine, "rosa_params": rosa_params, "lora_rank": rank, "results": results,
                       "adapters_act": changed}, handle, indent=2)


if __name__ == "__main__":
    main()
