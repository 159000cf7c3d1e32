"""Trainer callbacks that keep a run directory readable without TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Append every Trainer log (loss, learning rate, grad norm, ...) as one JSON line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as sink:
                sink.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")
