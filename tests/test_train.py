"""``rosa train``: every method end to end, run directories, configs, and parameter-budget matching."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from conftest import DATA, STORIES, require
from rosa.cli import main as rosa_main
from rosa.errors import RoSAConfigError
from rosa.loading import load_adapter, load_base_model, load_tokenizer
from rosa.train.config import ExperimentConfig, load_config, parse_assignment
from rosa.train.methods import apply_method, match_rank, meta_model, trainable_parameters, with_rank
from rosa.train.recipe import train

TINY = {
    "precision": "fp32",  # the reproduction tolerances are fp32's; `auto` is bf16 on CPUs with native bf16
    "training.max_steps": 3,
    "training.max_samples": 24,
    "training.batch_size": 4,
    "training.micro_batch_size": 2,
    "training.cutoff_len": 96,
    "training.warmup_steps": 1,
    "training.logging_steps": 1,
    "training.save_steps": 2,
    "dls.warmup": 1,
    "dls.interval": 1,
}


def config_for(tmp_path, method, **extra):
    overrides = {"model": str(require(STORIES)), "data": "commonsense_mix", "data_dir": str(require(DATA)),
                 "output_dir": str(tmp_path / method), "method": method, **TINY, **extra}
    return load_config(None, overrides)


def logits(model, tokenizer):
    batch = tokenizer(["Please answer the following question with true or false"], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("method", ["rosa", "roae", "lora", "dora", "pissa", "lora-dls"])
def test_every_method_trains_and_its_saved_adapter_reproduces_the_trained_model(tmp_path, method):
    config = config_for(tmp_path, method, **({"lora.r": 4, "lora.alpha": 8} if method not in ("rosa", "roae") else {}))
    summary = train(config, log=lambda _: None)
    run = tmp_path / method
    assert summary["steps"] == 3 and summary["method"] == method and summary["examples"] == 24
    assert json.loads((run / "run.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["trainable_params"] == trainable_parameters(config)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2, 3]
    assert list((run / "tensorboard").iterdir()), "TensorBoard events are written"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == method and saved["training"]["lr"] == config.learning_rate
    assert (run / "dls_history.json").is_file() == (method in ("rosa", "lora-dls"))
    if method in ("rosa", "lora-dls"):
        history = json.loads((run / "dls_history.json").read_text())["history"]
        # warmup 1, interval 1: every backward scores, and each selection applies from the next step
        assert [r["step"] for r in history] == [1, 2, 3]

    # The final adapter, loaded onto a fresh (unmodified) base, gives the trained model's outputs;
    # for PiSSA this goes through the conversion to a plain LoRA.
    tokenizer = load_tokenizer(str(STORIES))
    base = load_base_model(str(STORIES), precision="fp32")
    untrained = logits(base, tokenizer)
    reloaded = load_adapter(base, run / "adapter")
    trained_again = logits(reloaded, tokenizer)
    assert not torch.allclose(trained_again, untrained, atol=1e-5), "three steps must change the model"
    # PiSSA's conversion re-expresses W_res + B'A' as W + (a rank-2r LoRA): equal up to float rounding.
    atol = 1e-4 if method == "pissa" else 1e-6
    torch.testing.assert_close(trained_again, logits(trained_model(config, run / "checkpoint-3"), tokenizer), rtol=0, atol=atol)
    if method == "pissa":
        unconverted = load_adapter(load_base_model(str(STORIES), precision="fp32"), run / "checkpoint-3")
        assert (logits(unconverted, tokenizer) - trained_again).abs().max() > 100 * atol, "the conversion matters"


def trained_model(config, checkpoint):
    """The model as training left it: the method applied to a fresh base, then the checkpoint's weights.
    For PiSSA this is the residual base plus the unconverted adapter, so the comparison above checks
    the conversion to a plain LoRA."""
    model = apply_method(load_base_model(str(STORIES), precision="fp32"), config)
    if config.method in ("rosa", "roae"):
        return load_adapter(model.unload(), checkpoint)
    set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
    return model.eval()


def test_rosa_checkpoints_hold_the_adapter_not_the_base_model(tmp_path):
    train(config_for(tmp_path, "rosa"), log=lambda _: None)
    checkpoint = tmp_path / "rosa" / "checkpoint-2"
    assert not (checkpoint / "model.safetensors").exists()
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < 64 * 1024


def test_an_existing_run_directory_is_refused_unchanged_and_replaced_only_with_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    args = ["train", "--model", str(STORIES), "--data", "math_mix", "--data-dir", str(DATA), "--output-dir", str(run),
            "--method", "roae", *[f"--set={k}={v}" for k, v in TINY.items()]]
    assert rosa_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == ["precious.txt"]
    assert rosa_main([*args, "--overwrite"]) == 0
    assert not (run / "precious.txt").exists() and (run / "run.json").is_file()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--method", "adapterh"], "invalid choice"),
        (["--set", "method=adapterh"], "unknown method 'adapterh'"),
        (["--set", "rosa.r_low=0"], "r_low must be in (0, 1]"),
        (["--set", "dls.k_ratio=1.5"], "k_ratio must be in (0, 1]"),
        (["--set", "training.batch_size=6"], "multiple of micro_batch_size"),
        (["--set", "training.colour=blue"], "unknown config field(s) ['training.colour']"),
        (["--data", "commonsense_15k"], "commonsense_mix"),
        (["--method", "lora", "--set", "lora.targets=[c_attn]"], "not linear layers of this model"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message_and_creates_nothing(tmp_path, capsys, bad, message):
    run = tmp_path / "never"
    args = ["train", "--model", str(STORIES), "--data", "math_mix", "--data-dir", str(DATA), "--output-dir", str(run),
            "--set", "training.micro_batch_size=4", *bad]
    assert exit_code(args) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def exit_code(args) -> int:
    """The CLI's exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return rosa_main(args)
    except SystemExit as exit:
        return exit.code


def test_yaml_config_with_overrides_is_resolved_and_saved(tmp_path):
    file = tmp_path / "exp.yaml"
    file.write_text(yaml.safe_dump({"model": "m", "data": "math_mix", "output_dir": "o", "method": "lora",
                                    "training": {"lr": "1e-4", "epochs": 2}, "lora": {"r": 8}}))
    config = load_config(file, dict([parse_assignment("training.epochs=1"), parse_assignment("lora.targets=[q_proj]")]))
    assert config.training.lr == 1e-4 and config.training.epochs == 1 and config.lora.r == 8
    assert config.lora.targets == ("q_proj",) and config.lora.alpha == 64.0
    assert config.dls.seed == config.seed == 42, "one seed drives the run unless DLS's is set"
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert load_config(None, {"model": "m", "data": "d", "output_dir": "o"}).learning_rate == 1e-3  # the paper's RoSA lr
    with pytest.raises(RoSAConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml", {})


def test_match_params_picks_the_rank_whose_count_is_closest(tmp_path):
    reference = trainable_parameters(config_for(tmp_path, "rosa", **{"rosa.rank": 16, "rosa.targets": ["q", "k"]}))
    for method in ("lora", "dora"):
        config = config_for(tmp_path, method, **{"lora.targets": ["q_proj", "v_proj"]})
        matched, rank, count = match_rank(config, reference)
        brute = {r: trainable_parameters(with_rank(config, r)) for r in range(1, 12)}
        best = min(brute, key=lambda r: (abs(brute[r] - reference), r))
        assert (matched.lora.r, rank, count) == (best, best, brute[best])
        assert matched.lora.alpha == 2 * best, "alpha keeps LLM-Adapters' alpha/r ratio"


def test_match_params_on_the_command_line_prints_both_counts_and_records_them(tmp_path, capsys):
    run = tmp_path / "lora"
    args = ["train", "--model", str(STORIES), "--data", "math_mix", "--data-dir", str(DATA), "--output-dir", str(run),
            "--method", "lora", "--match-params", "rosa", *[f"--set={k}={v}" for k, v in TINY.items()]]
    assert rosa_main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "run.json").read_text())
    budget = summary["budget"]
    assert f"method rosa has {budget['reference_params']:,d} trainable parameters; lora at rank {budget['rank']} has {budget['params']:,d}" in out
    assert summary["trainable_params"] == budget["params"] and yaml.safe_load((run / "config.yaml").read_text())["lora"]["r"] == budget["rank"]


def test_meta_counts_equal_the_real_models_counts(tmp_path):
    for method in ("rosa", "lora", "dora", "pissa"):
        config = config_for(tmp_path, method)
        real = apply_method(load_base_model(str(STORIES), precision="fp32"), config)
        assert trainable_parameters(config) == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert all(p.device.type == "meta" for p in meta_model(str(STORIES)).parameters())


def test_gradient_checkpointing_gives_the_same_adapter(tmp_path):
    plain = config_for(tmp_path / "plain", "roae")
    checkpointed = config_for(tmp_path / "ckpt", "roae", **{"training.gradient_checkpointing": True})
    train(plain, log=lambda _: None)
    train(checkpointed, log=lambda _: None)
    a = load_file(tmp_path / "plain" / "roae" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ckpt" / "roae" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_peak_memory_is_measured_per_run_even_when_runs_share_a_process(tmp_path):
    """A sweep trains its points in one process: an earlier, larger peak must not leak into a run.
    The bound is relative to what the process already holds (the suite loads other models first)."""
    resident = resident_bytes()
    ballast = bytearray(1536 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page so it is resident
    del ballast
    summary = train(config_for(tmp_path, "roae"), log=lambda _: None)
    assert summary["peak_memory_kind"] == "process peak RSS while training"
    assert 0 < summary["peak_memory_bytes"] < resident + 1536 * 2**20


def resident_bytes() -> int:
    """The process's resident memory now (Linux VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
