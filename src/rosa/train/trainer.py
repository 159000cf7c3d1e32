"""``transformers.Trainer`` with the guarantees a long fine-tuning run needs.

- A RoSAModel is checkpointed as an adapter (Trainer calls ``save_pretrained`` only for
  ``PreTrainedModel`` and ``PeftModel``; anything else would be saved as its whole ``state_dict()``,
  the frozen base model again in every checkpoint), and loaded back from one on resume.
- Checkpoints are atomic: everything a save writes, the Trainer's files and every callback's
  ``on_save`` (the DLS state), goes to a hidden staging directory that is renamed to
  ``checkpoint-N`` only when complete. A kill during a save leaves the previous checkpoints intact,
  and older checkpoints are rotated out only after the new one exists.
- A non-finite loss stops training before the optimizer step that would spread it into the
  weights, so the checkpoints on disk stay the last good state.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from rosa.errors import RoSAError
from rosa.model import RoSAModel
from rosa.serialization import publish_directory
from rosa.train.run_dir import CHECKPOINT_PREFIX, checkpoints, save_failures_explained


class NonFiniteLossError(RoSAError):
    """Training produced a NaN or infinite loss."""


def staging_root(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before it is published as ``checkpoint-<step>``."""
    return run_dir / f".{CHECKPOINT_PREFIX}{step}.partial"


class RoSATrainer(Trainer):
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, RoSAModel):
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            model.save_pretrained(output_dir if output_dir is not None else self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if not isinstance(unwrapped, RoSAModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        unwrapped.load_adapter_weights(resume_from_checkpoint)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs):
        epochs_trained, steps_in_epoch = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs)
        if self.state.global_step >= max_steps:
            # Resumed from the final checkpoint (killed while saving the final adapter): transformers
            # would run one optimizer step beyond max_steps; start past the last epoch instead.
            return num_train_epochs, 0
        return epochs_trained, steps_in_epoch

    def _maybe_log_save_evaluate(self, *args, **kwargs) -> None:
        if not self.control.should_save:
            return super()._maybe_log_save_evaluate(*args, **kwargs)
        run_dir = Path(self.args.output_dir)
        name = f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        staging = staging_root(run_dir, self.state.global_step)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving this step
        self.accelerator.wait_for_everyone()
        self.args.output_dir = str(staging)  # the Trainer and every on_save write into the staging copy
        try:
            with save_failures_explained(run_dir, name):
                super()._maybe_log_save_evaluate(*args, **kwargs)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)  # a full disk needs its space back
            raise
        finally:
            self.args.output_dir = str(run_dir)
        self.accelerator.wait_for_everyone()  # every process has written its files (RNG states)
        if self.args.should_save:
            publish_directory(staging / name, run_dir / name)
            staging.rmdir()
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            published = checkpoints(Path(self.args.output_dir))
            kept = f"the last good checkpoint, {published[-1]}, is kept" if published else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"training stopped: the loss became {loss.item()} in optimizer step {self.state.global_step + 1}, "
                f"before that step changed any weight; {kept}. Resuming with the same settings would diverge "
                "again: start a new run with a lower learning rate (--lr), fp32 or bf16 instead of fp16 "
                "(--precision), or check the data."
            )
        return loss
