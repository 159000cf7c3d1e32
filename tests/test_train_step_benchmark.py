"""benchmarks/train_step.py: variants, the parameter-budget match, the step accounting and the goals."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import load_script

train_step = load_script("benchmarks/train_step.py")

TINY = ["--model", "tiny", "--batch-size", "1", "--seq-len", "8", "--steps", "2", "--warmup-steps", "1"]


@pytest.fixture
def config_dir(tmp_path):
    train_step.model_config("tiny").save_pretrained(tmp_path)
    return str(tmp_path)


def child_args(config_dir, variant: str, *extra: str):
    return train_step.parse_args([*TINY, "--variant", variant, "--config-dir", config_dir, *extra])


def test_budget_matches_rosa_count_and_lora_formula(config_dir):
    """tiny: 8 layers, d_model 128, 4 q heads / 2 kv heads of 32 dims (16 pairs, 4 low -> d_low 8),
    intermediate 344. RoAE rank 8 on q,k; LoRA on q,k,v,up,down."""
    args = train_step.parse_args(TINY)
    args.config_dir = config_dir
    budget = train_step.matched_budget(args)
    assert budget["rosa"] == 8 * (8 * 128 + 8 * 4 * 8 + 8 * 128 + 8 * 2 * 8)
    lora_per_rank = 8 * ((128 + 128) + (128 + 64) + (128 + 64) + (128 + 344) + (344 + 128))
    assert budget["lora"] == {"rank": 2, "trainable": 2 * lora_per_rank}
    dora_magnitudes = 8 * (128 + 64 + 64 + 344 + 128)
    assert budget["dora"] == {"rank": 1, "trainable": lora_per_rank + dora_magnitudes}


def test_child_command_round_trips_every_setting(config_dir):
    args = train_step.parse_args([*TINY, "--k-ratio", "0.25", "--gradient-checkpointing", "--dls-interval", "3"])
    args.config_dir = config_dir
    command = train_step.child_command(args, "lora", 2)
    child = train_step.parse_args(command[2:])
    assert (child.variant, child.rank, child.config_dir) == ("lora", 2, config_dir)
    for name in ("model", "batch_size", "seq_len", "k_ratio", "dls_interval",
                 "gradient_checkpointing", "compile", "targets", "seed", "dtype", "device"):
        assert getattr(child, name) == getattr(args, name), name


def tiny_base(args):
    return train_step.build_base(args.model, args.dtype, torch.device("cpu"), args.seed)


def test_floor_backward_reaches_the_input_embeddings(config_dir):
    args = child_args(config_dir, "floor")
    trainee = train_step.prepare("floor", args, tiny_base(args), None)
    assert trainee.trainable == 0 and trainee.optimizer is None
    captured = []
    trainee.model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: captured.append(output))
    train_step.loss_of(trainee, torch.randint(1024, (1, 8))).backward()
    assert captured[0].grad is not None and captured[0].grad.abs().sum() > 0


def test_shared_copies_share_the_matrices_but_not_the_norm_weights(config_dir):
    args = child_args(config_dir, "dls-skip")
    base = tiny_base(args)
    first, second = train_step.shared_copy(base), train_step.shared_copy(base)
    assert first.model.embed_tokens.weight is base.model.embed_tokens.weight is second.model.embed_tokens.weight
    assert first.model.layers[3].mlp.up_proj.weight is second.model.layers[3].mlp.up_proj.weight
    norm = first.model.layers[3].input_layernorm.weight
    assert norm is not second.model.layers[3].input_layernorm.weight and torch.equal(norm, second.model.layers[3].input_layernorm.weight)
    scored = train_step.prepare("dls-skip", args, first, None)
    plain = train_step.prepare("roae", args, second, None)
    assert scored.model.get_base_model().model.layers[3].input_layernorm.weight.requires_grad  # DLS scores from these
    assert not plain.model.get_base_model().model.layers[3].input_layernorm.weight.requires_grad


def alone(args, variant: str, steps: int) -> list[float]:
    trainee = train_step.prepare(variant, args, tiny_base(args), None)
    input_ids = train_step.input_ids_for(args, trainee.model.config, torch.device("cpu"))
    return [train_step.timed_step(trainee, input_ids, torch.device("cpu"))["loss"] for _ in range(steps)]


def test_interleaved_variants_train_as_they_would_alone(config_dir):
    """One step of each variant in turn on shared frozen weights: every variant's losses are the ones it
    gets trained alone on its own copy (nothing leaks between variants), and every step is timed.
    LoRA/DoRA are left out of the loss check: their dropout draws from the global generator, whose
    draws interleaving reorders."""
    args = train_step.parse_args([*TINY, "--steps", "4", "--dls-interval", "2", "--config-dir", config_dir])
    variants = ("floor", "floor-copy", "lora", "roae", "dls-skip", "dls-freeze", "dls-freeze-top")
    timings = train_step.time_interleaved(args, variants, {"lora": 2})
    for variant in variants:
        steps = timings[variant]["steps"]
        assert len(steps) == 4 and all(step["ms"] > 0 and step["cpu_ms"] > 0 for step in steps), variant
        assert all(isinstance(step["page_faults"], int) and step["page_faults"] >= 0 for step in steps), variant
        if variant != "lora":
            expected = alone(args, variant, 5)[1:]  # the first step is the untimed warm-up
            assert [step["loss"] for step in steps] == pytest.approx(expected, rel=1e-6, abs=0), variant
    assert timings["floor"]["trainable"] == 0 and timings["floor"]["selections"] == []
    # the control does the floor's work exactly, on its own modules
    assert [step["loss"] for step in timings["floor-copy"]["steps"]] == [step["loss"] for step in timings["floor"]["steps"]]
    assert timings["floor-copy"]["trainable"] == 0
    rosa_count = 8 * (8 * 128 + 8 * 4 * 8 + 8 * 128 + 8 * 2 * 8)  # RoAE only, no norm weight
    assert timings["roae"]["trainable"] == rosa_count
    freeze = timings["dls-freeze"]
    # warm-up 1, interval 2: selections at steps 1 and 3; timed steps 1..4, scoring at 2 and 4
    assert [step["scoring"] for step in freeze["steps"]] == [False, True, False, True]
    assert len(freeze["selections"]) == 3 and all(len(s) == 4 for s in freeze["selections"])
    assert [step["lowest"] for step in freeze["steps"]] == [min(freeze["selections"][i]) for i in (1, 1, 2, 2)]
    assert [step["lowest"] for step in timings["dls-freeze-top"]["steps"]] == [4, 4, 4, 4]


@pytest.mark.parametrize("variant", ["floor", "dls-freeze"])
def test_memory_is_measured_alone_over_one_dls_cycle(config_dir, variant, monkeypatch):
    args = child_args(config_dir, variant)
    steps = []
    original = train_step.timed_step
    monkeypatch.setattr(train_step, "timed_step", lambda *a: steps.append(original(*a)) or steps[-1])
    result = train_step.measure_memory(args)
    assert result["peak_mib"] >= result["in_use_before_mib"] > 0 and result["variant"] == variant
    assert len(steps) == train_step.memory_steps(args) == 1 + 5 + 1
    if variant == "dls-freeze":  # the cycle holds a scoring step, whose backward is the full one
        assert [step["scoring"] for step in steps] == [True, False, False, False, False, True, False]


def test_a_variant_runs_in_its_own_process(config_dir):
    args = train_step.parse_args(TINY)
    args.config_dir = config_dir
    result = train_step.run_child(args, "floor", None)
    assert result["variant"] == "floor" and result["peak_mib"] > 0
    json.dumps(result)


def fake_result(variant: str, ms: list[float], scoring: list[bool] | None = None, peak: float = 100.0, selector_ms: float = 0.0):
    scoring = scoring or [False] * len(ms)
    return {"variant": variant, "trainable": 10, "peak_mib": peak, "in_use_before_mib": 40.0, "selections": [],
            "steps": [{"ms": m, "cpu_ms": m / 2, "page_faults": 7 * i, "scoring": s, "selector_ms": selector_ms,
                       "lowest": None} for i, (m, s) in enumerate(zip(ms, scoring))]}


def test_dls_step_is_the_steady_state_over_a_run():
    result = fake_result("dls-freeze", [10, 30, 10, 12, 31], [False, True, False, False, True], selector_ms=0.5)
    summary = train_step.summarise(result, run_interval=5)
    assert summary["non_scoring_ms"] == 10 and summary["scoring_ms"] == 30.5
    assert summary["step_ms"] == pytest.approx((4 * 10 + 30.5) / 5)
    assert summary["selector_ms"] == 0.5 and summary["train_mib"] == 60.0
    assert summary["page_faults"] == 14  # the median of 0, 7, 14, 21, 28
    assert train_step.summarise(result, run_interval=5, clock="cpu")["step_ms"] == pytest.approx((4 * 5 + 15.25) / 5)


def test_goals_compare_against_the_floor_and_lora():
    run_interval = 5
    results = {
        "floor": fake_result("floor", [100.0]),
        "lora": fake_result("lora", [120.0], peak=200.0),
        "dora": fake_result("dora", [150.0]),
        "roae": fake_result("roae", [104.0], peak=150.0),
        "dls-skip": fake_result("dls-skip", [110.0, 111.0], [False, True], selector_ms=0.2),
        "dls-freeze": fake_result("dls-freeze", [90.0, 130.0], [False, True], peak=201.0, selector_ms=0.2),
    }
    summaries = {variant: train_step.summarise(result, run_interval) for variant, result in results.items()}
    checks = {text: passed for text, passed, _ in train_step.goals(summaries, run_interval)}
    assert list(checks.values()) == [True, True, True, False, True]
    summaries["roae"] = train_step.summarise(fake_result("roae", [105.5], peak=150.0), run_interval)
    assert [passed for _, passed, _ in train_step.goals(summaries, run_interval)][0] is False  # over 1.05x the floor
    # freeze: (4 * 90 + 130) / 5 = 98 ms = 0.8167x LoRA; overhead (0.2 + 1 / 5) / 98 = 0.41%
    assert summaries["dls-freeze"]["step_ms"] == pytest.approx(98.0)
    assert train_step.dls_overhead(summaries, "dls-freeze", run_interval) == pytest.approx(0.4 / 98.0)


def test_break_even_layer_of_freeze_is_on_the_line_through_its_two_selections():
    summaries = {"lora": {"step_ms": 100.0},
                 "dls-freeze": {"step_ms": 90.0, "lowest": [0, 0, 1]},       # median lowest 0
                 "dls-freeze-top": {"step_ms": 66.0, "lowest": [12, 12, 12]}}
    # 24 ms saved over 12 layers = 2 ms a layer; 85 ms is reached 2.5 layers up: from layer 3 on
    assert train_step.freeze_break_even(summaries) == {"ms_per_layer": 2.0, "goal_from_layer": 3, "through": (0, 12)}
    summaries["lora"]["step_ms"] = 120.0  # 102 ms: freeze meets it at layer 0 already
    assert train_step.freeze_break_even(summaries)["goal_from_layer"] == 0
    summaries["dls-freeze-top"]["step_ms"] = 102.0  # the cut saved nothing: no line, no claim
    assert train_step.freeze_break_even(summaries) is None
    summaries["dls-freeze-top"]["step_ms"] = float("nan")  # no scoring step among the timed ones
    assert train_step.freeze_break_even(summaries) is None
    summaries["dls-freeze-top"]["step_ms"] = 66.0
    summaries["dls-freeze"]["lowest"] = [12]
    assert train_step.freeze_break_even(summaries) is None


def test_the_report_states_the_runs_noise_floor_from_the_floors_copy(capsys):
    results = {variant: fake_result(variant, [100.0]) for variant in train_step.VARIANTS}
    results["floor-copy"] = fake_result("floor-copy", [103.0])
    results.update({variant: fake_result(variant, [110.0, 130.0], [False, True]) for variant in train_step.DLS_MODES})
    summaries = {variant: train_step.summarise(result, run_interval=5) for variant, result in results.items()}
    summaries["dls-freeze"]["lowest"], summaries["dls-freeze-top"]["lowest"] = [0, 0], [4, 4]
    assert train_step.noise_floor(summaries) == pytest.approx(0.03)
    budget = {"rosa": 10, "lora": {"rank": 1, "trainable": 10}, "dora": {"rank": 1, "trainable": 10}}
    train_step.print_report(train_step.parse_args(TINY), budget, summaries, 2, train_step.goals(summaries, 5))
    printed = capsys.readouterr().out
    assert re.search(r"^floor-copy\s+10\s+103\.0\s+100\s+60\s+1\.030\s+1\.030$", printed, re.MULTILINE)
    assert "noise floor of this run: floor-copy reads 1.030x the floor; ratios within 0.030 of 1 are not resolved" in printed
