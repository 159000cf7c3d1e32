"""The fine-tuning methods ``rosa train`` offers, and parameter-budget matching between them.

``rosa`` is RoAE + DLS; ``roae`` is RoAE alone; ``lora``, ``dora`` and ``pissa`` come from peft;
``lora-dls`` is DLS on LoRA (the paper's "DLS only" ablation). DLS itself is attached by the
training recipe as a Trainer callback, so here a method is only "which adapter on the base".
"""

from __future__ import annotations

import dataclasses
import torch
from torch import nn

from rosa.errors import RoSAConfigError
from rosa.model import get_rosa_model
from rosa.train.config import ExperimentConfig

ROAE_METHODS = ("rosa", "roae")


def apply_method(base: nn.Module, config: ExperimentConfig, *, pissa_init: bool = True) -> nn.Module:
    """Freeze ``base`` and attach the method's adapter. ``pissa_init=False`` skips PiSSA's SVD
    (same parameter count), which is what counting on the meta device needs."""
    if config.method in ROAE_METHODS:
        if config.rosa.init_seed is None:
            config = dataclasses.replace(config, rosa=dataclasses.replace(config.rosa, init_seed=config.seed))
        return get_rosa_model(base, config.rosa)
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    _check_lora_targets(base, lora.targets)
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        use_dora=config.method == "dora",
        init_lora_weights="pissa" if (config.method == "pissa" and pissa_init) else True,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, peft_config)


def meta_model(name_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """The model's architecture on the meta device: no memory and no weights, any size.

    Rotary frequencies are computed from the config, so the rotary embeddings are rebuilt on the
    CPU to carry real values (RoAE measures its dimensions from them).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from rosa.gguf import gguf_config, gguf_source
    from rosa.loading import check_model_path
    from rosa.roae.probe import rotary_buffers

    check_model_path(name_or_path)
    source = gguf_source(name_or_path)
    model_config = (AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code) if source is None
                    else gguf_config(source, trust_remote_code))  # from the file's metadata: nothing dequantised
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    for name, module in list(base.named_modules()):
        if any(getattr(module, name).is_meta for name in rotary_buffers(module)):
            parent, _, child = name.rpartition(".")
            base.get_submodule(parent).register_module(child, type(module)(module.config))
    return base


def trainable_parameters(config: ExperimentConfig) -> int:
    """Trainable parameter count of ``config``'s method on its model, computed without weights."""
    model = apply_method(meta_model(config.model, config.trust_remote_code), config, pissa_init=False)
    return model.get_nb_trainable_parameters()[0]


def with_rank(config: ExperimentConfig, rank: int) -> ExperimentConfig:
    """The method's own rank knob: RoAE's rank for RoAE methods, LoRA's r (alpha kept at the same
    alpha/r ratio, as LLM-Adapters scales it) for the peft methods."""
    if config.method in ROAE_METHODS:
        return dataclasses.replace(config, rosa=dataclasses.replace(config.rosa, rank=rank))
    ratio = config.lora.alpha / config.lora.r
    return dataclasses.replace(config, lora=dataclasses.replace(config.lora, r=rank, alpha=ratio * rank))


def match_rank(config: ExperimentConfig, reference: int) -> tuple[ExperimentConfig, int, int]:
    """The rank whose trainable count is closest to ``reference`` (ties go to the smaller rank), as
    (config at that rank, rank, count).

    Every method's count is affine in its rank, so two counts give the line and the neighbours of
    its solution are checked exactly.
    """
    one, two = trainable_parameters(with_rank(config, 1)), trainable_parameters(with_rank(config, 2))
    per_rank, fixed = two - one, one - (two - one)
    guess = max(1, round((reference - fixed) / per_rank))
    candidates = {r: trainable_parameters(with_rank(config, r)) for r in {max(1, guess - 1), guess, guess + 1}}
    rank = min(candidates, key=lambda r: (abs(candidates[r] - reference), r))
    return with_rank(config, rank), rank, candidates[rank]


def linear_module_names(base: nn.Module) -> set[str]:
    """The last name part of every Linear module (``q_proj``, ``fc1``, ...): what LoRA targets can name."""
    return {name.rsplit(".", 1)[-1] for name, module in base.named_modules() if isinstance(module, nn.Linear)}


def _check_lora_targets(base: nn.Module, targets: tuple[str, ...]) -> None:
    linear_names = linear_module_names(base)
    absent = [t for t in targets if t not in linear_names]
    if absent:
        raise RoSAConfigError(
            f"lora.targets {absent} are not linear layers of this model; its linear layers are "
            f"{sorted(linear_names)}. Set lora.targets (e.g. --set lora.targets=[q_proj,v_proj])."
        )

