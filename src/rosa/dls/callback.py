"""Drive a :class:`DynamicLayerSelector` inside ``transformers.Trainer``."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rosa.config import DLSConfig
from rosa.dls.selector import DynamicLayerSelector
from rosa.errors import RoSAError
from rosa.serialization import atomic_write_json

STATE_NAME = "dls_state.json"


def freeze_under_ddp_message(processes: int) -> str:
    return (
        f"DLS mode 'freeze' on {processes} processes needs DDP to look for unused parameters: freeze leaves the "
        "unselected layers' adapter parameters without a gradient, and DDP fails with 'Expected to have finished "
        "reduction in the prior iteration' otherwise. Set ddp_find_unused_parameters=True and leave "
        "ddp_static_graph off in the TrainingArguments (rosa train does), or use dls.mode=skip."
    )


def ddp_would_fail_under_freeze(args, model) -> bool:
    """Whether the DDP the Trainer builds cannot take freeze's changing set of parameters without a
    gradient: a static graph, or no search for unused parameters (which transformers, left unset, skips
    only for a plain ``PreTrainedModel`` under activation checkpointing)."""
    if getattr(args, "ddp_static_graph", False):
        return True
    if args.ddp_find_unused_parameters is not None:
        return not args.ddp_find_unused_parameters
    if not isinstance(model, PreTrainedModel):
        return False
    # transformers 5.x renamed gradient to activation checkpointing; the old names remain on older releases
    model_checkpoints = getattr(model, "is_activation_checkpointing", None)
    if model_checkpoints is None:
        model_checkpoints = getattr(model, "is_gradient_checkpointing", False)
    args_checkpoint = getattr(args, "activation_checkpointing", None)
    if args_checkpoint is None:
        args_checkpoint = getattr(args, "gradient_checkpointing", False)
    return bool(model_checkpoints or args_checkpoint)


class DLSCallback(TrainerCallback):
    """Creates the selector at ``on_train_begin`` — after the Trainer has built its optimizer.

    Creating it there (never earlier) is what keeps every adapter parameter inside the optimizer:
    a selector that froze layers before the optimizer existed would exclude them forever, the bug
    reported for layer-sampling peers. ``on_train_begin`` also checks that guarantee explicitly.
    Selections happen in ``on_pre_optimizer_step``, once per optimizer step whatever the gradient
    accumulation. The selector's state is written into every checkpoint and read back on resume.

    Callbacks cannot reach the Trainer's loggers by themselves (they run after the loggers' own
    callbacks), so pass the trainer, as TRL's logging callbacks take it:
    ``trainer.add_callback(DLSCallback(config, trainer=trainer))`` reports every selection to every
    logger in ``report_to``.
    """

    def __init__(self, config: DLSConfig | None = None, trainer=None):
        self.config = config or DLSConfig()
        self.trainer = trainer
        self.selector: DynamicLayerSelector | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is None:
            raise RoSAError("DLSCallback needs the Trainer's optimizer at train begin; use a transformers.Trainer.")
        if args.world_size > 1 and self.config.mode == "freeze" and ddp_would_fail_under_freeze(args, model):
            raise RoSAError(freeze_under_ddp_message(args.world_size))
        self.selector = DynamicLayerSelector(model, self.config)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        absent = [g.index for g in self.selector.groups for p in g.adapter_parameters if id(p) not in in_optimizer]
        if absent:
            raise RoSAError(
                f"the optimizer does not hold the adapter parameters of layers {sorted(set(absent))}; DLS "
                "would never train them. Build the optimizer from all adapter parameters before selecting."
            )
        if state.global_step > 0:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_NAME
            if not checkpoint.is_file():
                raise RoSAError(
                    f"resuming at step {state.global_step} but {checkpoint} is missing, so the DLS selection "
                    "sequence cannot continue exactly. Resume from a checkpoint written with DLSCallback."
                )
            self.selector.load_state_dict(json.loads(checkpoint.read_text()))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        selections = len(self.selector.history)
        self.selector.step()
        if len(self.selector.history) > selections:
            self._report(self.selector.history[-1], state)

    def _report(self, selection: dict, state) -> None:
        """One log entry per selection, as scalars every logger accepts (TensorBoard, W&B, trackio, ...):
        ``dls/exploit``, ``dls/selected/layer_<i>`` (1 or 0) and ``dls/score/layer_<i>``. Through
        ``trainer.log`` every configured logger receives it; without the trainer it is only added to
        ``state.log_history`` (and so to ``trainer_state.json``)."""
        entry = {"dls/exploit": float(selection["kind"] == "exploit")}
        for layer, score in enumerate(selection["scores"]):
            entry[f"dls/selected/layer_{layer}"] = float(layer in selection["selected"])
            entry[f"dls/score/layer_{layer}"] = score
        if self.trainer is not None:
            self.trainer.log(entry)
        else:
            state.log_history.append({**entry, "step": state.global_step})

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        atomic_write_json(checkpoint / STATE_NAME, self.selector.state_dict())

    def on_train_end(self, args, state, control, **kwargs):
        self.selector.remove()
