"""GGUF files as model inputs: SmolLM2-135M-Instruct (Q4_1) from ../shared, converted once per run."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import SMOLLM2_GGUF, require
from rosa import RoSAConfig, get_rosa_model
from rosa.cli import main
from rosa.loading import load_base_model, load_tokenizer


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache of this module's own, set for this process."""
    directory = tmp_path_factory.mktemp("rosa-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROSA_CACHE_DIR", str(directory))
        yield directory


@pytest.fixture(scope="module")
def smollm2(cache):
    return load_base_model(str(require(SMOLLM2_GGUF)), precision="fp32", device=torch.device("cpu")).eval()


def test_the_file_is_converted_once_and_its_directory_loads_the_same_model(smollm2, cache, monkeypatch):
    (entry,) = (cache / "gguf").iterdir()
    assert (entry / "gguf_source.json").is_file() and (entry / "model.safetensors").is_file()
    assert smollm2.config._name_or_path == str(SMOLLM2_GGUF.resolve())  # what an adapter records as its base
    conversions = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        conversions.append(kwargs.get("gguf_file"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    again = load_base_model(str(SMOLLM2_GGUF.parent), precision="fp32", device=torch.device("cpu"))
    assert conversions == [None]  # read from the cache, nothing dequantised again
    assert all(torch.equal(a, b) for a, b in zip(smollm2.state_dict().values(), again.state_dict().values()))
    tokenizer = load_tokenizer(str(SMOLLM2_GGUF))
    assert tokenizer("Hello world")["input_ids"] and tokenizer.pad_token is not None


def test_rosa_on_smollm2_is_the_base_model_at_initialisation(smollm2):
    tokens = torch.randint(0, smollm2.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = smollm2(tokens).logits
    model = get_rosa_model(smollm2, RoSAConfig(targets=("q", "k")))
    try:
        assert model.geometry.rotary[0].rotary.query_heads == 9 and model.geometry.rotary[0].rotary.key_heads == 3
        with torch.no_grad():
            assert torch.equal(model(tokens).logits, expected)
    finally:
        model.unload()


def test_rosa_info_reads_the_file_metadata_without_converting(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "cache"
    monkeypatch.setenv("ROSA_CACHE_DIR", str(empty))
    assert main(["info", str(require(SMOLLM2_GGUF))]) == 0
    assert not empty.exists()  # nothing was dequantised or cached
    lines = capsys.readouterr().out.splitlines()
    assert "model type          llama  (30 layers, hidden 576)" in lines
    assert "  heads             9 query / 3 key (as RoPE hands them to attention)" in lines


def test_the_metadata_is_parsed_once_per_process_and_each_caller_gets_its_own_config(monkeypatch):
    """rosa info and --match-params build the model on the meta device five times; the file is parsed once."""
    from transformers import AutoConfig

    from rosa.gguf import _gguf_config, gguf_config, gguf_source

    _gguf_config.cache_clear()
    parses = []
    original = AutoConfig.from_pretrained.__func__
    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(lambda cls, *a, **k: parses.append(k) or original(cls, *a, **k)))
    source = gguf_source(str(require(SMOLLM2_GGUF)))
    first, second = gguf_config(source), gguf_config(source)
    assert len(parses) == 1 and parses[0]["gguf_file"] == SMOLLM2_GGUF.name
    assert first is not second and first.to_dict() == second.to_dict()
    first.num_hidden_layers = 1  # a caller changing its config changes nobody else's
    assert gguf_config(source).num_hidden_layers == 30 and len(parses) == 1


def test_an_adapter_records_the_gguf_file_it_was_trained_on_and_refuses_another(smollm2, tmp_path):
    import json

    from peft import PeftModel

    from rosa import AdapterLoadError
    from rosa.roae.attention import RoSALayer

    model = get_rosa_model(smollm2, RoSAConfig())
    try:
        model.save_pretrained(str(tmp_path))
    finally:
        model.unload()
    header = json.loads((tmp_path / "adapter_config.json").read_text())
    digest = header["base_geometry"]["gguf_sha256"]
    assert header["peft_type"] == "ROSA"
    assert len(digest) == 64 and header["base_model_name_or_path"] == str(SMOLLM2_GGUF.resolve())
    PeftModel.from_pretrained(smollm2, str(tmp_path)).unload()  # its own base: accepted
    header["base_geometry"]["gguf_sha256"] = "0" * 64
    (tmp_path / "adapter_config.json").write_text(json.dumps(header))
    with pytest.raises(AdapterLoadError, match=f"made for another base model \\(gguf_sha256: adapter '0{{64}}' vs base '{digest}'"):
        PeftModel.from_pretrained(smollm2, str(tmp_path))
    assert not any(isinstance(module, RoSALayer) for module in smollm2.modules())  # refused before any was attached


def test_a_lora_run_on_a_gguf_base_records_the_file_and_its_adapter_refuses_another_base(cache, tmp_path):
    """PEFT configs have no field for the file's hash: `rosa train` writes base_model.json beside the
    adapter, and rosa's loader (`rosa eval`, `load_adapter`) checks it before PEFT loads anything."""
    import json

    from conftest import DATA, STORIES
    from rosa import AdapterLoadError
    from rosa.loading import load_adapter

    run = tmp_path / "run"
    assert main(["train", "--model", str(require(SMOLLM2_GGUF)), "--method", "lora", "--data", "boolq",
                 "--data-dir", str(require(DATA)), "--output-dir", str(run), "--max-steps", "1", "--max-samples", "4",
                 "--batch-size", "4", "--precision", "fp32", "--report-to", "none"]) == 0
    record = json.loads((run / "adapter" / "base_model.json").read_text())
    digest = (cache / "gguf").iterdir().__next__().name
    assert record == {"gguf_file": SMOLLM2_GGUF.name, "gguf_sha256": digest}

    base = load_base_model(str(SMOLLM2_GGUF), precision="fp32", device=torch.device("cpu"))
    load_adapter(base, run / "adapter").unload()  # its own base: accepted
    stories = load_base_model(str(require(STORIES)), precision="fp32", device=torch.device("cpu"))
    with pytest.raises(AdapterLoadError, match=f"trained on {SMOLLM2_GGUF.name} \\(GGUF SHA-256 {digest}\\), but is being "
                       "loaded onto a base not loaded from a GGUF file"):
        load_adapter(stories, run / "adapter")
    base.config.gguf_sha256 = "0" * 64
    with pytest.raises(AdapterLoadError, match="loaded onto a base from GGUF SHA-256 0{64}"):
        load_adapter(base, run / "adapter")
