"""benchmarks/train_step.py: variants, the parameter-budget match, the step accounting and the goals."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import REPO

spec = importlib.util.spec_from_file_location("train_step", REPO / "benchmarks" / "train_step.py")
train_step = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_step)

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
    for name in ("model", "steps", "warmup_steps", "batch_size", "seq_len", "k_ratio", "dls_interval",
                 "gradient_checkpointing", "compile", "targets", "seed", "dtype", "device"):
        assert getattr(child, name) == getattr(args, name), name


def test_floor_backward_reaches_the_input_embeddings(config_dir):
    args = child_args(config_dir, "floor")
    model = train_step.build_variant(args, train_step.build_base(args, torch.device("cpu"))).train()
    assert not any(p.requires_grad for p in model.parameters())
    captured = []
    model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: captured.append(output))
    train_step.loss_of(args, model, model, torch.randint(1024, (1, 8))).backward()
    assert captured[0].grad is not None and captured[0].grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["floor", "dls-freeze", "dls-freeze-top"])
def test_run_variant_times_every_step_and_keeps_norms_out_of_the_optimizer(config_dir, variant):
    result = train_step.run_variant(child_args(config_dir, variant, "--dls-interval", "1"))
    steps = result["steps"]
    assert len(steps) == 2 and all(step["ms"] > 0 and step["cpu_ms"] > 0 for step in steps)
    assert result["peak_mib"] >= result["in_use_before_mib"] > 0
    if variant == "floor":
        assert result["trainable"] == 0 and result["selections"] == []
        return
    assert result["trainable"] == 8 * (8 * 128 + 8 * 4 * 8 + 8 * 128 + 8 * 2 * 8)  # RoAE only, no norm weight
    assert [step["scoring"] for step in steps] == [True, True]  # interval 1: every step scores
    assert len(result["selections"]) == 3 and all(len(s) == 4 for s in result["selections"])
    if variant == "dls-freeze-top":
        assert [step["lowest"] for step in steps] == [4, 4]  # the top 4 of 8 layers, whatever DLS chose
    else:
        assert [step["lowest"] for step in steps] == [min(s) for s in result["selections"][:2]]


def test_a_variant_runs_in_its_own_process(config_dir):
    args = train_step.parse_args(TINY)
    args.config_dir = config_dir
    result = train_step.run_child(args, "floor", None)
    assert result["variant"] == "floor" and len(result["steps"]) == 2
    json.dumps(result)


def fake_result(variant: str, ms: list[float], scoring: list[bool] | None = None, peak: float = 100.0, selector_ms: float = 0.0):
    scoring = scoring or [False] * len(ms)
    return {"variant": variant, "trainable": 10, "peak_mib": peak, "in_use_before_mib": 40.0, "selections": [],
            "steps": [{"ms": m, "cpu_ms": m / 2, "scoring": s, "selector_ms": selector_ms, "lowest": None}
                      for m, s in zip(ms, scoring)]}


def test_dls_step_is_the_steady_state_over_a_run():
    result = fake_result("dls-freeze", [10, 30, 10, 12, 31], [False, True, False, False, True], selector_ms=0.5)
    summary = train_step.summarise(result, run_interval=5)
    assert summary["non_scoring_ms"] == 10 and summary["scoring_ms"] == 30.5
    assert summary["step_ms"] == pytest.approx((4 * 10 + 30.5) / 5)
    assert summary["selector_ms"] == 0.5 and summary["train_mib"] == 60.0
    assert train_step.summarise(result, run_interval=5, clock="cpu")["step_ms"] == pytest.approx((4 * 5 + 15.25) / 5)


def test_goals_compare_against_the_floor_and_lora():
    run_interval = 5
    results = {
        "floor": fake_result("floor", [100.0]),
        "lora": fake_result("lora", [120.0], peak=200.0),
        "dora": fake_result("dora", [150.0]),
        "roae": fake_result("roae", [109.0], peak=150.0),
        "dls-skip": fake_result("dls-skip", [110.0, 111.0], [False, True], selector_ms=0.2),
        "dls-freeze": fake_result("dls-freeze", [90.0, 130.0], [False, True], peak=201.0, selector_ms=0.2),
    }
    summaries = {variant: train_step.summarise(result, run_interval) for variant, result in results.items()}
    checks = {text: passed for text, passed, _ in train_step.goals(summaries, run_interval)}
    assert list(checks.values()) == [True, True, True, False, True]
    # freeze: (4 * 90 + 130) / 5 = 98 ms = 0.8167x LoRA; overhead (0.2 + 1 / 5) / 98 = 0.41%
    assert summaries["dls-freeze"]["step_ms"] == pytest.approx(98.0)
    assert train_step.dls_overhead(summaries, "dls-freeze", run_interval) == pytest.approx(0.4 / 98.0)
