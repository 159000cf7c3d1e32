"""Time and peak memory per optimizer step of RoSA against LoRA, DoRA and the frozen-model floor.

    python benchmarks/train_step.py --model tiny                      # quick check, about a minute on a CPU
    python benchmarks/train_step.py --model qwen0.5b --batch-size 1 --seq-len 128 --steps 24 --warmup-steps 2
    python benchmarks/train_step.py --model ../shared/models/stories260K-hf --json out.json

Same model, batch, sequence length and (seeded) input ids for every variant:

- floor: the frozen model, no trainable parameter, gradient flowing from the loss to the input
  embeddings; no adapter can be cheaper than this;
- floor-copy: the control, the floor again on its own module objects (the same weight matrices): it does
  exactly the floor's work, so its ratio to the floor is what the machine's noise alone produces in that
  run, and a ratio closer to 1 than that says nothing;
- lora / dora: peft with the project's LoRA defaults (`rosa train`'s targets, dropout, alpha/r), at
  the rank whose trainable count matches RoSA's (`rosa.train.methods.match_rank`);
- roae: RoSA's adapter on every layer, no DLS;
- dls-skip / dls-freeze: RoSA with DLS driven the README way (backward; selector.step();
  optimizer.step(); zero_grad), selecting from step `--dls-warmup` on, every `--dls-interval` steps;
- dls-freeze-top: information, not a goal: dls-freeze with every selection replaced by the top k
  layers, the selection under which freeze's truncation of backward saves the most (its JSON
  `selections` are DLS's own picks; its steps' `lowest` shows the layers it trained). (DLS itself keeps
  layer 0 in its selections, with random weights and on the pretrained models here alike, so its
  backward stops at layer 0; the report prints where the freeze goal would be met.)

Timing and memory are measured apart, because they need opposite set-ups:

- time: one process builds every variant on one copy of the frozen weights (each variant has its
  own adapter, optimizer, selector and norm weights) and runs their steps interleaved, one step of
  each variant in turn, the order rotating every step. A slow spell on a shared machine then falls
  on every variant alike, and no variant runs in a luckier process than another (on the shared
  machine the README's figures come from, identical work ran at different speeds in different
  processes);
- memory: each variant in a fresh subprocess (this script re-executed with `--variant`), for one
  DLS cycle (`--dls-warmup` + `--dls-interval` + 1 steps, so a scoring and a non-scoring step), so
  its peak is its own: Linux VmHWM, reset once the model is built, on CPU; max allocated on CUDA.

Random weights for the named shapes are fine: only time and memory are measured. `--dls-interval`
(short) only makes the timed steps include scoring steps; the figures describe a run that selects
every `--run-interval` steps (DLSConfig's default): a DLS variant's step time is its steady state,
`((run_interval - 1) * median(non-scoring steps) + median(scoring steps)) / run_interval`, and DLS
overhead is the time inside `selector.step()` plus the extra cost of a scoring step (measured in
skip mode, where nothing else differs) amortised over `run_interval`, as a share of the step.

Steps are timed by the wall clock (the default) and by the process's CPU time (`--clock cpu`,
which leaves out time spent waiting for a core on a shared machine). Each step also records the
process's minor page faults: on a CPU, glibc's allocator hands large freed buffers back to the kernel
and faults them in again on the next step, which cost 7%-14% of SmolLM2's step on the VM of
docs/training-cost.md and moves with every megabyte a variant keeps for its backward.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

try:
    import resource  # Unix: page faults per step
except ImportError:
    resource = None

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from rosa import DLSConfig, DynamicLayerSelector, RoSAConfig, memory
from rosa.gguf import gguf_config, gguf_source
from rosa.loading import PRECISIONS, load_base_model, resolve_dtype
from rosa.train.config import ExperimentConfig
from rosa.train.methods import apply_method, match_rank, trainable_parameters, with_rank

from host import cpu_machine

FLOORS = ("floor", "floor-copy")
VARIANTS = (*FLOORS, "lora", "dora", "roae", "dls-skip", "dls-freeze", "dls-freeze-top")
DLS_MODES = {"dls-skip": "skip", "dls-freeze": "freeze", "dls-freeze-top": "freeze"}
METHODS = {"lora": "lora", "dora": "dora", "roae": "roae", **{variant: "rosa" for variant in DLS_MODES}}
CLOCKS = {"wall": "ms", "cpu": "cpu_ms"}
SHAPES = {
    "tiny": ("llama", dict(hidden_size=128, intermediate_size=344, num_hidden_layers=8, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512)),
    # Qwen2.5-0.5B's config.
    "qwen0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                               num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                               rope_theta=1000000.0, tie_word_embeddings=True)),
}
GOAL_ROAE_VS_FLOOR, GOAL_FREEZE_VS_LORA, GOAL_DLS_OVERHEAD = 1.05, 0.85, 0.02


# -- building ---------------------------------------------------------------------------------------
def model_config(name: str):
    if name in SHAPES:
        model_type, fields = SHAPES[name]
        return AutoConfig.for_model(model_type, **fields)
    source = gguf_source(name)  # a .gguf file: its config from the metadata, nothing dequantised
    return AutoConfig.from_pretrained(name) if source is None else gguf_config(source)


def experiment(args, method: str, rank: int | None = None):
    """The project's experiment config for ``method``: what `rosa train` would build."""
    config = ExperimentConfig(model=args.config_dir, data="unused", output_dir="unused", method=method,
                              seed=args.seed, rosa=RoSAConfig(targets=tuple(args.targets.split(","))))
    return config if rank is None else with_rank(config, rank)


def matched_budget(args) -> dict:
    """RoSA's trainable count and the LoRA/DoRA ranks that match it, counted on the meta device."""
    rosa = trainable_parameters(experiment(args, "rosa"))
    budget = {"rosa": rosa}
    for method in ("lora", "dora"):
        _, rank, count = match_rank(experiment(args, method), rosa)
        budget[method] = {"rank": rank, "trainable": count}
    return budget


def build_base(model: str, dtype: str, device: torch.device, seed: int = 0) -> nn.Module:
    """``model``'s weights (a local directory or GGUF file), or one of ``SHAPES`` with seeded random weights."""
    if model not in SHAPES:
        return load_base_model(model, precision=dtype, device=device)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(model_config(model), dtype=resolve_dtype(dtype, device))
    return base.to(device)


def shared_copy(base: nn.Module) -> nn.Module:
    """A copy of ``base`` whose weight matrices are ``base``'s own tensors, so every variant of the
    timing process fits in memory beside the others. One-dimensional parameters (norm weights,
    biases) are copied: DLS switches the norm weights' ``requires_grad`` on to score layers, which
    must not reach the other variants."""
    shared = {id(p): p for p in base.parameters() if p.dim() > 1}
    return copy.deepcopy(base, memo=shared)


def build_variant(variant: str, args, base: nn.Module, rank: int | None) -> nn.Module:
    """The model ``variant`` trains; the floor is the frozen base itself."""
    if variant in FLOORS:
        return base.requires_grad_(False)
    return apply_method(base, experiment(args, METHODS[variant], rank))


def build_selector(variant: str, args, model: nn.Module):
    """DLS for the dls-* variants. Made after the optimizer, as DLSCallback does, so the optimizer
    holds every adapter parameter and no norm weight."""
    if variant not in DLS_MODES:
        return None
    dls = DLSConfig(k_ratio=args.k_ratio, mode=DLS_MODES[variant], warmup=args.dls_warmup,
                    interval=args.dls_interval, seed=args.seed)
    return DynamicLayerSelector(model, dls)


def pin_to_top(selector) -> None:
    """dls-freeze-top: replace a new selection by the top k layers, through the public state API."""
    top = list(range(selector.n_layers - selector.k, selector.n_layers))
    if selector.history and selector.selected != top:
        state = selector.state_dict()
        state["selected"] = top
        selector.load_state_dict(state)


@dataclass
class Trainee:
    """One variant, ready to take optimizer steps."""

    variant: str
    model: nn.Module
    forward: Callable
    optimizer: torch.optim.Optimizer | None
    selector: DynamicLayerSelector | None
    trainable: int  # adapter parameters, counted before DLS freezes any


def prepare(variant: str, args, base: nn.Module, rank: int | None) -> Trainee:
    model = build_variant(variant, args, base, rank).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    return Trainee(variant, model, torch.compile(model) if args.compile else model, optimizer,
                   build_selector(variant, args, model), sum(p.numel() for p in trainable))


def input_ids_for(args, config, device: torch.device) -> torch.Tensor:
    return torch.randint(config.vocab_size, (args.batch_size, args.seq_len),
                         generator=torch.Generator().manual_seed(args.seed)).to(device)


# -- measuring --------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_of(trainee: Trainee, input_ids: torch.Tensor) -> torch.Tensor:
    """The floor feeds embeddings that require grad, so backward runs all the way down to them."""
    if trainee.variant in FLOORS:
        embeddings = trainee.model.get_input_embeddings()(input_ids).requires_grad_(True)
        return trainee.forward(inputs_embeds=embeddings, labels=input_ids, use_cache=False).loss
    return trainee.forward(input_ids=input_ids, labels=input_ids, use_cache=False).loss


def minor_faults() -> int | None:
    """The process's minor page faults so far (None where the platform does not count them)."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_step(trainee: Trainee, input_ids: torch.Tensor, device: torch.device) -> dict:
    """One optimizer step the README way, timed; ``selector_ms`` is the part inside selector.step(),
    ``lowest`` the lowest layer selected while it ran (freeze's backward stops there, except on
    scoring steps, which run it to the bottom)."""
    selector, optimizer = trainee.selector, trainee.optimizer
    scoring = selector is not None and selector.is_scoring_step(selector.step_count)
    lowest = min(selector.selected) if selector is not None else None
    sync(device)
    faults = minor_faults()
    wall, cpu = time.perf_counter(), time.process_time()
    loss = loss_of(trainee, input_ids)
    loss.backward()
    selector_s = 0.0
    if selector is not None:
        sync(device)
        selector_started = time.perf_counter()
        selector.step()
        sync(device)
        selector_s = time.perf_counter() - selector_started
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    record = {"ms": 1e3 * (time.perf_counter() - wall), "cpu_ms": 1e3 * (time.process_time() - cpu),
              "page_faults": None if faults is None else minor_faults() - faults, "selector_ms": 1e3 * selector_s,
              "scoring": scoring, "lowest": lowest, "loss": loss.item()}
    if trainee.variant == "dls-freeze-top":
        pin_to_top(selector)
    return record


def selections(trainee: Trainee) -> dict:
    history = trainee.selector.history if trainee.selector else []
    return {"selections": [record["selected"] for record in history], "scores": [record["scores"] for record in history]}


def time_interleaved(args, variants: tuple[str, ...], ranks: dict) -> dict:
    """Every variant on shared frozen weights in this process, one step of each in turn (the order
    rotating every step); per-variant step records, warm-up steps dropped."""
    device = torch.device(args.device)
    if args.compile:  # dynamo's per-function recompile budget is process-wide: give each variant its own
        torch._dynamo.config.recompile_limit *= len(variants)
    base = build_base(args.model, args.dtype, device, args.seed)
    trainees = [prepare(variant, args, shared_copy(base), ranks.get(variant)) for variant in variants]
    input_ids = input_ids_for(args, base.config, device)
    steps = {variant: [] for variant in variants}
    for step in range(args.warmup_steps + args.steps):
        turn = step % len(trainees)
        for trainee in trainees[turn:] + trainees[:turn]:
            record = timed_step(trainee, input_ids, device)
            if step >= args.warmup_steps:
                steps[trainee.variant].append(record)
    return {t.variant: {"variant": t.variant, "trainable": t.trainable, "steps": steps[t.variant], **selections(t)}
            for t in trainees}


def memory_steps(args) -> int:
    """The steps before the first selection and one whole selection interval: a scoring step
    under a selection (freeze's full backward) and a non-scoring one."""
    return args.dls_warmup + args.dls_interval + 1


def measure_memory(args) -> dict:
    """Peak memory of ``args.variant`` alone (run in its own process) over one DLS cycle."""
    device = torch.device(args.device)
    trainee = prepare(args.variant, args, build_base(args.model, args.dtype, device, args.seed), args.rank)
    input_ids = input_ids_for(args, trainee.model.config, device)
    in_use = memory.in_use(device)
    was_reset = memory.reset_peak(device)
    for _ in range(memory_steps(args)):
        timed_step(trainee, input_ids, device)
    return {"variant": args.variant, "peak_mib": memory.peak(device, was_reset)[0] / 2**20,
            "in_use_before_mib": in_use / 2**20, "threads": torch.get_num_threads()}


# -- the parent: memory per subprocess, time interleaved, then the table ----------------------------
def child_command(args, variant: str, rank: int | None) -> list[str]:
    command = [sys.executable, __file__, "--variant", variant, "--config-dir", args.config_dir]
    for name in ("model", "batch_size", "seq_len", "dtype", "device", "k_ratio",
                 "dls_warmup", "dls_interval", "targets", "seed"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    command += ["--gradient-checkpointing"] * args.gradient_checkpointing + ["--compile"] * args.compile
    return command + (["--rank", str(rank)] if rank is not None else [])


def run_child(args, variant: str, rank: int | None) -> dict:
    completed = subprocess.run(child_command(args, variant, rank), capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(result: dict, run_interval: int, clock: str = "wall") -> dict:
    """Step time by ``clock`` (DLS: steady state over a run) and DLS's own costs, from one variant's steps."""
    steps, key = result["steps"], CLOCKS[clock]
    summary = {"trainable": result["trainable"], "peak_mib": result["peak_mib"],
               "train_mib": result["peak_mib"] - result["in_use_before_mib"],
               "median_ms": _median([s[key] for s in steps]), "selections": result["selections"],
               "page_faults": None if None in (faults := [s["page_faults"] for s in steps]) else _median(faults),
               "lowest": [s["lowest"] for s in steps]}
    if result["variant"] in DLS_MODES:
        plain = _median([s[key] for s in steps if not s["scoring"]])
        scoring = _median([s[key] for s in steps if s["scoring"]])
        selector = statistics.fmean(s["selector_ms"] for s in steps)
        summary.update(non_scoring_ms=plain, scoring_ms=scoring, selector_ms=selector,
                       step_ms=((run_interval - 1) * plain + scoring) / run_interval)
    else:
        summary["step_ms"] = summary["median_ms"]
    return summary


def dls_overhead(summaries: dict, mode: str, run_interval: int) -> float:
    """selector.step() time plus the scoring steps' extra cost (skip mode's, where only scoring differs)
    amortised over ``run_interval``, as a share of ``mode``'s step."""
    skip = summaries["dls-skip"]
    scoring_extra = max(0.0, skip["scoring_ms"] - skip["non_scoring_ms"]) / run_interval
    return (summaries[mode]["selector_ms"] + scoring_extra) / summaries[mode]["step_ms"]


def goals(summaries: dict, run_interval: int) -> list[tuple[str, bool, str]]:
    """(goal, passed, measured) for each goal of issue 5."""
    floor, lora = summaries["floor"]["step_ms"], summaries["lora"]["step_ms"]
    roae, freeze = summaries["roae"]["step_ms"], summaries["dls-freeze"]["step_ms"]
    rosa_peaks = {v: summaries[v]["peak_mib"] for v in ("roae", "dls-skip", "dls-freeze")}
    overheads = {mode: dls_overhead(summaries, mode, run_interval) for mode in ("dls-skip", "dls-freeze")}
    lora_peak = summaries["lora"]["peak_mib"]
    return [
        (f"RoAE (all layers) step <= {GOAL_ROAE_VS_FLOOR:.2f}x floor", roae <= GOAL_ROAE_VS_FLOOR * floor,
         f"{roae / floor:.3f}x"),
        ("RoAE (all layers) step <= matched LoRA", roae <= lora, f"{roae / lora:.3f}x"),
        (f"DLS freeze step (over a run) <= {GOAL_FREEZE_VS_LORA:.2f}x matched LoRA", freeze <= GOAL_FREEZE_VS_LORA * lora,
         f"{freeze / lora:.3f}x"),
        ("peak memory of RoSA <= matched LoRA", max(rosa_peaks.values()) <= lora_peak,
         ", ".join(f"{v} {p:.0f}" for v, p in rosa_peaks.items()) + f" vs lora {lora_peak:.0f} MiB"),
        (f"DLS selection + scoring overhead <= {GOAL_DLS_OVERHEAD:.0%} of step",
         max(overheads.values()) <= GOAL_DLS_OVERHEAD, ", ".join(f"{mode} {share:.2%}" for mode, share in overheads.items())),
    ]


def freeze_break_even(summaries: dict) -> dict | None:
    """What truncating backward is worth: freeze's step time saved per layer that backward no longer
    reaches, and the lowest selected layer from which freeze meets its goal, on a straight line
    through dls-freeze and dls-freeze-top (decoder layers cost the same); 0 when it holds whatever
    the selection. None when there is no line: both variants stopped at the same layer, a step time
    is missing (no scoring step was timed), or the cut saved nothing."""
    (low, ms), (top_low, top_ms) = [(statistics.median(summaries[v]["lowest"]), summaries[v]["step_ms"])
                                    for v in ("dls-freeze", "dls-freeze-top")]
    if low == top_low or not (math.isfinite(ms) and math.isfinite(top_ms) and top_ms < ms):
        return None
    per_layer = (ms - top_ms) / (top_low - low)
    target = GOAL_FREEZE_VS_LORA * summaries["lora"]["step_ms"]
    return {"ms_per_layer": per_layer, "goal_from_layer": max(0, math.ceil(low + (ms - target) / per_layer)),
            "through": (low, top_low)}


def noise_floor(summaries: dict) -> float:
    """How far from 1 the control's ratio to the floor reads: the machine's noise in this run."""
    return abs(summaries["floor-copy"]["step_ms"] / summaries["floor"]["step_ms"] - 1)


def machine(args) -> str:
    if torch.device(args.device).type == "cuda":
        where = torch.cuda.get_device_name(args.device)
    else:
        where = cpu_machine()
    return f"{where}, torch {torch.__version__}, {platform.system()} {platform.release()}"


def print_report(args, budget: dict, summaries: dict, threads: int, checks: list) -> None:
    floor, lora = summaries["floor"]["step_ms"], summaries["lora"]["step_ms"]
    print(f"model {args.model}, batch {args.batch_size} x seq {args.seq_len}, {args.dtype} on {args.device}, "
          f"{args.steps} timed steps (interleaved) after {args.warmup_steps} warm-up, gradient checkpointing "
          f"{args.gradient_checkpointing}, compile {args.compile}")
    print(f"machine: {machine(args)}, {threads} torch threads; clock: {args.clock}")
    print(f"RoSA targets {args.targets}: {budget['rosa']:,d} trainable; matched LoRA r={budget['lora']['rank']}, "
          f"DoRA r={budget['dora']['rank']}; DLS k_ratio {args.k_ratio}, warmup {args.dls_warmup}, interval "
          f"{args.dls_interval}; DLS figures for a run with interval {args.run_interval}")
    print(f"{'variant':<15}{'trainable':>10}{'step ms':>10}{'peak MiB':>10}{'train MiB':>11}{'x floor':>9}{'x LoRA':>8}")
    for variant, s in summaries.items():
        print(f"{variant:<15}{s['trainable']:>10,d}{s['step_ms']:>10.1f}{s['peak_mib']:>10.0f}{s['train_mib']:>11.0f}"
              f"{s['step_ms'] / floor:>9.3f}{s['step_ms'] / lora:>8.3f}")
    print("step ms: median; for dls-* the steady state of that run. train MiB: peak minus memory in use before step 0.")
    print(f"noise floor of this run: floor-copy reads {summaries['floor-copy']['step_ms'] / floor:.3f}x the floor; ratios "
          f"within {noise_floor(summaries):.3f} of 1 are not resolved")
    if all(s["page_faults"] is not None for s in summaries.values()):
        print("minor page faults per step (median, the timing process): "
              + ", ".join(f"{variant} {s['page_faults']:,.0f}" for variant, s in summaries.items()))
    for variant in DLS_MODES:
        s = summaries[variant]
        print(f"{variant}: non-scoring {s['non_scoring_ms']:.1f} ms, scoring {s['scoring_ms']:.1f} ms, selector.step() "
              f"{s['selector_ms']:.2f} ms ({s['selector_ms'] / s['step_ms']:.2%}), overhead "
              f"{dls_overhead(summaries, variant, args.run_interval):.2%} (at interval {args.dls_interval}: "
              f"{dls_overhead(summaries, variant, args.dls_interval):.2%}); lowest selected layer per step {s['lowest']}")
    break_even = freeze_break_even(summaries)
    if break_even:
        print(f"freeze: each layer below the lowest selected one saves {break_even['ms_per_layer']:.1f} ms; the freeze "
              f"goal holds from lowest selected layer {break_even['goal_from_layer']} on (a line through layers "
              f"{break_even['through'][0]:g} and {break_even['through'][1]:g})")
    for text, passed, detail in checks:
        print(f"[{'PASS' if passed else 'FAIL'}] {text}: {detail}")


def run_all(args) -> None:
    with tempfile.TemporaryDirectory() as config_dir:
        model_config(args.model).save_pretrained(config_dir)
        args.config_dir = config_dir
        budget = matched_budget(args)
        ranks = {"lora": budget["lora"]["rank"], "dora": budget["dora"]["rank"]}
        memories = {variant: run_child(args, variant, ranks.get(variant)) for variant in VARIANTS}
    timings = time_interleaved(args, VARIANTS, ranks)
    summaries = {variant: summarise({**timings[variant], **memories[variant]}, args.run_interval, args.clock)
                 for variant in VARIANTS}
    checks = goals(summaries, args.run_interval)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if k != "config_dir"}, "machine": machine(args),
            "budget": budget, "summaries": summaries, "noise_floor": noise_floor(summaries), "timings": timings,
            "memories": memories,
            "goals": [{"goal": t, "passed": p, "measured": d} for t, p, d in checks]}, indent=1))
    print_report(args, budget, summaries, memories["floor"]["threads"], checks)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help=f"{' | '.join(SHAPES)} (random weights) or a local model directory")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant (interleaved)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (allocator, compile)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", default="fp32", choices=PRECISIONS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained model")
    parser.add_argument("--k-ratio", type=float, default=0.5)
    parser.add_argument("--dls-warmup", type=int, default=1,
                        help="DLS warmup: steps that train every layer before the first selection")
    parser.add_argument("--dls-interval", type=int, default=5, help="DLS interval of the benchmark's own short run")
    parser.add_argument("--run-interval", type=int, default=DLSConfig().interval,
                        help="DLS interval of the run the figures describe (weights the scoring steps)")
    parser.add_argument("--targets", default="q,k", help="RoAE targets (examples/quickstart.yaml: q,k)")
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS), help="which step time the ratios and goals use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one subprocess
    parser.add_argument("--config-dir", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)  # transformers 5's renames, raised inside peft/transformers
    if args.variant is None:
        run_all(args)
        return
    print(json.dumps(measure_memory(args)))


if __name__ == "__main__":
    main()
