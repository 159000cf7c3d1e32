"""Trainer callbacks that keep a run directory readable without TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


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


class CompactProgressCallback(ProgressCallback):
    """The progress bar, with each DLS selection printed as one line of layer numbers.

    :class:`rosa.dls.DLSCallback` logs a selection as one scalar per layer (``dls/selected/layer_i``,
    ``dls/score/layer_i``) so that TensorBoard, W&B and the JSON log can plot them; printed as is, that is
    60 numbers per selection on a 30-layer model. The loggers still receive every scalar.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        selected = [key.rsplit("_", 1)[1] for key, value in (logs or {}).items()
                    if key.startswith("dls/selected/") and value]
        if selected or "dls/exploit" in (logs or {}):
            kind = "exploit" if logs.get("dls/exploit") else "explore"
            logs = {key: value for key, value in logs.items() if not key.startswith("dls/")}
            logs["dls"] = f"{kind}: layers {', '.join(selected)}"
        super().on_log(args, state, control, logs=logs, **kwargs)
