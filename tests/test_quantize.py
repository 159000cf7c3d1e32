"""A quantised frozen base (`--quantize`): what trains on a CPU, with real gradients, and what is refused."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import DATA, STORIES, randomize_adapters, require
from rosa.cli import main as rosa_main
from rosa.errors import RoSAConfigError
from rosa.loading import load_base_model
from rosa.quantize import quantization_config
from rosa.train.config import ExperimentConfig
from rosa.train.methods import apply_method

CPU = torch.device("cpu")
TRAIN = ["train", "--data", "commonsense_mix", "--max-steps", "2", "--max-samples", "8", "--batch-size", "4",
         "--precision", "fp32", "--report-to", "none", "--set", "training.cutoff_len=512"]


def adapted(method: str, quantize: str | None):
    config = ExperimentConfig(model=str(require(STORIES)), data="boolq", output_dir="unused", method=method, quantize=quantize)
    config.rosa.targets, config.lora.r, config.lora.dropout = ("q", "k"), 2, 0.0  # no dropout: comparable gradients
    base = load_base_model(config.model, precision="fp32", device=CPU, quantize=quantize)
    torch.manual_seed(0)  # PEFT draws LoRA's A from the global generator: the same A on both bases
    model = apply_method(base, config)
    for name, parameter in model.named_parameters():  # LoRA's B and RoAE's B start at zero: A would get no gradient
        if parameter.requires_grad and ("lora_B" in name or name.endswith("_B")):
            torch.nn.init.normal_(parameter, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def gradients_after_an_evaluation_forward(model) -> tuple[float, dict[str, torch.Tensor]]:
    tokens = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():  # bitsandbytes' CPU 4-bit path loses its backward after such a forward
        model(input_ids=tokens)
    model.train()
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    return loss.item(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("method", ["rosa", "lora", "dora"])
def test_every_adapter_weight_gets_a_gradient_on_a_quantised_base_after_an_evaluation_forward(method, quantize):
    from optimum.quanto import QLinear

    model = adapted(method, quantize)
    assert sum(isinstance(m, QLinear) for m in model.modules()) == 5 * 7  # every projection of the 5 layers
    loss, gradients = gradients_after_an_evaluation_forward(model)
    reference_loss, reference = gradients_after_an_evaluation_forward(adapted(method, None))
    assert gradients.keys() == reference.keys() and len(gradients) > 0
    cosines = []
    for name, grad in gradients.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        cosines.append(torch.nn.functional.cosine_similarity(grad.flatten(), reference[name].flatten(), dim=0).item())
    if quantize == "int8":  # the same training signal as unquantised (int4 on 64-wide toy weights is too coarse to say)
        assert min(cosines) > 0.7 and sum(cosines) / len(cosines) > 0.9, cosines
    assert loss == pytest.approx(reference_loss, rel={"int8": 0.01, "int4": 0.1}[quantize])
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # the adapter stays fp32


def test_a_quantised_run_trains_records_it_and_is_evaluated_on_the_same_quantised_base(tmp_path):
    run = tmp_path / "run"
    assert rosa_main([*TRAIN, "--model", str(require(STORIES)), "--data-dir", str(require(DATA)), "--output-dir", str(run),
                      "--quantize", "int8", "--lr", "0.05"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["quantize"] == "int8"
    eval_args = ["--tasks", "boolq", "--limit", "2", "--decoding", "greedy", "--no-progress"]
    assert rosa_main(["eval", str(run), *eval_args]) == 0
    assert json.loads((run / "eval" / "greedy" / "eval_config.json").read_text())["identity"]["quantize"] == "int8"
    # --quantize none evaluates the same adapter on the full-precision base, as another evaluation
    assert rosa_main(["eval", str(run), *eval_args, "--quantize", "none", "--output", str(tmp_path / "full")]) == 0
    assert "quantize" not in json.loads((tmp_path / "full" / "eval_config.json").read_text())["identity"]


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "nf4"], "quantize nf4 needs a CUDA GPU: bitsandbytes' 4-bit CPU kernels have no backward after a "
                            "forward without gradients, so the adapter would silently stop learning. On a CPU use "
                            "--quantize int8 or int4 (optimum-quanto)."),
    (["--quantize", "int8", "--method", "pissa"], "method pissa cannot train on a quantised base (quantize int8): PiSSA "
                                                  "rewrites the base weights with their SVD residual."),
])
def test_combinations_that_cannot_train_correctly_are_refused_before_anything_is_written(extra, message, tmp_path, capsys):
    run = tmp_path / "run"
    assert rosa_main([*TRAIN, "--model", str(require(STORIES)), "--data-dir", str(require(DATA)), "--output-dir", str(run),
                      *extra]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_a_missing_quantisation_library_is_named_with_its_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.split(".")[0] in ("bitsandbytes", "optimum") else real(name, *a))
    with pytest.raises(RoSAConfigError, match="quantize int8 here needs bitsandbytes, which is not installed: pip install bitsandbytes"):
        quantization_config("int8", torch.device("cuda"), torch.bfloat16)  # the library is checked before any GPU is touched
    with pytest.raises(RoSAConfigError, match="quantize int4 here needs optimum-quanto, which is not installed: pip install optimum-quanto"):
        quantization_config("int4", CPU, torch.float32)
    assert quantization_config(None, CPU, torch.float32) is None


def test_an_unknown_quantisation_is_refused_where_the_config_is_read():
    with pytest.raises(RoSAConfigError, match=r"quantize must be one of int8, int4, nf4 \(or left out\), got 'int3'\."):
        ExperimentConfig(model="m", data="d", output_dir="o", quantize="int3")
    with pytest.raises(RoSAConfigError, match="got 'int3'"):
        load_base_model(str(require(STORIES)), precision="fp32", device=CPU, quantize="int3")


def test_a_quantised_load_on_a_cpu_hands_the_freed_full_precision_memory_back(real_smollm2):
    """Quantising on load reads and frees every full-precision weight; glibc would keep that memory for the
    process (measured on SmolLM2 int8: resident about 1,680 MiB after loading untrimmed, 506-936 MiB trimmed)."""
    import subprocess
    import sys

    from processes import ENV

    code = ("import torch; from rosa.loading import load_base_model; "
            f"load_base_model({str(real_smollm2.file)!r}, precision='fp32', device=torch.device('cpu'), quantize='int8'); "
            "print(*[line.split()[1] for line in open('/proc/self/status') if line.startswith(('VmHWM', 'VmRSS'))])")
    done = subprocess.run([sys.executable, "-c", code], env={**ENV, "ROSA_CACHE_DIR": str(real_smollm2.cache)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak, resident = (int(kib) / 1024 for kib in done.stdout.split()[-2:])
    assert resident < 0.75 * peak, f"resident {resident:.0f} MiB of a {peak:.0f} MiB peak after loading"
