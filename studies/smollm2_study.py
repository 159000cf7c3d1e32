"""The SmolLM2 study behind ``docs/study.md``: RoSA against its ablations and the LoRA family on a real
instruction-tuned RoPE model, in one command per size::

    python studies/smollm2_study.py --size cpu    # the slice that fits 2 CPU cores (results committed)
    python studies/smollm2_study.py --size gpu    # the fuller study for one GPU (bf16)

1. ``grid``: ``rosa sweep --preset ablation --grid lr=...`` with seed 1: RoSA, RoAE only, DLS on LoRA,
   LoRA, DoRA and PiSSA (the LoRA family at RoSA's parameter budget) at each learning rate of the size,
   trained on the seeded commonsense stand-in mix with ``studies/smollm2.yaml`` and a 120-record
   validation split, evaluated greedily on the commonsense test sets.
2. Each method's learning rate is the one of lowest validation loss in the grid; ``seeds-<method>``
   sweeps train it with the remaining seeds. Seed 1's run is the grid's.
3. The untuned model on the same items, ``rosa analyze activations`` (the paper's Figure 1) on the
   model and ``rosa analyze layers`` on RoSA's seed-1 run.
4. Paired tests (``rosa.compare``): every method against RoSA, and the paper's two ablation claims.
5. ``docs/study.md`` with the tables, the tests and the figures (copied to ``docs/study/``).

Everything is resumable: rerunning the command skips finished runs (a run counts as finished by its
``run.json`` and ``metrics.json``, which are committed under ``studies/results/``, so a fresh clone resumes
too); ``--report-only`` rewrites the report from whatever has finished. Statements in the report are
computed from the numbers, so the text cannot claim more than the runs show.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rosa.analyze.activations import low_frequency_contrast
from rosa.compare import load_result, significance_rows
from rosa.compare.table import comparison_rows
from rosa.eval.runner import PREDICTIONS_FILE
from rosa.serialization import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROSA_SHARED_DIR", REPO.parent / "shared"))
MODEL = SHARED / "models" / "SmolLM2-135M-Instruct-GGUF"
CONFIG = REPO / "studies" / "smollm2.yaml"
METHODS = ("rosa", "roae", "lora-dls", "lora", "dora", "pissa")
BUDGET_MATCHED = ("lora-dls", "lora", "dora", "pissa")
REFERENCE, DECODING, TASKS = "rosa", "greedy", "commonsense"
COMMITTED_FIELDS = ("task", "index", "extracted", "correct")
ALPHA, RESAMPLES = 0.05, 10000


@dataclass(frozen=True)
class Size:
    """How much of the study to run. ``budget`` is the wall time the size is meant to fit."""

    name: str
    budget: str
    steps: int
    batch: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    limit: int
    eval_batch: int


SIZES = {
    # 2 CPU cores: 24 runs of 50 steps (~2 s a step in bf16) and 280 items each: about 70 minutes measured.
    "cpu": Size("cpu", "2.5 hours on 2 CPU cores", steps=50, batch=8, lrs=(2e-3, 1e-2), seeds=(1, 2, 3), limit=40,
                eval_batch=16),
    # one H200 in bf16: 4x the data per run, a third learning rate and 5x the items, meant for 8 minutes.
    "gpu": Size("gpu", "8 minutes on one H200 GPU", steps=100, batch=16, lrs=(1e-3, 3e-3, 1e-2), seeds=(1, 2, 3),
                limit=200, eval_batch=64),
}


# -- running -------------------------------------------------------------------------------------------
def rosa_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rosa.cli", *args]


def sweep_command(size: Size, out: Path, *args: str) -> list[str]:
    return rosa_cli(
        "sweep", "--config", str(CONFIG), "--model", str(MODEL), "--max-steps", str(size.steps),
        "--batch-size", str(size.batch), "--micro-batch-size", str(size.batch),
        "--set", f"training.warmup_steps={max(1, size.steps // 10)}", "--set", f"training.save_steps={size.steps // 2}",
        "--set", f"training.logging_steps={max(1, size.steps // 10)}",
        "--tasks", TASKS, "--limit", str(size.limit), "--decoding", DECODING,
        "--eval-batch-size", str(size.eval_batch), "--no-progress", "--output-dir", str(out), *args,
    )


def run(command: list[str], log: Path) -> None:
    with open(log, "a") as handle:
        if subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"failed: {' '.join(command)}\nsee {log}; rerun this command to resume.")


def grid_point(out: Path, method: str, lr: float) -> Path:
    return out / "grid" / "runs" / f"method-{method}__training.lr-{lr:g}"


def seed_point(out: Path, size: Size, method: str, seed: int) -> Path:
    if seed == size.seeds[0]:
        return grid_point(out, method, chosen_lrs(out, size)[method])
    return out / f"seeds-{method}" / "runs" / f"seed-{seed}"


def validation_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "run.json").read_text())["validation"]["best_eval_loss"]


def chosen_lrs(out: Path, size: Size) -> dict[str, float]:
    """Each method's learning rate of lowest validation loss on the first seed."""
    return {m: min(size.lrs, key=lambda lr: validation_loss(grid_point(out, m, lr))) for m in METHODS}


def run_study(out: Path, size: Size, report_only: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "study.log"
    lrs = ",".join(f"{lr:g}" for lr in size.lrs)
    grid = sweep_command(size, out / "grid", "--preset", "ablation", "--grid", f"lr={lrs}", "--seed", str(size.seeds[0]))
    run(grid + (["--report-only"] if report_only else []), log)
    if report_only:
        return
    for method, lr in chosen_lrs(out, size).items():
        budget = ["--match-params", "rosa"] if method in BUDGET_MATCHED else []
        seeds = ",".join(map(str, size.seeds[1:]))
        run(sweep_command(size, out / f"seeds-{method}", "--method", method, "--lr", f"{lr:g}", *budget,
                          "--grid", f"seed={seeds}"), log)
    if not (out / "base" / "metrics.json").is_file():
        run(rosa_cli("eval", "--model", str(MODEL), "--tasks", TASKS, "--limit", str(size.limit), "--decoding", DECODING,
                     "--batch-size", str(size.eval_batch), "--precision", "bf16", "--no-progress",
                     "--output", str(out / "base")), log)
    for target in ("activations", "layers"):  # derived files: recomputed every time
        shutil.rmtree(out / target, ignore_errors=True)
    run(rosa_cli("analyze", "activations", "--model", str(MODEL), "--prompts", "boolq", "--limit", "64",
                 "--output", str(out / "activations")), log)
    run(rosa_cli("analyze", "layers", str(seed_point(out, size, REFERENCE, size.seeds[0])), "--output",
                 str(out / "layers")), log)


def keep_no_test_items(out: Path) -> None:
    """Drop the test items' text from every prediction file, keeping what the report reads (task, index,
    extracted answer, correct): the results are committed, and the benchmark files are not ours to copy.
    Idempotent; a finished evaluation is never regenerated, so nothing reads the dropped fields again."""
    for path in out.rglob(PREDICTIONS_FILE):
        items = [json.loads(line) for line in path.read_text().splitlines()]
        kept = [{key: item[key] for key in COMMITTED_FIELDS if key in item} for item in items]
        if kept != items:
            atomic_write_bytes(path, "".join(json.dumps(item) + "\n" for item in kept).encode())


# -- the numbers ---------------------------------------------------------------------------------------
def results(out: Path, size: Size) -> dict[str, dict[int, object]]:
    """Every method's evaluated runs by seed, at its chosen learning rate."""
    return {m: {s: load_result(seed_point(out, size, m, s), DECODING, label=m) for s in size.seeds} for m in METHODS}


def paired(runs: dict[str, dict[int, object]], ref: str, other: str, seeds: tuple[int, ...]) -> list[dict]:
    """``other`` against ``ref`` trained with the same seed, on the same items, seed by seed (deltas are
    ``other`` minus ``ref``)."""
    return [significance_rows(runs[ref][s], [runs[other][s]], ALPHA, RESAMPLES, seed=s)[0] for s in seeds]


def claim_verdict(name: str, tests: list[dict]) -> str:
    """What the paired bootstrap says of ``name`` ("X above Y"), counted over the seeds."""
    above = sum(t["micro"]["significant"] and t["micro"]["delta"] > 0 for t in tests)  # delta is X minus Y
    below = sum(t["micro"]["significant"] and t["micro"]["delta"] < 0 for t in tests)
    mean = statistics.fmean(t["micro"]["delta"] for t in tests)
    counts = f"mean difference {mean:+.2f} points; significant in {above} of {len(tests)} seeds for it, {below} against"
    if above == len(tests):
        return f"**supported** ({counts})"
    if below and not above:
        return f"**contradicted** ({counts})"
    if above and below:
        return f"**inconsistent** ({counts})"
    return f"**not shown** ({counts})"


def mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def accuracy_table(runs: dict[str, dict[int, object]], base: object, lrs: dict[str, float]) -> tuple[str, list[str]]:
    tasks = [t for t in base.metrics["tasks"]]
    base_row = comparison_rows([base])[0]
    rows = [["untuned model", "", *(f"{base_row[t]:.2f}" for t in [*tasks, "micro", "macro"]), "0", "", ""]]
    for method in METHODS:
        mine = comparison_rows(list(runs[method].values()))
        losses = [r.run["train_loss"] for r in runs[method].values()]
        rows.append([method, f"{lrs[method]:g}", *(mean_std([r[t] for r in mine]) for t in [*tasks, "micro", "macro"]),
                     "/".join(f"{b:,d}" for b in sorted({r["trainable_params"] for r in mine})), mean_std(losses),
                     mean_std([r["train_time_s"] for r in mine])])
    header = ["method", "lr", *tasks, "micro", "macro", "trainable params", "train loss", "train time (s)"]
    return table(header, rows), tasks


def grid_table(out: Path, size: Size, lrs: dict[str, float]) -> str:
    rows = []
    for method in METHODS:
        cells = []
        for lr in size.lrs:
            point = grid_point(out, method, lr)
            micro = load_result(point, DECODING).metrics["micro_average"] * 100
            mark = " ←" if lr == lrs[method] else ""
            cells.append(f"{validation_loss(point):.4f} / {micro:.2f}{mark}")
        rows.append([method, *cells])
    return table(["method", *(f"lr {lr:g}: val loss / micro %" for lr in size.lrs)], rows)


def grid_verdict(out: Path, size: Size, lrs: dict[str, float]) -> str:
    """Whether the validation loss picked, on seed 1, the rate that also answered more items."""
    def micro(method: str, lr: float) -> float:
        return load_result(grid_point(out, method, lr), DECODING).metrics["micro_average"]

    agree = [m for m in METHODS if micro(m, lrs[m]) >= max(micro(m, lr) for lr in size.lrs)]
    return (f"The rate of lowest validation loss also answered the most items for {len(agree)} of {len(METHODS)} "
            f"methods ({', '.join(agree) or 'none'}): on this model and budget, validation loss is an imperfect guide "
            "to accuracy." if len(agree) < len(METHODS) else
            "The rate of lowest validation loss also answered the most items for every method.")


def significance_table(runs: dict[str, dict[int, object]], seeds: tuple[int, ...]) -> tuple[str, dict[str, list[float]]]:
    """One row per method: the micro-average difference to RoSA per seed, and how many task tests
    came out significant; also returns, per method, the deltas whose interval excludes zero."""
    rows, significant = [], {}
    for method in METHODS[1:]:
        tests = paired(runs, REFERENCE, method, seeds)
        cells = []
        for test in tests:
            micro = test["micro"]
            cells.append(f"{micro['delta']:+.2f} [{micro['low']:+.2f}, {micro['high']:+.2f}]" + ("*" if micro["significant"] else ""))
            if micro["significant"]:
                significant.setdefault(method, []).append(micro["delta"])
        hits = sum(t["significant"] for test in tests for t in test["tasks"].values())
        total = sum(len(test["tasks"]) for test in tests)
        rows.append([method, *cells, f"{hits} of {total}"])
    header = ["method vs rosa", *(f"seed {s}: Δ micro [95% CI]" for s in seeds), "task tests with p < 0.05"]
    return table(header, rows), significant


def significance_verdict(significant: dict[str, list[float]], comparisons: int, seeds: int) -> str:
    """Which methods differ from RoSA, in how many seeds and in which direction, against how many
    significant results chance alone would give."""
    count = sum(len(deltas) for deltas in significant.values())
    if count == 0:
        return "None does: this study finds no accuracy difference between RoSA and the other methods."
    details = "; ".join(f"{m} in {len(d)} of {seeds} seeds ({sum(x > 0 for x in d)} above RoSA, {sum(x < 0 for x in d)} below)"
                        for m, d in significant.items())
    return f"{count} do: {details}. About {comparisons / 20:.1f} would be expected by chance at a 5% level."


def loss_lines(points: list[dict[str, str]]) -> list[str]:
    """Say which training-loss gaps to RoSA exceed the two methods' seed spreads."""
    losses = {m: [float(p["train_loss"]) for p in points if p["method"] == m] for m in METHODS}
    ref_mean, ref_std = statistics.fmean(losses[REFERENCE]), statistics.stdev(losses[REFERENCE])
    lines = []
    for method in METHODS[1:]:
        mean, std = statistics.fmean(losses[method]), statistics.stdev(losses[method])
        gap = mean - ref_mean
        verdict = "beyond" if abs(gap) > std + ref_std else "within"
        lines.append(f"- {method}: mean training loss {mean:.4f} vs RoSA {ref_mean:.4f} ({gap:+.4f}), "
                     f"{verdict} the two methods' seed spreads ({std:.4f} + {ref_std:.4f}).")
    return lines


def activation_lines(out: Path) -> list[str]:
    report = json.loads((out / "activations" / "activations.json").read_text())
    lines = []
    for state in ("query", "key"):
        contrast = low_frequency_contrast(report, state)
        larger = sum(low > other for _, low, other in contrast)
        ratios = [low / other for _, low, other in contrast if other]
        lines.append(f"- {state} states: the low-frequency dimensions have the larger mean strength in {larger} of "
                     f"{len(contrast)} layers (low/other ratio: median {statistics.median(ratios):.2f}, "
                     f"range {min(ratios):.2f}-{max(ratios):.2f}).")
    return lines


def selection_lines(out: Path) -> list[str]:
    summary = json.loads((out / "layers" / "dls_selection.json").read_text())
    events = summary["selection_events"]
    counts = {c["layer"]: c["exploit"] + c["explore"] for c in summary["layers"]}
    always = [layer for layer, n in counts.items() if n == events]
    never = [layer for layer, n in counts.items() if n == 0]
    return [f"- RoSA, seed 1: {events} selections of k = {summary['k']} of {summary['n_layers']} layers after a "
            f"{summary['warmup']}-step warm-up. Selected every time: layers {', '.join(map(str, always)) or 'none'}; "
            f"never: {', '.join(map(str, never)) or 'none'}; the other {len(counts) - len(always) - len(never)} "
            "layers some of the times."]


def copy_figures(out: Path, docs: Path, size: Size) -> dict[str, str]:
    sources = {
        "query_strength.png": out / "activations" / "query_strength.png",
        "key_strength.png": out / "activations" / "key_strength.png",
        "dls_selection.png": out / "layers" / "dls_selection.png",
        "dls_frequency.png": out / "layers" / "dls_frequency.png",
    }
    target = docs / "study" / f"smollm2-{size.name}"
    target.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        shutil.copyfile(source, target / name)
    return {name: f"study/smollm2-{size.name}/{name}" for name in sources}


def write_docs(out: Path, docs: Path, size: Size, minutes: float) -> Path:
    runs, lrs = results(out, size), chosen_lrs(out, size)
    base = load_result(out / "base", DECODING, label="untuned")
    accuracy, tasks = accuracy_table(runs, base, lrs)
    sig_table, significant = significance_table(runs, size.seeds)
    comparisons = (len(METHODS) - 1) * len(size.seeds)
    points = [{"method": m, "train_loss": r.run["train_loss"]} for m in METHODS for r in runs[m].values()]
    claims = [
        ("RoSA above LoRA", "lora", "rosa"), ("RoSA above DoRA", "dora", "rosa"), ("RoSA above PiSSA", "pissa", "rosa"),
        ("RoAE helps: RoAE alone above LoRA", "lora", "roae"), ("DLS helps RoAE: RoSA above RoAE alone", "roae", "rosa"),
        ("DLS helps LoRA: DLS on LoRA above LoRA", "lora", "lora-dls"),
    ]
    claim_lines = [f"- {name}: {claim_verdict(name, paired(runs, worse, better, size.seeds))}." for name, worse, better in claims]
    micro = {m: statistics.fmean(r.metrics["micro_average"] * 100 for r in runs[m].values()) for m in METHODS}
    best = max(micro, key=micro.get)
    base_micro = base.metrics["micro_average"] * 100
    above = [m for m in METHODS if micro[m] > base_micro]
    improved = ("every method answers more on average" if len(above) == len(METHODS)
                else f"{', '.join(above) or 'no method'} answer more on average")
    figures = copy_figures(out, docs, size)
    items = base.metrics["items"]
    at_edge = [m for m in METHODS if lrs[m] in (min(size.lrs), max(size.lrs))]
    edge_text = (f"the chosen rate is at an end of the grid for {len(at_edge)} of {len(METHODS)} methods "
                 f"({', '.join(f'{m} {lrs[m]:g}' for m in at_edge)}), so a wider grid might move them" if at_edge
                 else "every chosen rate is inside the grid")
    text = f"""# RoSA on a real model: the SmolLM2 study

Generated by `python studies/smollm2_study.py --size {size.name}` ({minutes:.0f} minutes of wall time for its
last full run on {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}; the size is meant to
fit {size.budget}). Its per-run results are committed in `studies/results/smollm2-{size.name}/`: rerunning the
command resumes, and `--report-only` rewrites this file from them. `--size gpu` runs the fuller study on one
GPU (not run yet: no GPU was available). Every statement below is computed from the numbers.

## What this shows and what it does not

SmolLM2-135M-Instruct (Llama architecture, 30 layers, 135M parameters, GGUF Q4_1 weights dequantised
to bf16) fine-tuned for {size.steps} steps of batch {size.batch} on the seeded commonsense stand-in mix, then
asked the first {size.limit} items of each of the {len(tasks)} commonsense test sets present ({items} items, greedy decoding).
The paper's models are 7B LLaMA/Qwen models trained for 3 epochs on Commonsense170K.

- Untuned, the model answers {base_micro:.2f}% of the items: it rarely writes the LLM-Adapters answer words.
  Fine-tuned, {improved}; the best mean is {best}'s {micro[best]:.2f}%, RoSA's is {micro[REFERENCE]:.2f}%.
- The paper's claims, tested with paired bootstrap intervals of the micro average (same seed, same items;
  "supported" needs a significant difference in the claimed direction in every seed):
{chr(10).join('  ' + line for line in claim_lines)}
- How many of the {comparisons} method-against-RoSA comparisons (5 methods x {len(size.seeds)} seeds) have a 95% interval
  that excludes zero? {significance_verdict(significant, comparisons, len(size.seeds))}
- At this scale a ranking may reflect the short training and the small learning-rate grid ({', '.join(f'{lr:g}' for lr in size.lrs)},
  chosen per method by validation loss; {edge_text}) rather than the methods at their best: each run sees
  {size.steps * size.batch} records, and DLS trains half of the layers at a time after its warm-up, so RoSA
  makes fewer updates than RoAE alone in the same steps.

## Setup

- Training: `studies/smollm2.yaml` on `commonsense_mix` (the boolq, ARC-Easy, ARC-Challenge and
  openbookqa training sets; Commonsense15K is not available offline), {size.steps} steps of batch {size.batch}, bf16
  autocast, a 120-record validation split whose best checkpoint is the final adapter. RoSA: rank 8,
  r_low 0.25, targets q and k, k_ratio 0.5, DLS warm-up 10 and interval 10 (paper: 100 and 50, too long for
  {size.steps} steps). The LoRA family gets the rank whose trainable parameter count is closest to RoSA's
  (`--match-params rosa`) on q, k, v, up and down (LLM-Adapters' targets).
- Learning rate: each method's from {', '.join(f'{lr:g}' for lr in size.lrs)} by the lowest validation loss with seed 1,
  then seeds {', '.join(map(str, size.seeds[1:]))} at that rate.
- Evaluation: greedy decoding instead of the paper's 4-beam search (about 3x faster here), the first
  {size.limit} items of each commonsense test set present (hellaswag's file is missing; piqa, social_i_qa
  and winogrande have no training file here, so they test transfer of the answer format).
- Significance: exact McNemar per task and a paired bootstrap ({RESAMPLES:,d} resamples) of the micro average.

## Accuracy (%, mean ± sample standard deviation over {len(size.seeds)} seeds)

{accuracy}
### Learning-rate grid (seed 1; ← the rate chosen by validation loss)

{grid_table(out, size, lrs)}
{grid_verdict(out, size, lrs)}

### Paired tests against RoSA

{sig_table}
Δ in percentage points (method minus RoSA); * = the {int(100 * (1 - ALPHA))}% paired-bootstrap interval excludes 0.
Task tests are exact McNemar tests, two-sided, uncorrected for multiple comparisons.

### Training loss

{chr(10).join(loss_lines(points))}

### Activation strength of RoPE-rotated states (the paper's Figure 1 on this model)

{chr(10).join(activation_lines(out))}

![query strength]({figures['query_strength.png']})
![key strength]({figures['key_strength.png']})

### DLS layer selection

{chr(10).join(selection_lines(out))}

![DLS selection]({figures['dls_selection.png']})
![DLS frequency]({figures['dls_frequency.png']})
"""
    path = docs / "study.md"
    atomic_write_bytes(path, text.encode())
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--output-dir", help="where the runs go (default: studies/results/smollm2-SIZE)")
    parser.add_argument("--docs", default=str(REPO / "docs"), help="where study.md and its figures go")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    args = parser.parse_args()
    if not MODEL.is_dir():
        sys.exit(f"the study needs {MODEL} (the project's ../shared assets); set ROSA_SHARED_DIR.")
    size = SIZES[args.size]
    out = Path(args.output_dir or REPO / "studies" / "results" / f"smollm2-{size.name}").resolve()
    started = time.perf_counter()
    run_study(out, size, args.report_only)
    keep_no_test_items(out)
    timing = out / "minutes.txt"  # the last full invocation's wall time, quoted by --report-only too
    if not args.report_only:
        timing.write_text(f"{(time.perf_counter() - started) / 60:.1f}\n")
    path = write_docs(out, Path(args.docs).resolve(), size, float(timing.read_text()) if timing.is_file() else float("nan"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
