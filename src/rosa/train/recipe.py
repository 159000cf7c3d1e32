"""The ``rosa train`` recipe, top to bottom: data, model, method, Trainer, run directory.

Everything that can be wrong with the inputs (config, data, model, adapter targets, a writable
output) is checked before the run directory is touched, so a failed start never overwrites or
half-writes a run. The directory's layout and resume logic live in :mod:`rosa.train.run_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback

from rosa import memory
from rosa.data import load_dataset
from rosa.architecture import block_norms, find_decoder_stack
from rosa.config import RoSAConfig
from rosa.data.catalog import TASKS
from rosa.data.prompts import tokenize_for_training, train_prompt, training_lengths
from rosa.dls.callback import DLSCallback
from rosa.errors import RoSAConfigError, RoSAError
from rosa.loading import default_device, load_base_model, load_tokenizer, resolve_dtype, write_base_record
from rosa.locking import directory_lock
from rosa.serialization import atomic_write_bytes, atomic_write_json, check_writable, read_json_object, staged_directory
from rosa.train.callbacks import CompactProgressCallback, JsonlLogCallback, LogEveryCheckpointCallback
from rosa.train.config import METHODS, ExperimentConfig, config_yaml, val_set_size_message
from rosa.train.methods import apply_method, match_rank, trainable_parameters
from rosa.train.run_dir import (
    ADAPTER_DIR,
    BUDGET_FILE,
    CONFIG_FILE,
    DLS_HISTORY,
    PISSA_INIT_DIR,
    RUN_SUMMARY,
    STORAGE_ERRNOS,
    TENSORBOARD_DIR,
    TRAIN_LOG,
    check_new_run_dir,
    checkpoint_step,
    discard_replaced,
    has_something_to_keep,
    move_aside,
    prepare_resume,
    put_back,
    replaced_path,
    resume_point,
    save_failure,
    save_failures_explained,
    settle_replacement,
)
from rosa.train.trainer import RoSATrainer
from rosa.version import __version__

def resolve_budget(config: ExperimentConfig, log=print) -> tuple[ExperimentConfig, dict[str, Any] | None]:
    """Apply ``match_params``: a run directory (its recorded count) or a method name (its count with
    this config on this model) sets the reference; this method's rank is chosen to match it."""
    if not config.match_params:
        return config, None
    reference_dir = Path(config.match_params)
    if (reference_dir / RUN_SUMMARY).is_file():
        summary = json.loads((reference_dir / RUN_SUMMARY).read_text())
        if summary["model"] != config.model:
            raise RoSAConfigError(
                f"--match-params run {reference_dir} was trained on {summary['model']}, not {config.model}; "
                "budgets are only comparable on the same model."
            )
        reference, label = summary["trainable_params"], f"run {reference_dir} ({summary['method']})"
    elif config.match_params in METHODS:
        reference = trainable_parameters(dataclasses.replace(config, method=config.match_params))
        label = f"method {config.match_params}"
    else:
        raise RoSAConfigError(
            f"--match-params {config.match_params!r} is neither a finished run directory (with {RUN_SUMMARY}) "
            f"nor a method name ({', '.join(METHODS)})."
        )
    matched, rank, count = match_rank(config, reference)
    log(f"parameter budget: {label} has {reference:,d} trainable parameters; {config.method} at rank {rank} has {count:,d}")
    return matched, {"reference": label, "reference_params": reference, "rank": rank, "params": count}


def tokenized_dataset(config: ExperimentConfig, tokenizer, log=print) -> list[dict[str, list[int]]]:
    """The training examples. Settings that run but defeat the run (a task's test set, a cutoff that
    cuts the answers) are warned about here, through ``log``, since nothing fails later to show them."""
    records = load_dataset(config.data, config.data_dir, seed=config.seed)
    task = evaluation_task(config.data)
    if task is not None:
        log(memorisation_warning(task))
    if config.training.max_samples is not None and config.training.max_samples < len(records):
        records = random.Random(config.seed).sample(records, config.training.max_samples)
    t = config.training
    minimum = minimum_cutoff_len(tokenizer, t.train_on_inputs)
    if t.cutoff_len < minimum:
        raise RoSAConfigError(
            f"training.cutoff_len {t.cutoff_len} is too small: with training.train_on_inputs=false the loss covers only "
            f"the response, and this tokenizer needs {minimum - 1} tokens for the prompt template alone, so no example "
            f"would keep a token to learn from. Set training.cutoff_len to at least {minimum} (LLM-Adapters uses 256), "
            "or train_on_inputs=true."
        )
    examples = [tokenize_for_training(r, tokenizer, t.cutoff_len, t.train_on_inputs) for r in records]
    empty = sum(not _has_target(example) for example in examples)
    if empty == len(examples):
        raise RoSAConfigError(
            f"no example of {config.data} keeps a token to learn from at training.cutoff_len {t.cutoff_len}: every "
            "prompt fills it (the loss would be 0/0). Raise training.cutoff_len (LLM-Adapters uses 256)."
        )
    cut = response_cutoff(training_lengths(records, tokenizer), t.cutoff_len)
    if cut.share > CUT_RESPONSE_SHARE:
        log(cut.warning(config.data, t.train_on_inputs))
    elif empty:
        log(f"{empty} of {len(examples)} examples have no response token within training.cutoff_len {t.cutoff_len}; they add nothing to the loss")
    return examples


# More than this share of records with their response cut (entirely or partly) is warned about: the
# answer of an LLM-Adapters record is at the end of its response, so a partly cut response usually
# loses the answer too. A few long outliers stay below it and are not worth a warning.
CUT_RESPONSE_SHARE = 0.10


@dataclasses.dataclass(frozen=True)
class ResponseCutoff:
    """What ``cutoff_len`` leaves of a data set's responses (token counts without EOS)."""

    cutoff_len: int
    records: int
    lost: int  # no response token within cutoff_len
    partly: int  # the response starts within cutoff_len but ends after it
    median_length: float  # prompt and response, untruncated
    keeps_most: int  # the smallest cutoff_len that keeps 90% of responses whole, EOS included

    @property
    def share(self) -> float:
        return (self.lost + self.partly) / self.records if self.records else 0.0

    def warning(self, data: str, train_on_inputs: bool) -> str:
        """One line naming the loss, its size, the cause and the fix."""
        effect = ("they still train on their prompt (training.train_on_inputs is on), so the run learns to continue "
                  "prompts more than to answer them" if train_on_inputs
                  else "those without a response token add nothing to the loss")
        return (
            f"warning: training.cutoff_len {self.cutoff_len} cuts the response of {self.lost + self.partly:,d} of "
            f"{self.records:,d} records of {data} ({100 * self.share:.1f}%): {self.lost:,d} keep no response token, "
            f"{self.partly:,d} only its start; the median record is {self.median_length:g} tokens with its response. "
            f"The cut records lose their answer, and {effect}. Raise training.cutoff_len: "
            f"--set training.cutoff_len={self.keeps_most} keeps 90% of the responses whole."
        )


def response_cutoff(lengths: list[tuple[int, int]], cutoff_len: int) -> ResponseCutoff:
    """Count the records whose response ``cutoff_len`` removes, from their ``(prompt, prompt and
    response)`` token counts (:func:`rosa.data.prompts.training_lengths`)."""
    full = sorted(length for _, length in lengths)
    with_eos = [length + 1 for length in full]
    return ResponseCutoff(
        cutoff_len=cutoff_len,
        records=len(lengths),
        lost=sum(prompt >= cutoff_len for prompt, _ in lengths),
        partly=sum(prompt < cutoff_len < length for prompt, length in lengths),
        median_length=statistics.median(full) if full else 0,
        keeps_most=with_eos[math.ceil(0.9 * len(with_eos)) - 1] if with_eos else cutoff_len,
    )


def evaluation_task(data: str) -> str | None:
    """The evaluation task whose *test* set ``data`` names (``load_dataset`` reads a task name as its
    test set; a file of that name wins, as there), or None."""
    path = Path(data).expanduser()
    if path.is_file() or path.suffix.lower() == ".json":
        return None
    key = data.strip().lower()
    return next((task.name for task in TASKS if task.name.lower() == key), None)


def memorisation_warning(task: str) -> str:
    """Training on a test set is allowed (a quick check, a deliberate overfit), but its score is not a result."""
    return (
        f"warning: --data {task} trains on the {task} *test* set, the items `rosa eval --tasks {task}` scores: an "
        f"evaluation on {task} after this run measures memorisation, not what the method learned. For a fair score, "
        "train on a training set (commonsense_15k, math_10k, commonsense_mix, math_mix) or a JSON file of your own."
    )


def validation_split(examples: list, config: ExperimentConfig) -> tuple[list, list]:
    """``(training, held out)``: ``training.val_set_size`` examples held out of training to compute an
    evaluation loss on (LLM-Adapters' ``val_set_size``). The draw depends on the seed alone, so a
    resumed run and every process of a data-parallel run hold out the same records; the training
    examples keep their order."""
    size = config.training.val_set_size
    if not size:
        return examples, []
    if size >= len(examples):
        raise RoSAConfigError(val_set_size_message(size, len(examples), f"--data {config.data}") + ".")
    held = set(random.Random(config.seed).sample(range(len(examples)), size))
    # A held-out example whose response the cutoff removed has no loss token: its batch's loss would be
    # 0/0 = NaN, and no checkpoint could then be best. It is held out, but not evaluated.
    evaluated = [examples[i] for i in sorted(held) if _has_target(examples[i])]
    if not evaluated:
        raise RoSAConfigError(
            f"none of the {size} held-out examples keeps a token to learn from at training.cutoff_len "
            f"{config.training.cutoff_len}, so no evaluation loss can be computed. Raise training.cutoff_len."
        )
    return [e for i, e in enumerate(examples) if i not in held], evaluated


def minimum_cutoff_len(tokenizer, train_on_inputs: bool) -> int:
    """The smallest ``cutoff_len`` that leaves an example a token to learn from: two tokens (the
    first predicts the second) when the loss covers the prompt; otherwise the prompt template (the
    training prompt of an empty record) plus one response token."""
    if train_on_inputs:
        return 2
    return len(tokenizer(train_prompt({"instruction": "", "input": "", "output": ""}))["input_ids"]) + 1


def _has_target(example: dict[str, list[int]]) -> bool:
    """Whether some label is predicted (a causal LM predicts token i from the ones before it)."""
    return any(label != -100 for label in example["labels"][1:])


def check_model(model: torch.nn.Module, config: ExperimentConfig, example: dict[str, list[int]]) -> None:
    """What would otherwise fail only once training has started (after the run directory was
    written): DLS's norms (``dls.norm_names``), and one forward pass of the adapted model on a
    training example (a layout the adapter cannot handle fails there). RNG states are left as they
    were and dropout is off, so the run is the same with or without this check."""
    if config.uses_dls:
        stack = find_decoder_stack(model)
        for block in stack.layers:
            block_norms(block, config.dls.norm_names)
    device = next(model.parameters()).device
    batch = {name: torch.tensor([example[name]], device=device) for name in ("input_ids", "attention_mask")}
    was_training = model.training
    try:
        model.eval()
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            model(**batch)
    except (RoSAError, torch.OutOfMemoryError):
        raise  # already one clear message / not the model's fault: the batch or the device is too small
    except Exception as err:  # a model or adapter that cannot run: say so before anything is written
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RoSAError(
            f"{config.model} with method {config.method} failed a test forward pass on one training example, before "
            f"anything was written: {reason}. Fix the model or the method's settings (--set rosa.* / lora.*)."
        ) from err
    finally:
        model.train(was_training)


def train(config: ExperimentConfig, overwrite: bool = False, resume: bool = False, log=print) -> dict[str, Any]:
    """Run one fine-tuning job and return its summary (also written to ``run.json``).

    ``resume=True`` continues the unfinished run in ``config.output_dir`` from its newest complete
    checkpoint (``config`` must be the run's own ``config.yaml``); with the same seed and hardware the
    result is bit-identical to an uninterrupted run.

    The run directory is locked for the whole job (a second writer is refused), and nothing in it is
    touched before every input has been checked, the model included (one test forward pass). A new
    run that fails before it has anything to keep (a published checkpoint) is undone: its directory
    is removed, or the run it replaced (``overwrite``) is moved back unchanged.
    """
    config = config.resolved()
    # Resolved once: a symlinked run directory must name one lock and be moved aside as the directory
    # it points to, never as the link.
    run_dir = Path(config.output_dir).resolve()
    if not resume:
        check_new_run_dir(run_dir, overwrite)  # a quick answer; checked again under the lock
    check_writable(run_dir, "--output-dir")
    main_process = int(os.environ.get("RANK", "0")) == 0  # the one that writes, under accelerate/torchrun
    lock = directory_lock(
        run_dir, "run directory",
        "wait for it to finish, or choose another --output-dir." if not resume else "wait for it to finish.",
    ) if main_process else contextlib.nullcontext()
    with lock:
        if main_process:
            settle_replacement(run_dir, log)
        return _train(config, run_dir, overwrite, resume, log)


def _train(config: ExperimentConfig, run_dir: Path, overwrite: bool, resume: bool, log) -> dict[str, Any]:
    checkpoint = resume_point(run_dir, config.uses_dls, log) if resume else None
    if not resume:
        check_new_run_dir(run_dir, overwrite)
    if resume:  # config.yaml already holds the matched rank; the reference may have moved since
        budget = read_json_object(run_dir / BUDGET_FILE) if (run_dir / BUDGET_FILE).is_file() else None
    else:
        config, budget = resolve_budget(config, log)

    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    dataset, validation = validation_split(tokenized_dataset(config, tokenizer, log), config)
    device = default_device()
    dtype = resolve_dtype(config.precision, device)
    args = training_arguments(config, run_dir, dtype, device)  # joins the process group under accelerate/torchrun
    if _sharded_by_accelerate(args):
        raise RoSAConfigError(FSDP_REFUSAL)
    base = load_base_model(config.model, precision=config.precision, device=device, trust_remote_code=config.trust_remote_code,
                           quantize=config.quantize)
    model = apply_method(base, config)
    check_model(model, config, dataset[0])
    trainable, total = model.get_nb_trainable_parameters()  # RoSAModel and PeftModel both offer it
    log(f"{config.method}: trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # Inputs are all checked (by every process): only now is the run directory touched, by one process.
    existed = run_dir.is_dir()
    args.distributed_state.wait_for_everyone()
    try:
        if args.should_save:
            with _explained_failures(run_dir, checkpoint, "the run directory"):
                _prepare_run_dir(run_dir, config, budget, model, overwrite, resume, checkpoint)
        args.distributed_state.wait_for_everyone()
        summary = _run(config, run_dir, args, model, tokenizer, dataset, validation, checkpoint, budget, trainable, total,
                       device, log)
    except Exception as err:
        if args.should_save:
            _after_failure(run_dir, resume, existed, err, log)
        raise
    if args.should_save:
        discard_replaced(run_dir, log)
    return summary


def _run(config: ExperimentConfig, run_dir: Path, args: TrainingArguments, model, tokenizer, dataset, validation,
         checkpoint: Path | None, budget: dict | None, trainable: int, total: int, device: torch.device, log) -> dict[str, Any]:
    if checkpoint is not None:
        log(f"resuming from {checkpoint}")

    callbacks = [LogEveryCheckpointCallback(), JsonlLogCallback(run_dir / TRAIN_LOG)]
    if "tensorboard" in config.training.report_to:  # in the run directory, not where transformers would put it
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(run_dir / TENSORBOARD_DIR)
        callbacks.append(tensorboard)
    trainer = RoSATrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=validation or None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, padding=True, return_tensors="pt"),
        callbacks=callbacks,
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgressCallback())
    dls = DLSCallback(config.dls, trainer=trainer) if config.uses_dls else None
    if dls is not None:
        trainer.add_callback(dls)
    memory_reset = memory.reset_peak(device)  # runs sharing a process (a sweep) each measure themselves
    started = time.perf_counter()
    with _explained_failures(run_dir, checkpoint, "a checkpoint"):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    runtime = time.perf_counter() - started
    if not trainer.args.should_save:
        return {}
    validated = _validation_summary(trainer.state, len(validation)) if validation else None
    if validated is not None and validated["best_step"] is not None:
        last = validated["last_eval_loss"]
        log(f"final adapter: the best checkpoint, step {validated['best_step']} (eval loss {validated['best_eval_loss']:.4f}; "
            f"step {validated['last_step']}: {'not finite' if last is None else f'{last:.4f}'})")
    with save_failures_explained(run_dir, "the final adapter"):
        _save_final_adapter(run_dir, config, model, tokenizer)
        if dls is not None:
            atomic_write_json(run_dir / DLS_HISTORY, {"config": config.dls.to_dict(), **dls.selector.state_dict()})
        summary = {
            "method": config.method,
            "model": config.model,
            "data": config.data,
            "examples": len(dataset),
            "validation": validated,
            "trainable_params": trainable,
            "total_params": total,
            "budget": budget,
            "steps": trainer.state.global_step,
            "train_loss": _logged_mean_loss(trainer.state.log_history),
            "resumed_from_step": checkpoint_step(checkpoint) if checkpoint is not None else None,
            "train_runtime_s": runtime,
            **dict(zip(("peak_memory_bytes", "peak_memory_kind"), memory.peak(device, memory_reset))),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "dtype": str(model.get_base_model().dtype).removeprefix("torch."),  # what ``precision: auto`` chose here
            "versions": _versions(),
        }
        atomic_write_json(run_dir / RUN_SUMMARY, summary)
    return summary


def _after_failure(run_dir: Path, resume: bool, existed: bool, err: Exception, log) -> None:
    """A run that failed with something to keep (a checkpoint) stays for ``--resume``, and the run it
    replaced stays aside until a new run finishes; a new one that failed before is undone, so the same
    command (corrected) can run again. A resumed run is left as it was (it was a run before this
    command). Kills and Ctrl-C never get here: they leave the directory as it is, for ``--resume``."""
    replaced = replaced_path(run_dir).exists()
    if has_something_to_keep(run_dir):
        if replaced and isinstance(err, RoSAError) and err.args and isinstance(err.args[0], str):
            err.args = (f"{err.args[0]} The previous run is kept in {replaced_path(run_dir)} until a new run in "
                        f"{run_dir} finishes; move it back to restore it.", *err.args[1:])
        return
    if resume:
        return
    try:
        put_back(run_dir, existed)
    except OSError as cleanup:
        log(f"could not undo the start of the run in {run_dir}: {cleanup}")
        return
    if isinstance(err, RoSAError) and err.args and isinstance(err.args[0], str):
        undone = (f"The previous run in {run_dir} was moved back, unchanged." if replaced
                  else f"Nothing of this run was kept ({run_dir} is as it was).")
        err.args = (f"{err.args[0]} {undone}", *err.args[1:])


@contextlib.contextmanager
def _explained_failures(run_dir: Path, checkpoint: Path | None, what: str) -> Iterator[None]:
    """A full disk, a permission change or a refused pickle becomes a message that says what is kept
    and what to do, instead of a traceback."""
    try:
        yield
    except pickle.UnpicklingError as err:
        raise RoSAError(
            f"{checkpoint} holds a file that is not plain tensor data, and rosa loads checkpoints with "
            f"torch.load(weights_only=True), never running pickled code ({str(err).splitlines()[0]}). Delete "
            f"{checkpoint} to resume from the checkpoint before it, or start the run again."
        ) from err
    except OSError as err:
        if err.errno in STORAGE_ERRNOS:
            raise save_failure(err, run_dir, what) from err
        raise


def _save_final_adapter(run_dir: Path, config: ExperimentConfig, model, tokenizer) -> None:
    with staged_directory(run_dir / ADAPTER_DIR) as adapter_dir:
        if config.method == "pissa":
            model.save_pretrained(str(adapter_dir), path_initial_model_for_weight_conversion=str(run_dir / PISSA_INIT_DIR))
        else:
            model.save_pretrained(str(adapter_dir))
        if not isinstance(model.peft_config["default"], RoSAConfig):
            write_base_record(model.get_base_model(), adapter_dir)
        tokenizer.save_pretrained(str(adapter_dir))


def _prepare_run_dir(run_dir: Path, config: ExperimentConfig, budget: dict | None, model, overwrite: bool, resume: bool,
                     checkpoint: Path | None) -> None:
    if resume:
        prepare_resume(run_dir, checkpoint)
    else:
        if overwrite and (replaced_path(run_dir).exists() or (run_dir.is_dir() and any(run_dir.iterdir()))):
            # kept aside until the new run finishes (see _after_failure and settle_replacement)
            move_aside(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if budget is not None:
            atomic_write_json(run_dir / BUDGET_FILE, budget)
        atomic_write_bytes(run_dir / CONFIG_FILE, config_yaml(config))
    if config.method == "pissa" and not (run_dir / PISSA_INIT_DIR).is_dir():
        # PiSSA moves the principal components out of the base weights; saving its initial state lets
        # the final adapter be converted to a plain LoRA that loads onto the *unmodified* base model.
        model.peft_config["default"].init_lora_weights = True
        with staged_directory(run_dir / PISSA_INIT_DIR) as initial:
            model.save_pretrained(str(initial))


def _logged_mean_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over the whole run, from the log (the Trainer's own mean covers only the
    steps since a resume). Each logged value is the mean over the steps since the previous one, and
    LogEveryCheckpointCallback logs at every checkpoint and at the last step, so the log covers every
    step whether or not the run was resumed."""
    total, previous = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    return total / previous if previous else None  # no step: JSON has no NaN


def _validation_summary(state, examples: int) -> dict[str, Any]:
    """Which checkpoint the final adapter is (lowest evaluation loss) and the last step's loss, from the
    Trainer's state, which a resumed run restores from its checkpoint. JSON has no NaN: a loss that is
    not finite is None (it never wins: a run whose losses all were has no best step and keeps its last adapter)."""
    last = next((e["eval_loss"] for e in state.log_history if "eval_loss" in e and e["step"] == state.global_step), None)
    return {
        "examples": examples,
        "best_step": state.best_global_step,
        "best_eval_loss": state.best_metric if state.best_global_step else None,
        "last_step": state.global_step,
        "last_eval_loss": last if last is not None and math.isfinite(last) else None,
    }


FSDP_REFUSAL = (
    "rosa train does not shard with FSDP: on a CPU accelerate's FSDP runs independent, unsharded copies of the "
    "training, and on GPUs rosa train does not gather a sharded adapter before saving it. Launch without "
    "--use_fsdp (data-parallel, every DLS mode works), quantise the base instead (--quantize nf4), or shard "
    "in your own training loop with rosa.fsdp (docs/large-models.md)."
)


def _sharded_by_accelerate(args: TrainingArguments) -> bool:
    """``accelerate launch --use_fsdp`` (or an FSDP config file) says so in the environment of every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true") or bool(args.fsdp)


def training_arguments(config: ExperimentConfig, run_dir: Path, dtype: torch.dtype, device: torch.device) -> TrainingArguments:
    """LLM-Adapters' Trainer settings (AdamW, linear decay after warm-up, effective batch split
    over micro-batches and processes); bf16/fp16 autocast follows the model's precision.

    ``use_cpu`` on a machine without accelerator is what makes several launched processes (accelerate,
    torchrun) train as one data-parallel job over gloo instead of as independent copies."""
    t = config.training
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if t.batch_size % (t.micro_batch_size * world_size):
        raise RoSAConfigError(
            f"training.batch_size {t.batch_size} is not a multiple of micro_batch_size x processes "
            f"({t.micro_batch_size} x {world_size}); change one of them."
        )
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.batch_size // (t.micro_batch_size * world_size),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,  # -1: transformers trains num_train_epochs
        learning_rate=t.lr,
        lr_scheduler_type="linear",
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        optim="adamw_torch",
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # passed only when on, under the name this transformers has (5.24 renamed it, warning on the old one)
        **({CHECKPOINTING_ARGUMENT: True} if t.gradient_checkpointing else {}),
        logging_steps=t.logging_steps,
        report_to=[name for name in config.training.report_to if name not in ("tensorboard", "none")] or "none",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # With a validation split: the evaluation loss at every eval_steps and at the last step, and the
        # checkpoint where it was lowest reloaded at the end (RoSATrainer keeps it out of rotation).
        **(dict(eval_strategy="steps", eval_steps=t.eval_steps or t.save_steps, per_device_eval_batch_size=t.micro_batch_size,
                prediction_loss_only=True, load_best_model_at_end=True, metric_for_best_model="eval_loss",
                greater_is_better=False) if t.val_set_size else {}),
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        # DLS freeze leaves the unselected layers' adapters without a gradient, a different set at each
        # selection: DDP must look for them every step (docs/large-models.md measures what it costs).
        ddp_find_unused_parameters=config.uses_dls and config.dls.mode == "freeze",
        use_cpu=device.type == "cpu",
    )


CHECKPOINTING_ARGUMENT = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                          else "gradient_checkpointing")


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"rosa": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
