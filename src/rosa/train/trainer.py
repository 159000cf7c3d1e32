"""``transformers.Trainer`` with the guarantees a long fine-tuning run needs.

- RoSA models are ``PeftModel``s, so the Trainer itself checkpoints them as adapters (no frozen
  base in every checkpoint) and loads them back on resume; this class adds only what follows.
- Checkpoints are atomic: everything a save writes, the Trainer's files and every callback's
  ``on_save`` (the DLS state), goes to a hidden staging directory that is renamed to
  ``checkpoint-N`` only when complete. A kill during a save leaves the previous checkpoints intact,
  and older checkpoints are rotated out only after the new one exists.
- A non-finite loss stops training before the optimizer step that would spread it into the
  weights, so the checkpoints on disk stay the last good state.
- With a validation split (``load_best_model_at_end``), the best checkpoint is the checkpoint of
  lowest evaluation loss; transformers would name it inside the staging directory, so it is named
  where it is published, which keeps it out of rotation and lets the Trainer reload it at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import rotate_checkpoints

from rosa.errors import RoSAError
from rosa.serialization import publish_directory
from rosa.train.run_dir import CHECKPOINT_PREFIX, checkpoints, save_failures_explained


class NonFiniteLossError(RoSAError):
    """Training produced a NaN or infinite loss."""


def staging_root(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is written before it is published as ``checkpoint-<step>``."""
    return run_dir / f".{CHECKPOINT_PREFIX}{step}.partial"


class RoSATrainer(Trainer):
    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs):
        epochs_trained, steps_in_epoch = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs)
        self._name_best_checkpoint(Path(self.args.output_dir))  # on resume: the run directory may have moved since
        if self.state.global_step >= max_steps:
            # Resumed from the final checkpoint (killed while saving the final adapter): transformers
            # would run one optimizer step beyond max_steps; start past the last epoch instead.
            return num_train_epochs, 0
        return epochs_trained, steps_in_epoch

    def _determine_best_metric(self, metrics, trial) -> bool:
        """Only an evaluation whose step is checkpointed can be reloaded at the end; transformers would
        also let one between checkpoints win, and then name no checkpoint or an older one."""
        return super()._determine_best_metric(metrics, trial) if self.control.should_save else False

    def _name_best_checkpoint(self, run_dir: Path) -> None:
        """Point ``best_model_checkpoint`` at the published ``checkpoint-<best step>`` in ``run_dir``."""
        if self.state.best_global_step:
            self.state.best_model_checkpoint = str(run_dir / f"{CHECKPOINT_PREFIX}{self.state.best_global_step}")

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
        if self.state.best_global_step:  # named inside the staging directory, which is about to go
            self._name_best_checkpoint(run_dir)
            if self.args.should_save:
                self.state.save_to_json(str(staging / name / TRAINER_STATE_NAME))
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
