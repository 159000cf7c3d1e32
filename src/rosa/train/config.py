"""The experiment configuration of ``rosa train``: YAML file, then command-line overrides, resolved.

A run directory stores the *resolved* configuration (``config.yaml``: every default filled in, the
learning rate and, with ``--match-params``, the rank chosen), so a run can be repeated or compared
from its directory alone.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rosa.config import DLSConfig, RoSAConfig
from rosa.errors import RoSAConfigError
from rosa.loading import PRECISIONS
from rosa.quantize import check_choice

# Learning rates when none is given: the paper's 1e-3 for RoAE; LLM-Adapters' 3e-4 for LoRA (and
# for PiSSA and LoRA+DLS, which share its adapter); 2e-4 for DoRA, its authors' LLaMA-7B setting.
METHOD_LEARNING_RATES = {"rosa": 1e-3, "roae": 1e-3, "lora": 3e-4, "lora-dls": 3e-4, "pissa": 3e-4, "dora": 2e-4}
METHODS = tuple(METHOD_LEARNING_RATES)


@dataclass
class LoraSettings:
    """The LoRA-family baselines; defaults are LLM-Adapters' released commands (r 32, alpha 64)."""

    r: int = 32
    alpha: float = 64.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")

    def __post_init__(self):
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        _check(isinstance(self.r, int) and self.r >= 1, f"lora.r must be a positive integer, got {self.r!r}")
        _check(0.0 <= float(self.dropout) < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        _check(bool(self.targets), "lora.targets must name at least one module, e.g. [q_proj, v_proj]")


@dataclass
class TrainingSettings:
    """Optimisation; defaults are LLM-Adapters' (effective batch 16, 3 epochs, cutoff 256, 100 warm-up steps)."""

    lr: float | None = None
    epochs: float = 3.0
    max_steps: int | None = None  # None: train ``epochs`` epochs; set, it takes precedence
    batch_size: int = 16
    micro_batch_size: int = 4
    cutoff_len: int = 256
    warmup_steps: int = 100
    weight_decay: float = 0.0
    train_on_inputs: bool = True
    max_samples: int | None = None
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 3
    # Records held out of the training data to compute an evaluation loss on (LLM-Adapters: 120); 0: none.
    # With a split, the checkpoint of lowest evaluation loss becomes the final adapter.
    val_set_size: int = 0
    eval_steps: int | None = None  # None: at every checkpoint (save_steps); always at the last step too
    gradient_checkpointing: bool = False
    # Where the Trainer's logs (losses, and each DLS selection) go: transformers' integration names, or none.
    report_to: tuple[str, ...] = ("tensorboard",)

    def __post_init__(self):
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        self.report_to = (self.report_to,) if isinstance(self.report_to, str) else tuple(self.report_to)
        known = ("none", *sorted(INTEGRATION_TO_CALLBACK))
        _check(all(name in known for name in self.report_to) and ("none" not in self.report_to or len(self.report_to) == 1),
               f"training.report_to must be 'none' or a list of {', '.join(known[1:])}; got {list(self.report_to)}")
        for name in ("batch_size", "micro_batch_size", "cutoff_len", "logging_steps", "save_steps", "save_total_limit"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1, f"training.{name} must be a positive integer, got {value!r}")
        _check(self.cutoff_len >= 2, f"training.cutoff_len must be at least 2, got {self.cutoff_len} (a sequence of one token "
               "has nothing to predict, and the loss would be NaN); LLM-Adapters uses 256")
        _check(self.batch_size % self.micro_batch_size == 0,
               f"training.batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})")
        _check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"training.lr must be positive, got {self.lr!r}")
        _check(self.max_samples is None or self.max_samples >= 1, f"training.max_samples must be >= 1, got {self.max_samples!r}")
        _check(self.max_steps is None or (_is_int(self.max_steps) and self.max_steps >= 1),
               f"training.max_steps must be a positive integer, got {self.max_steps!r}; leave it out (null) to train "
               "for training.epochs epochs")
        _check(_is_int(self.val_set_size) and self.val_set_size >= 0,
               f"training.val_set_size must be a whole number of records (0 for no validation), got {self.val_set_size!r}")
        _check(self.eval_steps is None or (_is_int(self.eval_steps) and self.eval_steps >= 1),
               f"training.eval_steps must be a positive integer, got {self.eval_steps!r}; leave it out (null) to "
               "evaluate at every checkpoint")
        # Only a checkpointed evaluation can be reloaded as the best adapter, so every checkpoint needs one.
        _check(not self.val_set_size or self.save_steps % (self.eval_steps or self.save_steps) == 0,
               f"training.save_steps ({self.save_steps}) must be a multiple of training.eval_steps ({self.eval_steps}): "
               "the best checkpoint is chosen by the evaluation loss of each checkpoint. Set eval_steps to a divisor "
               "of save_steps, or leave it out to evaluate at every checkpoint")
        _check(self.max_samples is None or self.val_set_size < self.max_samples, val_set_size_message(
            self.val_set_size, self.max_samples, "training.max_samples"))
        _check(isinstance(self.epochs, (int, float)) and not isinstance(self.epochs, bool) and math.isfinite(self.epochs)
               and self.epochs > 0, f"training.epochs must be a positive number, got {self.epochs!r}")


@dataclass
class ExperimentConfig:
    model: str
    data: str
    output_dir: str
    method: str = "rosa"
    data_dir: str | None = None
    seed: int = 42
    precision: str = "auto"
    quantize: str | None = None
    match_params: str | None = None
    trust_remote_code: bool = False
    rosa: RoSAConfig = field(default_factory=RoSAConfig)
    dls: DLSConfig = field(default_factory=DLSConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def __post_init__(self):
        _check(self.method in METHODS, f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_choice(self.quantize, self.method)
        for name in ("model", "data", "output_dir"):
            _check(isinstance(getattr(self, name), str) and getattr(self, name), f"{name} is required (a non-empty string)")

    @property
    def uses_dls(self) -> bool:
        return self.method in ("rosa", "lora-dls")

    @property
    def learning_rate(self) -> float:
        return self.training.lr if self.training.lr is not None else METHOD_LEARNING_RATES[self.method]

    def resolved(self) -> "ExperimentConfig":
        """A copy with the learning rate written out, as stored in the run directory."""
        return dataclasses.replace(self, training=dataclasses.replace(self.training, lr=self.learning_rate))

    def to_dict(self) -> dict[str, Any]:
        return _plain({
            f.name: _settings(getattr(self, f.name)) if f.name in SECTIONS else getattr(self, f.name)
            for f in dataclasses.fields(self)
        })

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        data = dict(data)
        _reject_unknown(data, cls, "")
        for name, section_cls in SECTIONS.items():
            values = data.get(name) or {}
            _check(isinstance(values, dict), f"'{name}' must be a mapping of fields, got {values!r}")
            _reject_unknown(values, section_cls, f"{name}.")
            values = _floats_from_strings(values, section_cls)
            if name == "dls":
                # One seed drives a run (data order, mix, adapter init, DLS draws) unless DLS's is set.
                values = {"seed": data.get("seed", 42), **values}
            data[name] = section_cls(**values)
        try:
            return cls(**data)
        except TypeError as err:
            raise RoSAConfigError(f"invalid configuration: {err}") from err


SECTIONS = {"rosa": RoSAConfig, "dls": DLSConfig, "lora": LoraSettings, "training": TrainingSettings}


def resolve_field(name: str) -> str:
    """The dotted config field a name means: ``k_ratio`` -> ``dls.k_ratio``; ``seed`` stays top-level.

    Short names save typing in sweeps; a name that two sections share (``alpha``, ``targets``) must be
    written in full, and an unknown one is refused with the list of valid fields.
    """
    top = {f.name for f in dataclasses.fields(ExperimentConfig)} - set(SECTIONS)
    dotted = {f"{section}.{name}" for section, cls in SECTIONS.items() for name in _field_names(cls)}
    if name in top or name in dotted:
        return name
    matches = sorted(d for d in dotted if d.split(".", 1)[1] == name)
    _check(bool(matches), f"unknown config field {name!r}; valid fields: {', '.join(sorted(top | dotted))}")
    _check(len(matches) == 1, f"config field {name!r} is ambiguous: write one of {matches}")
    return matches[0]


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """YAML file (optional) with dotted ``section.field`` overrides applied on top."""
    return ExperimentConfig.from_dict(load_config_data(path, overrides))


def load_config_data(path: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The unvalidated mapping behind :func:`load_config`; ``rosa sweep`` completes it per point."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RoSAConfigError(f"config file {path} does not exist; pass a YAML file (see examples/*.yaml).")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise RoSAConfigError(f"config file {path} is not valid YAML: {err}") from err
        _check(isinstance(data, dict), f"config file {path} must hold a mapping of fields, not {type(data).__name__}")
        training = data.get("training")
        if isinstance(training, dict) and training.get("max_steps") == -1:
            training["max_steps"] = None  # how the config.yaml of earlier runs says "not set"
    return with_assignments(data, overrides)


def with_assignments(data: dict[str, Any], assignments: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with dotted ``section.field`` assignments applied."""
    data = copy.deepcopy(data)
    for dotted, value in assignments.items():
        target = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            _check(isinstance(target, dict), f"cannot set {dotted}: '{part}' is not a section")
        target[leaf] = value
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """``training.lr=1e-3`` -> ("training.lr", 0.001); values are read as YAML scalars or lists."""
    key, sep, value = text.partition("=")
    _check(bool(sep) and bool(key.strip()), f"--set expects section.field=value, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def config_yaml(config: ExperimentConfig) -> bytes:
    return yaml.safe_dump(config.to_dict(), sort_keys=False).encode()


def _field_names(cls: type) -> tuple[str, ...]:
    """The fields a run's config sets: a PEFT config's settings only, not PEFT's bookkeeping."""
    return getattr(cls, "SETTINGS", None) or tuple(f.name for f in dataclasses.fields(cls))


def _settings(section: Any) -> dict[str, Any]:
    return {name: getattr(section, name) for name in _field_names(type(section))}


def _reject_unknown(values: dict, cls: type, prefix: str) -> None:
    known = set(_field_names(cls))
    unknown = sorted(set(values) - known)
    _check(not unknown, f"unknown config field(s) {[prefix + u for u in unknown]}; valid: {sorted(prefix + k for k in known)}")


def _floats_from_strings(values: dict, cls: type) -> dict:
    """YAML reads ``1e-3`` (no dot) as a string; accept it wherever the field is a float."""
    floats = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("float")}
    out = dict(values)
    for name in floats & set(out):
        if isinstance(out[name], str):
            try:
                out[name] = float(out[name])
            except ValueError as err:
                raise RoSAConfigError(f"{cls.__name__}.{name} must be a number, got {out[name]!r}.") from err
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def val_set_size_message(val_set_size: int, records: int, what: str) -> str:
    """A validation split that would leave nothing to train on."""
    return (f"training.val_set_size ({val_set_size}) must be smaller than the number of records ({records}, {what}): "
            "no record would be left to train on. Lower training.val_set_size (LLM-Adapters holds out 120), or "
            "train on more records")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RoSAConfigError(message + ".")
