"""The CPU-scale ablation study behind ``docs/study.md``, in one command (23 minutes on 2 CPU cores)::

    python studies/ablation_study.py

1. ``rosa sweep --preset ablation --grid seed=1,2,3`` on each real model in ``../shared/models``:
   RoSA, RoAE only, DLS on LoRA, LoRA, DoRA and PiSSA (the LoRA family at RoSA's parameter budget),
   trained on the seeded commonsense stand-in mix with ``studies/ablation.yaml`` and evaluated on the
   available commonsense test sets. One single-threaded worker per core shares the points (``--shard``).
2. ``rosa analyze activations`` on each base model (boolq prompts) and ``rosa analyze layers`` on
   each model's first RoSA run.
3. Paired significance of every method against RoSA with the same seed (``rosa.compare``).
4. ``docs/study.md`` with the tables, the tests and the figures (copied to ``docs/study/``).

Everything is resumable: rerunning the command skips finished runs; ``--report-only`` rewrites the
report from whatever has finished. Statements in the report are computed from the numbers, so the
text cannot claim more than the runs show.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rosa.analyze.activations import low_frequency_contrast
from rosa.compare import load_result, significance_rows
from rosa.data import TASKS as CATALOG
from rosa.serialization import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROSA_SHARED_DIR", REPO.parent / "shared"))
MODELS = {"stories260K": SHARED / "models" / "stories260K-hf", "TinyStories-656K": SHARED / "models" / "TinyStories-656K"}
CONFIG = REPO / "studies" / "ablation.yaml"
METHODS = ("rosa", "roae", "lora-dls", "lora", "dora", "pissa")
SEEDS = (1, 2, 3)
TASKS, LIMIT, DECODING = "commonsense", 30, "greedy"
STEPS = 100  # training.max_steps in studies/ablation.yaml
ALPHA, RESAMPLES = 0.05, 10000
REFERENCE = "rosa"
TASK_NAMES = {task.name for task in CATALOG}


def rosa_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rosa.cli", *args]


def sweep_command(model: Path, out: Path, *extra: str) -> list[str]:
    return rosa_cli(
        "sweep", "--config", str(CONFIG), "--model", str(model), "--preset", "ablation",
        "--grid", "seed=" + ",".join(map(str, SEEDS)), "--tasks", TASKS, "--limit", str(LIMIT),
        "--decoding", DECODING, "--no-progress", "--output-dir", str(out), *extra,
    )


def run_sweeps(out: Path, report_only: bool) -> None:
    """Plan both sweeps, then let one worker per core take alternate points of each (``--shard``).

    One single-threaded process per core: oversubscribed OpenMP threads on 2 cores run several times
    slower, and sharding every sweep balances the models' unequal costs across the workers.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name, model in MODELS.items():  # claims each sweep directory before the workers share it
        subprocess.run(sweep_command(model, out / name, "--report-only"), check=True, stdout=subprocess.DEVNULL)
    if report_only:
        return
    workers = max(1, os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def worker(index: int) -> int:
        with open(out / f"worker-{index}.log", "a") as log:
            for name, model in MODELS.items():
                command = sweep_command(model, out / name, "--shard", f"{index}/{workers}")
                if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode:
                    return 1
        return 0

    with ThreadPoolExecutor(workers) as pool:
        failures = sum(pool.map(worker, range(workers)))
    if failures:
        sys.exit(f"{failures} worker(s) failed; see {out}/worker-*.log, then rerun this command to resume.")
    for name, model in MODELS.items():  # one table per sweep, now that every shard has finished
        subprocess.run(sweep_command(model, out / name, "--report-only"), check=True, stdout=subprocess.DEVNULL)


def run_analyses(out: Path) -> None:
    for name, model in MODELS.items():
        target = out / name / "activations"
        shutil.rmtree(target, ignore_errors=True)  # derived files: recomputed every time
        subprocess.run(rosa_cli("analyze", "activations", "--model", str(model), "--prompts", "boolq", "--limit", "64",
                                "--output", str(target)), check=True, stdout=subprocess.DEVNULL)
        subprocess.run(rosa_cli("analyze", "layers", str(point_dir(out, name, REFERENCE, SEEDS[0])), "--output",
                                str(out / name / "layers")), check=True, stdout=subprocess.DEVNULL)


def point_dir(out: Path, model: str, method: str, seed: int) -> Path:
    return out / model / "runs" / f"method-{method}__seed-{seed}"


def significance(out: Path, model: str) -> dict[int, list[dict]]:
    """Per seed: every method against RoSA trained with the same seed."""
    results = {}
    for seed in SEEDS:
        ref = load_result(point_dir(out, model, REFERENCE, seed), DECODING, label=REFERENCE)
        others = [load_result(point_dir(out, model, m, seed), DECODING, label=m) for m in METHODS if m != REFERENCE]
        results[seed] = significance_rows(ref, others, ALPHA, RESAMPLES, seed=seed)
    return results


# -- the report -------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def number(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def mean_std(values: list[float]) -> str:
    import statistics

    if not values:
        return "n/a"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def accuracy_table(points: list[dict[str, str]], tasks: list[str]) -> str:
    rows = []
    for method in METHODS:
        mine = [p for p in points if p["method"] == method]
        budget = {p["trainable_params"] for p in mine}
        rows.append([method, *(mean_std([number(p[t]) for p in mine]) for t in [*tasks, "micro", "macro"]),
                     "/".join(f"{int(b):,d}" for b in sorted(budget, key=int)),
                     mean_std([number(p["train_loss"]) for p in mine]), mean_std([number(p["train_time_s"]) for p in mine])])
    return table(["method", *tasks, "micro", "macro", "trainable params", "train loss", "train time (s)"], rows)


def significance_table(tests: dict[int, list[dict]]) -> tuple[str, dict[str, list[float]]]:
    """One row per method: the micro-average difference to RoSA per seed, and how many task tests
    came out significant; also returns, per method, the deltas whose interval excludes zero."""
    rows, significant = [], {}
    for method in METHODS[1:]:
        cells, task_hits, task_tests = [], 0, 0
        for seed in SEEDS:
            row = next(r for r in tests[seed] if r["run"] == method)
            micro = row["micro"]
            cells.append(f"{micro['delta']:+.2f} [{micro['low']:+.2f}, {micro['high']:+.2f}]" + ("*" if micro["significant"] else ""))
            if micro["significant"]:
                significant.setdefault(method, []).append(micro["delta"])
            task_hits += sum(t["significant"] for t in row["tasks"].values())
            task_tests += len(row["tasks"])
        rows.append([method, *cells, f"{task_hits} of {task_tests}"])
    header = ["method vs rosa", *(f"seed {s}: Δ micro [95% CI]" for s in SEEDS), "task tests with p < 0.05"]
    return table(header, rows), significant


def activation_lines(out: Path, model: str) -> list[str]:
    import json

    report = json.loads((out / model / "activations" / "activations.json").read_text())
    lines = []
    for state in ("query", "key"):
        contrast = low_frequency_contrast(report, state)
        larger = sum(low > other for _, low, other in contrast)
        detail = ", ".join(f"layer {layer}: {low:.3f} vs {other:.3f}" for layer, low, other in contrast)
        lines.append(f"- {state} states: the low-frequency dimensions have the larger mean strength in {larger} of "
                     f"{len(contrast)} layers ({detail}).")
    return lines


def selection_lines(out: Path, model: str) -> list[str]:
    import json

    summary = json.loads((out / model / "layers" / "dls_selection.json").read_text())
    counts = ", ".join(f"layer {c['layer']}: {c['exploit']} exploit + {c['explore']} explore"
                       for c in summary["layers"])
    return [f"- RoSA, seed {SEEDS[0]}: {summary['selection_events']} selections of k = {summary['k']} of "
            f"{summary['n_layers']} layers after a {summary['warmup']}-step warm-up; {counts}."]


def copy_figures(out: Path, model: str, docs: Path) -> dict[str, str]:
    sources = {
        "accuracy_vs_params.png": out / model / "accuracy_vs_params.png",
        "accuracy_vs_method.png": out / model / "accuracy_vs_method.png",
        "query_strength.png": out / model / "activations" / "query_strength.png",
        "key_strength.png": out / model / "activations" / "key_strength.png",
        "dls_selection.png": out / model / "layers" / "dls_selection.png",
        "dls_frequency.png": out / model / "layers" / "dls_frequency.png",
    }
    target = docs / "study" / model
    target.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        shutil.copyfile(source, target / name)
    return {name: f"study/{model}/{name}" for name in sources}


def loss_lines(points: list[dict[str, str]]) -> list[str]:
    """Training loss is the one quantity these models separate; say which gaps exceed the seed spread."""
    import statistics

    losses = {m: [number(p["train_loss"]) for p in points if p["method"] == m] for m in METHODS}
    ref_mean, ref_std = statistics.fmean(losses[REFERENCE]), statistics.stdev(losses[REFERENCE])
    lines = []
    for method in METHODS[1:]:
        mean, std = statistics.fmean(losses[method]), statistics.stdev(losses[method])
        gap = mean - ref_mean
        verdict = "beyond" if abs(gap) > std + ref_std else "within"
        lines.append(f"- {method}: mean training loss {mean:.4f} vs RoSA {ref_mean:.4f} ({gap:+.4f}), "
                     f"{verdict} the two methods' seed spreads ({std:.4f} + {ref_std:.4f}).")
    return lines


def model_section(out: Path, model: str, docs: Path) -> tuple[str, dict]:
    points = read_csv(out / model / "results.csv")
    tasks = [c for c in points[0] if c in TASK_NAMES]
    tests = significance(out, model)
    sig_table, significant = significance_table(tests)
    figures = copy_figures(out, model, docs)
    micro = [number(p["micro"]) for p in points]
    budget = {p["method"]: p["trainable_params"] for p in points}
    text = [
        f"## {model}",
        "",
        f"{len(points)} runs ({len(METHODS)} methods x {len(SEEDS)} seeds), each evaluated on the first {LIMIT} items "
        f"of {len(tasks)} commonsense test sets ({points[0]['items']} items, {DECODING} decoding). Accuracy in %, "
        "mean ± sample standard deviation over the seeds.",
        "",
        accuracy_table(points, tasks),
        f"Per-run numbers, peak memory included: `runs/study/{model}/results.csv` (not committed; rerun the study).",
        "",
        f"### Paired tests against RoSA (same seed, same {points[0]['items']} items)",
        "",
        sig_table,
        f"Δ in percentage points (method minus RoSA); * = the {int(100 * (1 - ALPHA))}% paired-bootstrap interval "
        f"({RESAMPLES:,d} resamples) excludes 0. Task tests are exact McNemar tests, two-sided, uncorrected for "
        f"multiple comparisons (at p < {ALPHA}, about 1 in 20 null tests comes out significant by chance).",
        "",
        "### Training loss",
        "",
        *loss_lines(points),
        "",
        "### Activation strength of RoPE-rotated states (the paper's Figure 1 on this model)",
        "",
        *activation_lines(out, model),
        "",
        f"![query strength]({figures['query_strength.png']})",
        f"![key strength]({figures['key_strength.png']})",
        "",
        "### DLS layer selection",
        "",
        *selection_lines(out, model),
        "",
        f"![DLS selection]({figures['dls_selection.png']})",
        f"![DLS frequency]({figures['dls_frequency.png']})",
        "",
        "### Accuracy against budget",
        "",
        f"![accuracy vs parameters]({figures['accuracy_vs_params.png']})",
        f"![accuracy by method]({figures['accuracy_vs_method.png']})",
        "",
    ]
    facts = {"best_micro": max(micro), "zero_runs": sum(m == 0 for m in micro), "runs": len(micro),
             "significant": significant, "comparisons": (len(METHODS) - 1) * len(SEEDS), "budget": budget}
    return "\n".join(text), facts


def significance_verdict(facts: dict[str, dict], significant: int, comparisons: int) -> str:
    """What the paired tests support, computed: which methods differ from RoSA, in how many seeds,
    in which direction, against how many significant results chance alone would give."""
    if significant == 0:
        return "None does, so this study finds no accuracy difference between the methods at this scale."
    details = []
    for model, f in facts.items():
        for method, deltas in f["significant"].items():
            above = sum(d > 0 for d in deltas)
            details.append(f"{method} on {model} in {len(deltas)} of {len(SEEDS)} seeds "
                           f"({above} above RoSA, {len(deltas) - above} below)")
    all_above = all(d > 0 for f in facts.values() for deltas in f["significant"].values() for d in deltas)
    return (
        f"{significant} do: {'; '.join(details)}. About {comparisons / 20:.1f} would be expected by chance at a 5% "
        "level. " + ("Every significant difference has the other method above RoSA: at this scale and with "
                     "these settings RoSA answers fewer items, never more (the budgets match only roughly: "
                     "rank 1, the smallest LoRA, already has more parameters than RoSA here). " if all_above else "")
        + "With accuracies this close to zero, these are differences in whether a model starts to write the "
        "answer format at all."
    )


def write_docs(out: Path, docs: Path, minutes: float) -> Path:
    sections, facts = zip(*(model_section(out, model, docs) for model in MODELS))
    runs = sum(f["runs"] for f in facts)
    best = max(f["best_micro"] for f in facts)
    zero = sum(f["zero_runs"] for f in facts)
    significant = sum(len(deltas) for f in facts for deltas in f["significant"].values())
    comparisons = sum(f["comparisons"] for f in facts)
    verdict = significance_verdict(dict(zip(MODELS, facts)), significant, comparisons)
    budgets = "; ".join(
        f"{model}: " + ", ".join(f"{m} {int(f['budget'][m]):,d}" for m in METHODS) for model, f in zip(MODELS, facts))
    text = f"""# The CPU-scale ablation study

Generated by `python studies/ablation_study.py` (the whole study: {minutes:.0f} minutes of wall time for its
last full run, on {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}).
Rerunning the command resumes; `--report-only` rewrites this file from the finished runs.

## What these models can and cannot show

The two models are the only real RoPE models available offline here: `stories260K` (5 layers, 263K
parameters) and `TinyStories-656K` (2 layers, 656K parameters), Llama-architecture language models
trained on children's stories. They have never seen a multiple-choice question, and each run fine-tunes
them for {STEPS} steps on a CPU. The paper's models are 7B-parameter LLaMA/Qwen models trained for 3 epochs.

- Across all {runs} runs the best micro-average accuracy is {best:.2f}% and {zero} runs answer no item
  correctly. Answering needs the model to write the LLM-Adapters answer words ("the correct answer is
  answer2") after a few hundred prompt tokens, which most of these runs do not yet do after {STEPS} steps.
- Of the {comparisons} method-against-RoSA comparisons of the micro average (per model, method and seed),
  the ones whose 95% bootstrap interval excludes zero are starred below. {verdict}
- One learning rate and 100 steps for every method: a ranking here may reflect those choices (RoSA's
  DLS trains only k_ratio = 0.5 of the layers after warm-up, 3 of 5 and 1 of 2 here, so it makes
  fewer updates than RoAE alone) rather than the methods at their best. The paper tunes each method over full training.
- So this study **does not** test the paper's accuracy claims (RoSA above LoRA, DoRA and PiSSA at equal
  budgets; each of RoAE and DLS helping). Those need a real model and the full protocol, which the same
  commands run unchanged (`rosa sweep --preset ablation --model <your model> --data commonsense_15k`).
- What it **does** show, with numbers: the whole pipeline (train, evaluate, compare, sweep, analyze) on real
  pretrained RoPE models; the matched parameter budgets ({budgets}); how the methods'
  training losses differ across seeds; how DLS spreads its selections over the layers; and whether the
  low-frequency dimensions of these models' rotated query/key states carry larger values, the observation
  that motivates RoAE (Figure 1 of the paper).

## Setup

- Training: `studies/ablation.yaml` on the seeded stand-in mix `commonsense_mix` (boolq, ARC-Easy,
  ARC-Challenge and openbookqa train sets; the real Commonsense15K is not available offline).
  {STEPS} steps of batch 8; one learning rate (0.01) for every method, because the methods' defaults
  (1e-3 RoSA, 3e-4 LoRA) are set for 7B models over thousands of steps and barely move these in {STEPS};
  `cutoff_len` 512 instead of 256, because `stories260K`'s 512-token vocabulary needs about 340 tokens per
  example (median of 300 mix records) and a cut at 256 removed the answer from all 300; DLS warm-up 20 and interval 10 (paper: 100 and 50) so
  that {STEPS} steps include selections. RoSA: rank 8, r_low 0.25, targets q, k_ratio 0.5, p_exploit 0.8,
  `skip` masking.
- Budgets: the sweep's `ablation` preset gives LoRA, DoRA, PiSSA and DLS-on-LoRA the rank whose trainable
  parameter count is closest to RoSA's on the same model (`--match-params rosa`), LoRA on
  q, k, v, up and down projections (LLM-Adapters' targets).
- Evaluation: the first {LIMIT} items of the seven commonsense test sets present (hellaswag's file is
  missing), {DECODING} decoding instead of 4-beam search to fit the time budget (batched greedy is about 3x
  faster here: 17.5 vs 5.9 items/s in `benchmarks/eval_throughput.py`; whether beam search would
  rank the methods differently is not measured). Arithmetic sets are left out, and the training mix is the
  commonsense one only: evaluating one run (stories260K, DoRA, seed 2) on 10 items of each of the
  seven arithmetic sets took 67 s on 2 cores (up to 256 new tokens per item), which for 36 runs would
  nearly double the study, and it answered 0 of the 60 items outside AQuA (AQuA's upstream
  first-capital-letter rule scores 3 of 10 on story text).
- Significance: each method is paired with the RoSA run of the same seed on the same items; exact
  McNemar per task, paired bootstrap (percentile, {RESAMPLES:,d} resamples) for the micro average.

""" + "\n".join(sections)
    path = docs / "study.md"
    atomic_write_bytes(path, text.encode())
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "study"), help="where the runs go")
    parser.add_argument("--docs", default=str(REPO / "docs"), help="where study.md and its figures go")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    args = parser.parse_args()
    missing = [str(path) for path in MODELS.values() if not path.is_dir()]
    if missing:
        sys.exit(f"the study needs the models {missing} (the project's ../shared assets); set ROSA_SHARED_DIR.")
    out, started = Path(args.output_dir).resolve(), time.perf_counter()
    run_sweeps(out, args.report_only)
    run_analyses(out)
    timing = out / "minutes.txt"  # the last full invocation's wall time, quoted by --report-only too
    if not args.report_only:
        timing.write_text(f"{(time.perf_counter() - started) / 60:.1f}\n")
    path = write_docs(out, Path(args.docs).resolve(), float(timing.read_text()) if timing.is_file() else float("nan"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
