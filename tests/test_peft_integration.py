"""RoSA is a PEFT method: PEFT's own entry points, loaders, adapter management and files work with it."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, PeftModelForCausalLM, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import rosa
from conftest import STORIES, randomize_adapters, require, tiny_model
from rosa import AdapterLoadError, DLSConfig, DynamicLayerSelector, RoSAConfig, RoSAModel, get_rosa_model
from rosa.model_card import CITATION, trainable_parameters
from rosa.roae.attention import RoSALayer


def stories():
    return AutoModelForCausalLM.from_pretrained(str(require(STORIES))).eval()


@pytest.fixture
def ids():
    return torch.randint(3, 500, (2, 10), generator=torch.Generator().manual_seed(3))


def roae_parameter_count(model) -> int:
    return sum(p.numel() for adapter in model.roae_adapters().values() for p in adapter.parameters())


def test_get_peft_model_is_get_rosa_model_and_the_base_at_initialisation(ids):
    base = stories()
    with torch.no_grad():
        expected = base(ids).logits
    model = get_peft_model(base, RoSAConfig(targets=("q", "k"), init_seed=0))
    assert isinstance(model, PeftModelForCausalLM) and isinstance(model.base_model, RoSAModel)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
    alias = get_rosa_model(stories(), RoSAConfig(targets=("q", "k"), init_seed=0))
    assert type(alias) is type(model)
    for name, tensor in peft.get_peft_model_state_dict(model).items():
        assert torch.equal(tensor, peft.get_peft_model_state_dict(alias)[name]), name


def test_counts_disable_unload_and_merge_refusal_behave_as_for_lora(ids, capsys):
    base = stories()
    with torch.no_grad():
        expected = base(ids).logits
    model = get_rosa_model(base, RoSAConfig(targets=("q", "k"), rank=4))
    randomize_adapters(model)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == roae_parameter_count(model) == trainable_parameters(model.peft_config["default"])
    assert total == sum(p.numel() for p in model.parameters())
    model.print_trainable_parameters()
    assert capsys.readouterr().out.startswith(f"trainable params: {trainable:,d} || all params: {total:,d}")
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            assert torch.equal(model(ids).logits, expected)
        assert torch.equal(model(ids).logits, adapted) and not torch.equal(adapted, expected)
    with pytest.raises(NotImplementedError, match="depends on each token's hidden state"):
        model.merge_and_unload()
    unloaded = model.unload()
    assert unloaded is base and not any(isinstance(m, RoSALayer) for m in base.modules())
    assert not any("_rosa_shield" in vars(m) for m in base.modules())
    with torch.no_grad():
        assert torch.equal(base(ids).logits, expected)


def test_peft_loaders_reproduce_the_saved_adapter(tmp_path, ids):
    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k"), rank=4))
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ROSA" and saved["task_type"] == "CAUSAL_LM"
    assert saved["base_model_name_or_path"] == str(STORIES)
    assert all(key.rsplit(".", 2)[1:] in (["rosa_roae", p] for p in ("q_A", "q_B", "k_A", "k_B", "low_frequencies"))
               for key in load_file(tmp_path / "adapter_model.safetensors"))

    loaded = PeftModel.from_pretrained(stories(), tmp_path)
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path)  # the base comes from base_model_name_or_path
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
        assert torch.equal(auto(ids).logits, expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode, as PEFT loads LoRA
    trainable = PeftModel.from_pretrained(stories(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == roae_parameter_count(model)

    plain = stories()  # transformers' own adapter API on a plain model
    plain.load_adapter(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, expected)


def test_adapters_are_added_switched_deleted_and_loaded_under_any_name(tmp_path, ids):
    first = get_rosa_model(stories(), RoSAConfig(targets=("q", "k"), init_seed=0))
    randomize_adapters(first, seed=1)
    first.save_pretrained(tmp_path)
    with torch.no_grad():
        first_logits = first(ids).logits

    model = get_rosa_model(stories(), RoSAConfig(targets=("q",), layers=(1, 3), init_seed=5))
    randomize_adapters(model, seed=2)
    with torch.no_grad():
        own = model(ids).logits
    model.load_adapter(str(tmp_path), adapter_name="other")
    assert model.active_adapter == "default"
    model.set_adapter("other")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, first_logits)  # the weights really arrived under the new name
    for name, tensor in load_file(tmp_path / "adapter_model.safetensors").items():
        key = name.replace(".rosa_roae.", ".rosa_roae.other.").replace("base_model.model.", "", 1)
        assert torch.equal(model.base_model.model.state_dict()[key], tensor)
    assert sorted(model.roae_adapters("other")) == [0, 1, 2, 3, 4] and sorted(model.roae_adapters("default")) == [1, 3]

    with pytest.raises(ValueError, match="one adapter at a time"):
        model.base_model.set_adapter(["default", "other"])
    model.add_adapter("fresh", RoSAConfig(targets=("k",), init_seed=9))
    model.set_adapter("fresh")
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, own)  # B = 0: the base model, not "default"
    model.set_adapter("default")
    model.delete_adapter("other")
    model.delete_adapter("fresh")
    assert list(model.peft_config) == ["default"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, own)
    with pytest.raises(ValueError, match="different peft types|Cannot combine"):
        model.add_adapter("lora", peft.LoraConfig(target_modules=["q_proj"]))


def test_loading_onto_another_base_is_refused_before_anything_is_attached(tmp_path):
    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    model.save_pretrained(tmp_path)
    other_sizes = tiny_model("llama")
    with pytest.raises(AdapterLoadError, match=r"another base model \(hidden_size: adapter 64 vs base 64|another base model"):
        PeftModel.from_pretrained(other_sizes, tmp_path)
    assert not any(isinstance(m, RoSALayer) for m in other_sizes.modules())
    # Same model type and sizes, other rotary frequencies: only the recorded geometry tells them apart.
    base = stories()
    base.config.rope_parameters["rope_theta"] = 500.0
    base.model.rotary_emb = type(base.model.rotary_emb)(base.config)
    with pytest.raises(AdapterLoadError, match="frequencies"):
        PeftModel.from_pretrained(base, tmp_path)


def test_save_pretrained_takes_peft_arguments(tmp_path):
    model = get_rosa_model(stories(), RoSAConfig(init_seed=0))
    model.add_adapter("second", RoSAConfig(targets=("k",), init_seed=1))
    model.save_pretrained(tmp_path / "nothing", is_main_process=False)
    assert not (tmp_path / "nothing" / "adapter_model.safetensors").exists()
    model.save_pretrained(tmp_path / "some", selected_adapters=["second"], safe_serialization=True)
    assert sorted(p.name for p in (tmp_path / "some" / "second").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    model.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    from rosa.loading import load_adapter

    with pytest.raises(AdapterLoadError, match="only from safetensors"):
        load_adapter(stories(), tmp_path / "pickle")


def test_the_model_card_names_base_settings_budget_dls_and_citation(tmp_path):
    model = get_rosa_model(stories(), RoSAConfig(rank=4, targets=("q", "k")))
    DynamicLayerSelector(model, DLSConfig(k_ratio=0.4, warmup=3, interval=7)).remove()
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # saving again replaces the RoSA section, never duplicates it
    card = (tmp_path / "README.md").read_text()
    trainable = model.get_nb_trainable_parameters()[0]
    assert card.count("## RoSA adapter") == 1 and card.count("@inproceedings{pan2026rosa") == 1
    assert f"trainable parameters: {trainable:,d}" in card
    assert f"`{STORIES}`" in card and "| `rank` | `4` |" in card and "| `targets` | `['q', 'k']` |" in card
    assert "| `k_ratio` | `0.4` |" in card and "| `interval` | `7` |" in card
    assert CITATION in card and "library_name: peft" in card and "- rosa" in card
    assert json.loads((tmp_path / "adapter_config.json").read_text())["dls"]["k_ratio"] == 0.4


def test_unsupported_peft_is_refused_with_the_versions(monkeypatch):
    monkeypatch.setattr(peft, "__version__", "0.15.2")
    rosa.registration.register(RoSAConfig, RoSAModel)  # registers nothing, raises nothing
    with pytest.raises(rosa.UnsupportedPeftError, match=r"RoSA needs peft >= .*peft 0\.15\.2 is installed.*pip install"):
        RoSAConfig()


def test_registration_is_idempotent_and_extends_peft_type_once():
    before = list(peft.PeftType)
    rosa.registration.register(RoSAConfig, RoSAModel)
    assert list(peft.PeftType) == before and before.count(peft.PeftType.ROSA) == 1
    assert peft.PeftType("ROSA") is peft.PeftType.ROSA and peft.PeftType.ROSA == "ROSA"
    assert peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING["ROSA"] is RoSAConfig


def hub_cache(root, repo_id: str, adapter_dir) -> str:
    """A Hugging Face cache holding ``repo_id`` at one commit, laid out as huggingface_hub lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (snapshot / name).write_bytes((adapter_dir / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return str(root)


def test_a_hub_id_loads_from_the_local_cache_offline(tmp_path, ids, monkeypatch):
    import huggingface_hub.constants

    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        expected = model(ids).logits
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hub_cache(tmp_path / "hub", "acme/rosa-stories", tmp_path / "saved"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from rosa.loading import load_adapter

    for loaded in (PeftModel.from_pretrained(stories(), "acme/rosa-stories"), load_adapter(stories(), "acme/rosa-stories")):
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, expected)
    with pytest.raises(AdapterLoadError, match="could not get adapter 'acme/missing'"):
        load_adapter(stories(), "acme/missing")


def test_push_to_hub_uploads_the_adapter_files_only(tmp_path, monkeypatch):
    import transformers.utils.hub as hub
    from huggingface_hub import ModelCard, ModelCardData

    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            uploaded.update({op.path_in_repo: Path(op.path_or_fileobj).stat().st_size for op in operations})

    monkeypatch.setattr(hub, "hf_api", FakeApi)
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **k: ModelCard.from_template(ModelCardData()))
    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    model.push_to_hub("acme/rosa-stories")
    assert set(uploaded) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert uploaded["adapter_model.safetensors"] < 4 * model.get_nb_trainable_parameters()[0] + 10_000  # no base weights


def write_legacy_adapter(model, directory) -> None:
    """The files rosa 0.1 wrote: its own JSON header and tensors keyed by layer index."""
    from safetensors.torch import save_file

    config = model.peft_config["default"]
    directory.mkdir()
    tensors = {f"layers.{i}.{name.replace('_', '.')}.weight": p.detach().clone()
               for i, adapter in model.roae_adapters().items() for name, p in adapter.named_parameters()}
    assert len(tensors) == 5 * 4
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "rosa-roae"})
    # rosa 0.1 recorded the rotary groups without their frequencies
    geometry = {**config.base_geometry, "rotary": [{k: v for k, v in group.items() if k != "frequencies"}
                                                   for group in config.base_geometry["rotary"]]}
    header = {"format": "rosa-roae", "format_version": 2, "rosa_version": "0.1.0", "config": config.settings(),
              "base_model": {**geometry, "name_or_path": str(STORIES)}, "adapted_layers": sorted(tensors)}
    (directory / "adapter_config.json").write_text(json.dumps(header))


def test_adapters_saved_by_rosa_0_1_still_load_and_convert(tmp_path, ids):
    from rosa.loading import load_adapter

    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(ids).logits
    write_legacy_adapter(model, tmp_path / "old")
    loaded = load_adapter(stories(), tmp_path / "old")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    loaded.save_pretrained(tmp_path / "new")  # the conversion the docs give
    with torch.no_grad():
        assert torch.equal(PeftModel.from_pretrained(stories(), tmp_path / "new")(ids).logits, expected)
    header = json.loads((tmp_path / "old" / "adapter_config.json").read_text())
    (tmp_path / "old" / "adapter_config.json").write_text(json.dumps({**header, "format_version": 1}))
    with pytest.raises(AdapterLoadError, match="format_version 1"):
        load_adapter(stories(), tmp_path / "old")


def test_a_bf16_base_accepts_an_adapter_measured_on_fp32(tmp_path, ids):
    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    model.save_pretrained(tmp_path)
    bf16 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=torch.bfloat16), tmp_path)
    assert sorted(bf16.roae_adapters()) == [0, 1, 2, 3, 4]


def test_peft_loaders_refuse_a_file_missing_some_tensors_instead_of_warning(tmp_path):
    from safetensors.torch import save_file

    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if ".layers.2." not in k}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(AdapterLoadError, match=r"missing \[.*layers\.2\.self_attn\.rosa_roae\.default\.k_A"):
        PeftModel.from_pretrained(stories(), tmp_path)
    other = get_rosa_model(stories(), RoSAConfig())
    with pytest.raises(AdapterLoadError, match=r"missing \[.*layers\.2\.self_attn\.rosa_roae\.second\..*nothing was loaded"):
        other.load_adapter(str(tmp_path), adapter_name="second")


def other_rope_theta():
    base = stories()
    base.config.rope_parameters["rope_theta"] = 500.0
    base.model.rotary_emb = type(base.model.rotary_emb)(base.config)
    return base


def test_weights_loaded_into_an_existing_adapter_are_checked_against_the_base(tmp_path, ids):
    """PEFT reads no config when loading into an existing adapter name (as the Trainer does on resume):
    the saved per-layer frequencies still tell another base apart."""
    foreign = get_rosa_model(other_rope_theta(), RoSAConfig(targets=("q", "k")))
    randomize_adapters(foreign)
    foreign.save_pretrained(tmp_path)
    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    with torch.no_grad():
        before = model(ids).logits
    with pytest.raises(AdapterLoadError, match="other rotary frequencies"):
        model.load_adapter(str(tmp_path), adapter_name="default")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # nothing was loaded


def test_keys_matching_nothing_are_refused_on_every_loading_path(tmp_path):
    from safetensors.torch import save_file

    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    save_file({k.replace(".layers.", ".blocks."): v for k, v in weights.items()}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(AdapterLoadError, match=r"unexpected \[.*blocks\.0"):
        PeftModel.from_pretrained(stories(), tmp_path)
    other = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    with pytest.raises(AdapterLoadError, match=r"unexpected \[.*blocks\.0"):
        other.load_adapter(str(tmp_path), adapter_name="second")


def test_low_cpu_mem_usage_loading_gives_the_same_model(tmp_path, ids):
    model = get_rosa_model(stories(), RoSAConfig(targets=("q", "k")))
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(PeftModel.from_pretrained(stories(), tmp_path, low_cpu_mem_usage=True)(ids).logits, expected)
