"""``transformers.Trainer`` that checkpoints a RoSAModel as an adapter, not as a full state dict.

Trainer calls ``save_pretrained`` only for ``PreTrainedModel`` and ``PeftModel``; anything else is
saved as its whole ``state_dict()``, i.e. the frozen base model again in every checkpoint.
"""

from __future__ import annotations

from transformers import Trainer

from rosa.model import RoSAModel


class RoSATrainer(Trainer):
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, RoSAModel):
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            model.save_pretrained(output_dir if output_dir is not None else self.args.output_dir)
