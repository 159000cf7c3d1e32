"""What RoSA costs per step and per layer, resolved against the run's own noise: one forward of one new token
over a KV cache (a decode step; ``--prefill``: of the prompts), timed one step at a time for the base model,
a control copy of it, RoSA, and, eagerly, RoSA with its adapter math replaced by the identity (what the
wrapper module, the publication of the adapter and the rotary hook cost alone).

    python benchmarks/decode_overhead.py [--model GGUF_OR_DIR | qwen0.5b] [--dtype fp32|bf16] [--batch-size 1]
                                         [--adapter-dtype float32|auto] [--threads N] [--rounds 300] [--steps 1]
                                         [--compile [BACKEND] | --prefill]
                                         [--json out.json]

The variants run on the same weight tensors, in interleaved rounds; each round times ``--steps`` decode
steps of each (one by default: alternating single steps cancels most of a shared machine's drift), the
cache cropped back after every step so all steps see the same context. A second copy of the base (its own
module objects and KV cache, the same weights) is timed as a variant too: its ratio to the base is this
run's noise floor, and a RoSA ratio closer to 1 than that floor says nothing. The adapter's own
operations are also timed alone in a loop, on the same shapes, which shows how much dearer they are
inside a decode step, where the weight streaming leaves them cold.

``--compile`` times the decode step as ``generation.py --compile`` runs it: a static cache and each model's
forward compiled (inductor by default, ``fullgraph=True``, static shapes), the cache cropped back after each
step as in eager mode (a static cache crops by moving its length, so every step runs the same graph). The
control runs the base's compiled code. Inductor traces the adapter into the graph, so there is no wrapper
to time apart: the variants are the base, its copy and RoSA. A step of beam search with ``b`` prompts and
``n`` beams is a step of batch ``b * n`` plus a reorder of the cache that every variant pays alike, so
``--batch-size 4`` stands for four beams of one prompt.

``--prefill`` times the other phase the same way: one forward of the ``batch x 60``-token prompts into a fresh
KV cache, eager (transformers compiles decode steps only: a prompt's shape changes with every batch).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch
from transformers import DynamicCache, StaticCache

from rosa import RoSAConfig, get_rosa_model
from rosa.roae.layer import RoAE

from generation import DEFAULT_MODEL, MODEL_HELP, compile_decode_steps, randomize
from host import cpu_machine
from train_step import build_base, shared_copy

CONTEXT = 60


def identity(adapter, q, k, hidden, heads_axis):
    return q, k


def decode_steps(model, cache, token, steps: int) -> float:
    """Seconds per decode step of ``model`` on ``cache``."""
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            model(input_ids=token, cache=cache, use_cache=True)
            cache.crop(-1)
    return (time.perf_counter() - start) / steps


def prefill_steps(model, prompts, steps: int) -> float:
    """Seconds per prefill of ``prompts`` by ``model``, each into a fresh cache."""
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            model(input_ids=prompts, cache=DynamicCache(config=model.config), use_cache=True)
    return (time.perf_counter() - start) / steps


def adapter_alone(adapter: RoAE, batch: int, tokens: int, dtype: torch.dtype, calls: int = 2000) -> float:
    """Seconds per call of one layer's adapter on the shapes of ``batch x tokens`` new tokens, called in a loop."""
    q, k = (torch.randn(batch, tokens, adapter.heads[t], adapter.dim, dtype=dtype).transpose(1, 2) for t in ("q", "k"))
    hidden = torch.randn(batch, tokens, adapter.q_A.shape[1], dtype=dtype)
    with torch.no_grad():
        for _ in range(200):
            adapter.modulate(q, k, hidden, 1)
        start = time.perf_counter()
        for _ in range(calls):
            adapter.modulate(q, k, hidden, 1)
    return (time.perf_counter() - start) / calls


def new_cache(config, compiled: bool):
    """A static cache one token longer than the context for a compiled step (its shapes never change), else
    the dynamic cache eager generation uses."""
    return StaticCache(config=config, max_cache_len=CONTEXT + 1) if compiled else DynamicCache(config=config)


@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)  # never fall back to eager unseen
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--adapter-dtype", default=RoSAConfig.adapter_dtype,
                        help="RoSAConfig.adapter_dtype (auto: the base's dtype; default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1, help="steps per variant and round")
    phase = parser.add_mutually_exclusive_group()
    phase.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                       help="time compiled decode steps on a static cache (default backend: inductor)")
    phase.add_argument("--prefill", action="store_true", help="time the prefill of the prompts instead of a decode step")
    parser.add_argument("--json", help="write the figures and every step's time here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    base = build_base(args.model, args.dtype, torch.device("cpu")).eval()
    config = RoSAConfig(targets=("q", "k"), init_seed=0, adapter_dtype=args.adapter_dtype)
    rosa = get_rosa_model(shared_copy(base), config)
    adapter = next(iter(rosa.roae_adapters().values()))
    adapter_dtype = str(next(adapter.parameters()).dtype).removeprefix("torch.")
    randomize(rosa)
    rosa.eval()
    layers = base.config.num_hidden_layers
    context = torch.randint(0, base.config.vocab_size, (args.batch_size, CONTEXT))
    token = torch.randint(0, base.config.vocab_size, (args.batch_size, 1))
    models = {"base": base, "base, second copy": shared_copy(base).eval(), "rosa": rosa}
    steps = {}  # each variant's step, a function of the number of steps to time
    for name, model in models.items():
        if args.prefill:
            steps[name] = functools.partial(prefill_steps, model, context)
            continue
        if args.compile:
            compile_decode_steps(model, args.compile)
        cache = new_cache(base.config, bool(args.compile))
        with torch.no_grad():
            model(input_ids=context, cache=cache, use_cache=True)
        steps[name] = functools.partial(decode_steps, model, cache, token)
    modulate = RoAE.modulate
    variants = {name: (step, modulate) for name, step in steps.items()}
    if not args.compile:
        variants["rosa, adapter math skipped"] = (steps["rosa"], identity)
    samples = {name: [] for name in variants}
    warmup = max(1, args.rounds // 10)  # the first round compiles, under --compile
    try:
        for round_ in range(warmup + args.rounds):
            for name, (step, method) in variants.items():
                RoAE.modulate = method
                seconds = step(args.steps)
                if round_ >= warmup:
                    samples[name].append(seconds)
    finally:
        RoAE.modulate = modulate
    median = {name: statistics.median(values) for name, values in samples.items()}
    copy_ratio = median["base, second copy"] / median["base"]

    what = "prefill" if args.prefill else "decode"
    mode = f"compiled ({args.compile}, static cache)" if args.compile else "eager"
    print(f"model {args.model} ({args.dtype}, adapter in {adapter_dtype}, {what}, {mode}), batch {args.batch_size}, "
          f"{layers} layers, context {CONTEXT}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds of {args.steps} steps "
          f"after {warmup} warm-up rounds")
    print(f"machine: {cpu_machine()}, torch {torch.__version__}")
    print(f"{'variant':>28} {'ms/step':>8} {'ratio':>7} {'µs/layer over base':>19}")
    for name, seconds in median.items():
        extra = (seconds - median["base"]) / layers * 1e6
        print(f"{name:>28} {seconds * 1e3:>8.2f} {seconds / median['base']:>6.3f}x {extra:>19.1f}")
    print(f"noise floor of this run: the base's second copy reads {copy_ratio:.3f}x; ratios within {abs(copy_ratio - 1):.3f} "
          "of 1 are not resolved")
    report = {"args": vars(args), "machine": cpu_machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "adapter_dtype": adapter_dtype,
              "layers": layers, "ms_per_step": {name: seconds * 1e3 for name, seconds in median.items()},
              "ratio_to_base": {name: seconds / median["base"] for name, seconds in median.items()},
              "noise_floor": abs(copy_ratio - 1),
              "samples_ms": {name: [round(s * 1e3, 3) for s in values] for name, values in samples.items()}}
    if not args.compile:
        alone = adapter_alone(adapter, args.batch_size, CONTEXT if args.prefill else 1, base.dtype) * 1e6
        inside = (median["rosa"] - median["rosa, adapter math skipped"]) / layers * 1e6
        print(f"\none layer's adapter math: {alone:.1f} µs called alone in a loop, {inside:.1f} µs inside a {what} step "
              f"({inside / alone:.1f}x)")
        report["adapter_math_us"] = {"alone": alone, "inside_a_step": inside}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
