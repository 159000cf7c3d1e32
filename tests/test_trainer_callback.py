"""DLSCallback drives the selector inside transformers.Trainer, including resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from conftest import tiny_model
from rosa import DLSCallback, DLSConfig, RoSAConfig, RoSAError, get_rosa_model


class TokenDataset(Dataset):
    def __init__(self, n: int = 32):
        generator = torch.Generator().manual_seed(0)
        self.rows = [torch.randint(3, 97, (10,), generator=generator) for _ in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def make_trainer(tmp_path, max_steps, callback, save_steps=4, optimizers=(None, None)):
    model = get_rosa_model(tiny_model("llama", num_hidden_layers=4), RoSAConfig(init_seed=0))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, learning_rate=1e-2, weight_decay=0.1, save_steps=save_steps,
        logging_steps=1, report_to=[], use_cpu=True, seed=0, data_seed=0, save_only_model=False,
        lr_scheduler_type="constant", disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback], optimizers=optimizers)


def test_trainer_runs_dls_once_per_optimizer_step_and_checkpoints_its_state(tmp_path):
    callback = DLSCallback(DLSConfig(warmup=2, interval=2, seed=0))
    trainer = make_trainer(tmp_path, max_steps=8, callback=callback)
    norms = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "norm" in n}
    trainer.train()
    selector = callback.selector
    assert selector.step_count == 8
    assert [r["step"] for r in selector.history] == [2, 4, 6, 8]
    assert all(torch.equal(p, norms[n]) for n, p in trainer.model.named_parameters() if "norm" in n)
    saved = json.loads((tmp_path / "checkpoint-4" / "dls_state.json").read_text())
    assert saved["step_count"] == 4 and len(saved["history"]) == 2


def test_trainer_resume_continues_the_selection_sequence(tmp_path):
    full = DLSCallback(DLSConfig(warmup=2, interval=2, p_exploit=0.5, seed=3))
    make_trainer(tmp_path / "full", max_steps=8, callback=full).train()

    first = DLSCallback(DLSConfig(warmup=2, interval=2, p_exploit=0.5, seed=3))
    make_trainer(tmp_path / "resumed", max_steps=4, callback=first, save_steps=4).train()
    second = DLSCallback(DLSConfig(warmup=2, interval=2, p_exploit=0.5, seed=3))
    make_trainer(tmp_path / "resumed", max_steps=8, callback=second).train(
        resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4")
    )
    assert [r["selected"] for r in second.selector.history] == [r["selected"] for r in full.selector.history]
    assert [r["kind"] for r in second.selector.history] == [r["kind"] for r in full.selector.history]


def test_an_optimizer_missing_adapter_parameters_is_refused(tmp_path):
    model = get_rosa_model(tiny_model("llama", num_hidden_layers=4))
    first_layer_only = [p for n, p in model.named_parameters() if p.requires_grad and ".layers.0." in n]
    optimizer = torch.optim.AdamW(first_layer_only, lr=1e-3)
    callback = DLSCallback(DLSConfig(warmup=1, interval=1))
    trainer = make_trainer(tmp_path, max_steps=2, callback=callback, optimizers=(optimizer, None))
    trainer.model = model
    trainer.model_wrapped = model
    with pytest.raises(RoSAError, match=r"does not hold the adapter parameters of layers \[1, 2, 3\]"):
        trainer.train()
