"""Where RoSA's eager decode cost goes, per layer: one forward of one new token over a KV cache, timed for
the base model, for RoSA, and for RoSA with its adapter math replaced by the identity (what the wrapper
module, the publication of the adapter and the rotary hook cost alone).

    python benchmarks/decode_overhead.py [--model GGUF_OR_DIR | qwen0.5b] [--dtype fp32|bf16] [--batch-size 1]
                                         [--threads N] [--rounds 300] [--steps 1]

The variants run on the same weight tensors, in interleaved rounds; each round times ``--steps`` decode
steps of each (one by default: alternating single steps cancels most of a shared machine's drift), the
cache cropped back after every step so all steps see the same context. A second copy of the base (its own
module objects and KV cache, the same weights) is timed as a variant too: its ratio to the base is this
run's noise floor, and a RoSA ratio closer to 1 than that floor says nothing. The adapter's own
operations are also timed alone in a loop, on the same shapes, which shows how much dearer they are
inside a decode step, where the weight streaming leaves them cold.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from rosa import RoSAConfig, get_rosa_model
from rosa.roae.layer import RoAE

from generation import DEFAULT_MODEL, MODEL_HELP, randomize
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


def adapter_alone(adapter: RoAE, batch: int, dtype: torch.dtype, calls: int = 2000) -> float:
    """Seconds per call of one layer's adapter on decode shapes, called in a loop."""
    q, k = (torch.randn(batch, 1, adapter.heads[t], adapter.dim, dtype=dtype).transpose(1, 2) * 1 for t in ("q", "k"))
    hidden = torch.randn(batch, 1, adapter.q_A.shape[1], dtype=dtype)
    with torch.no_grad():
        for _ in range(200):
            adapter.modulate(q, k, hidden, 1)
        start = time.perf_counter()
        for _ in range(calls):
            adapter.modulate(q, k, hidden, 1)
    return (time.perf_counter() - start) / calls


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1, help="decode steps per variant and round")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    base = build_base(args.model, args.dtype, torch.device("cpu")).eval()
    rosa = get_rosa_model(shared_copy(base), RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize(rosa)
    rosa.eval()
    layers = base.config.num_hidden_layers
    context = torch.randint(0, base.config.vocab_size, (args.batch_size, CONTEXT))
    token = torch.randint(0, base.config.vocab_size, (args.batch_size, 1))
    control = shared_copy(base).eval()
    caches = {}
    for name, model in (("base", base), ("base, second copy", control), ("rosa", rosa)):
        caches[name] = DynamicCache(config=base.config)
        with torch.no_grad():
            model(input_ids=context, cache=caches[name], use_cache=True)

    modulate = RoAE.modulate
    variants = {"base": (base, caches["base"], modulate),
                "base, second copy": (control, caches["base, second copy"], modulate),
                "rosa": (rosa, caches["rosa"], modulate),
                "rosa, adapter math skipped": (rosa, caches["rosa"], identity)}
    samples = {name: [] for name in variants}
    warmup = max(1, args.rounds // 10)
    try:
        for round_ in range(warmup + args.rounds):
            for name, (model, cache, method) in variants.items():
                RoAE.modulate = method
                seconds = decode_steps(model, cache, token, args.steps)
                if round_ >= warmup:
                    samples[name].append(seconds)
    finally:
        RoAE.modulate = modulate
    step = {name: statistics.median(values) for name, values in samples.items()}
    adapter = next(iter(rosa.roae_adapters().values()))
    alone = adapter_alone(adapter, args.batch_size, base.dtype)

    print(f"model {args.model} ({args.dtype}), batch {args.batch_size}, {layers} layers, context {CONTEXT}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds of {args.steps} steps "
          f"after {warmup} warm-up rounds")
    print(f"machine: {cpu_machine()}, torch {torch.__version__}")
    print(f"{'variant':>28} {'ms/step':>8} {'ratio':>7} {'µs/layer over base':>19}")
    for name, seconds in step.items():
        extra = (seconds - step["base"]) / layers * 1e6
        print(f"{name:>28} {seconds * 1e3:>8.2f} {seconds / step['base']:>6.3f}x {extra:>19.1f}")
    copy_ratio = step["base, second copy"] / step["base"]
    print(f"noise floor of this run: the base's second copy reads {copy_ratio:.3f}x; ratios within {abs(copy_ratio - 1):.3f} "
          "of 1 are not resolved")
    inside = (step["rosa"] - step["rosa, adapter math skipped"]) / layers * 1e6
    print(f"\none layer's adapter math: {alone * 1e6:.1f} µs called alone in a loop, {inside:.1f} µs inside a decode step "
          f"({inside / (alone * 1e6):.1f}x)")


if __name__ == "__main__":
    main()
