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


class LogEveryCheckpointCallback(TrainerCallback):
    """Log at every checkpoint and at the last step, besides every ``logging_steps``.

    The Trainer keeps the losses since the last log line in memory only: without a log at each
    checkpoint a resumed run would lose them, and without one at the last step the final steps
    would be missing from the log. With both, the logged losses cover every step of a run.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
