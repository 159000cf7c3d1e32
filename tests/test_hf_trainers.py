"""RoSA trains inside the Hugging Face stack without rosa's own trainer: TRL's SFTTrainer with a
``peft_config``, plain ``transformers.Trainer``, and a quantised base (optimum-quanto int8)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, QuantoConfig, Trainer, TrainerCallback, TrainingArguments
from trl import SFTConfig, SFTTrainer

from conftest import STORIES, require, tiny_model
from rosa import DLSCallback, DLSConfig, RoSAConfig, get_rosa_model

ADAPTER_ONLY = {"adapter_config.json", "adapter_model.safetensors", "README.md", "dls_state.json", "optimizer.pt",
                "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
                "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "chat_template.jinja"}


def stories_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(str(require(STORIES)))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token
    return tokenizer


class StopAfter(TrainerCallback):
    """Ends training after ``step`` (as a kill would, but after that step's checkpoint) without
    changing the schedule, which depends on max_steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def sft(output_dir: Path, max_steps: int, resume: str | None = None, report_to: str = "none", stop: int | None = None) -> SFTTrainer:
    texts = [f"Once upon a time a cat called {name} found {n} fish by the river." for n in range(12) for name in ("Tom", "Sue")]
    args = SFTConfig(output_dir=str(output_dir), max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
                     learning_rate=1e-2, logging_steps=1, report_to=report_to,
                     use_cpu=True, max_length=32, seed=0, data_seed=0)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(require(STORIES))), args=args,
                         train_dataset=Dataset.from_dict({"text": texts}), processing_class=stories_tokenizer(),
                         peft_config=RoSAConfig(targets=("q", "k"), init_seed=0))
    trainer.add_callback(DLSCallback(DLSConfig(k_ratio=0.4, p_exploit=0.5, warmup=1, interval=1, seed=3), trainer=trainer))
    if stop is not None:
        trainer.add_callback(StopAfter(stop))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def selections(trainer) -> list[tuple]:
    return [tuple(v for k, v in sorted(entry.items()) if k.startswith("dls/selected/"))
            for entry in trainer.state.log_history if "dls/exploit" in entry]


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def test_sft_trainer_trains_checkpoints_resumes_and_reloads(tmp_path):
    straight = sft(tmp_path / "straight", 6, report_to="tensorboard")
    assert set(p.name for p in (tmp_path / "straight" / "checkpoint-2").iterdir()) <= ADAPTER_ONLY  # no base weights
    assert len(selections(straight)) == 6 and len(set(selections(straight))) > 1  # DLS chose, and changed its mind

    sft(tmp_path / "cut", 6, stop=4)
    resumed = sft(tmp_path / "cut", 6, resume=str(tmp_path / "cut" / "checkpoint-4"))
    assert losses(resumed) == losses(straight)
    assert selections(resumed) == selections(straight)
    final, again = adapter_weights(tmp_path / "straight" / "checkpoint-6"), adapter_weights(tmp_path / "cut" / "checkpoint-6")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)

    # Unwrapped from the bf16 autocast TRL trains under (on a CPU with native bf16)
    model = straight.accelerator.unwrap_model(straight.model, keep_fp32_wrapper=False).eval()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(STORIES)), tmp_path / "straight" / "checkpoint-6")
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert json.loads((tmp_path / "straight" / "checkpoint-6" / "adapter_config.json").read_text())["dls"]["k_ratio"] == 0.4

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "straight").rglob("events.out.tfevents.*")).parent)).Reload()
    tags = events.Tags()["scalars"]
    assert {"train/dls/exploit", "train/dls/selected/layer_0", "train/dls/score/layer_4", "train/loss"} <= set(tags)
    assert len(events.Scalars("train/dls/exploit")) == 6


class RandomTokens(torch.utils.data.Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, index):
        ids = torch.randint(3, 97, (16,), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "labels": ids}


def train_plain(model, output_dir: Path, max_steps: int, resume: str | None = None, stop: int | None = None) -> Trainer:
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, save_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=[StopAfter(stop)] if stop else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_plain_trainer_saves_adapter_only_with_tied_embeddings_and_resumes_identically(tmp_path):
    def model():
        return get_rosa_model(tiny_model("llama", tie_word_embeddings=True), RoSAConfig(targets=("q", "k"), init_seed=0))

    straight = train_plain(model(), tmp_path / "straight", 4)
    assert set(p.name for p in (tmp_path / "straight" / "checkpoint-2").iterdir()) <= ADAPTER_ONLY
    train_plain(model(), tmp_path / "cut", 4, stop=2)
    resumed = train_plain(model(), tmp_path / "cut", 4, resume=str(tmp_path / "cut" / "checkpoint-2"))
    assert losses(resumed) == losses(straight)
    final, again = adapter_weights(tmp_path / "straight" / "checkpoint-4"), adapter_weights(tmp_path / "cut" / "checkpoint-4")
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert any(final[k].abs().sum() > 0 for k in final if k.endswith("_B"))


def test_a_quanto_int8_base_trains_and_reloads(tmp_path):
    def quantised():
        return AutoModelForCausalLM.from_pretrained(str(require(STORIES)), quantization_config=QuantoConfig(weights="int8"))

    model = get_rosa_model(quantised(), RoSAConfig(targets=("q", "k"), init_seed=0))
    assert type(model.base_model.model.model.layers[0].self_attn.base_layer.q_proj).__name__ == "QLinear"
    train_plain(model, tmp_path, 2)  # transformers refuses a purely quantised model; a PEFT model is accepted
    weights = adapter_weights(tmp_path / "checkpoint-2")
    assert all(weights[k].abs().sum() > 0 for k in weights if k.endswith("_B"))
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    reloaded = PeftModel.from_pretrained(quantised(), tmp_path / "checkpoint-2")
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model.eval()(ids).logits)


def test_the_trainers_activation_checkpointing_reaches_rosas_non_reentrant_setup(tmp_path):
    """The Trainer calls ``activation_checkpointing_enable`` on the PeftModel: it must reach the tuner's
    (non-reentrant, embedding output left without grad so backward can stop early), not the base's."""
    model = get_rosa_model(tiny_model("llama"), RoSAConfig(targets=("q", "k"), init_seed=0))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to="none",
                             use_cpu=True, activation_checkpointing=True)
    Trainer(model=model, args=args, train_dataset=RandomTokens()).train()
    base = model.get_base_model()
    assert base.is_activation_checkpointing and not hasattr(base, "_require_grads_hook")
