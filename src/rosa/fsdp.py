"""RoSA under FSDP2 (``torch.distributed.fsdp.fully_shard``) in a hand-written training loop.

Sharding changes three things for a PEFT adapter, and this module is the answer to each:

- :func:`shard_model` shards every decoder layer, then the root, the layout FSDP2's documentation
  recommends for transformers (one all-gather per layer). RoAE lives inside the attention block, so
  each layer's adapter is sharded with the layer it adapts; DLS needs nothing from here: it reads the
  sharded norm gradients FSDP2 has already averaged, and sums their squares across shards itself.
- parameters become ``DTensor`` shards, which ``save_pretrained`` cannot write: :func:`save_pretrained`
  gathers the adapter's full tensors (only the adapter's, never the frozen base) and process 0 writes the
  usual PEFT directory, loadable without any process group.
- :func:`save_checkpoint` / :func:`load_checkpoint` resume a run: full adapter tensors and full optimizer
  state in safetensors, the step and the DLS selector's and scheduler's state in JSON; no pickle. Written by process 0 as
  one directory that appears whole or not at all; read back on every process, which needs the
  directory on a filesystem every process sees.

Every function here is collective: call it on every process, in the same order.

``accelerate``'s FSDP path (and so ``rosa train`` under ``accelerate launch``) needs GPUs; on CPU, FSDP2
runs through ``torchrun`` with the gloo backend, which is how the tests exercise this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from rosa.architecture import find_decoder_stack
from rosa.dls.selector import DynamicLayerSelector
from rosa.errors import RoSAError
from rosa.serialization import atomic_write_json, read_json_object, staged_directory

ADAPTER_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"
# Separates a parameter's name from its optimizer-state entry (``exp_avg``, ...) in OPTIMIZER_FILE;
# it never occurs in a module path.
_STATE_SEPARATOR = "/"


def shard_model(model: nn.Module, **fully_shard_options: Any) -> nn.Module:
    """Apply ``fully_shard`` to each decoder layer and then to ``model`` itself (in place).

    ``fully_shard_options`` go to every call (``mesh``, ``mp_policy``, ``reshard_after_forward``,
    ...). Shard after ``get_rosa_model`` / ``get_peft_model``, and before building the optimizer, which
    must hold the sharded parameters.
    """
    _require_process_group()
    for layer in find_decoder_stack(model).layers:
        fully_shard(layer, **fully_shard_options)
    fully_shard(model, **fully_shard_options)
    return model


def adapter_state_dict(model: nn.Module, adapter_name: str = "default", save_embedding_layers: str | bool = "auto") -> dict[str, torch.Tensor]:
    """The adapter's tensors, full size, on every process, keyed by ``model.state_dict()``'s names.

    Which tensors belong to the adapter is PEFT's own choice (``get_peft_model_state_dict``, with
    ``save_embedding_layers`` as ``save_pretrained`` takes it), so it is what ``save_pretrained`` would
    save; only those are gathered. Process 0 chooses and tells the others, so every process gathers the
    same tensors in the same order even where PEFT's choice could differ between them.
    """
    state = model.state_dict()
    names = _on_main_process(lambda: _adapter_names(model, state, adapter_name, save_embedding_layers), "choose the adapter's tensors")
    return {name: _full(state[name]) for name in names}


def _adapter_names(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str,
                   save_embedding_layers: str | bool = "auto") -> list[str]:
    """The names in ``state`` (``model.state_dict()``) of the tensors PEFT saves for the adapter; PEFT
    renames them, so they are found by identity."""
    chosen = get_peft_model_state_dict(model, state_dict=state, adapter_name=adapter_name,
                                       save_embedding_layers=save_embedding_layers)
    ids = {id(tensor) for tensor in chosen.values()}
    names = [name for name, tensor in state.items() if id(tensor) in ids]
    if len(names) != len(chosen):
        raise RoSAError(f"could not match {len(chosen) - len(names)} of the adapter's {len(chosen)} tensors to the model's "
                        f"state dict (this peft release copies them); rosa.fsdp supports the peft releases rosa is tested with.")
    return names


def save_pretrained(model: nn.Module, save_directory: str | Path, adapter_name: str = "default", **kwargs: Any) -> None:
    """``model.save_pretrained(save_directory)`` for a sharded PEFT model (RoSA, LoRA, ...).

    Every process gathers; process 0 writes the ordinary adapter directory (``adapter_config.json`` and
    ``adapter_model.safetensors``); the others wait until it is written, and raise if it failed.
    """
    _require_process_group()
    state = adapter_state_dict(model, adapter_name, kwargs.get("save_embedding_layers", "auto"))
    _on_main_process(lambda: model.save_pretrained(str(save_directory), state_dict=state, selected_adapters=[adapter_name],
                                                   **kwargs), "write")


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int,
                    selector: DynamicLayerSelector | None = None, scheduler: Any = None, adapter_name: str = "default") -> None:
    """What :func:`load_checkpoint` needs to continue after ``step`` optimizer steps: the adapter, the
    optimizer's state, the DLS selector's and the learning-rate scheduler's. The data order and any
    random state of your loop are yours to restore. An existing ``directory`` is replaced only once the
    new one is complete."""
    _require_process_group()
    adapter = adapter_state_dict(model, adapter_name)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def write() -> None:
        tensors, scalars = _flatten_optimizer_state(optimizer_state["state"])
        with staged_directory(Path(directory)) as staged:
            save_file({name: tensor.detach().cpu().contiguous() for name, tensor in adapter.items()}, staged / ADAPTER_FILE)
            save_file(tensors, staged / OPTIMIZER_FILE)
            atomic_write_json(staged / STATE_FILE, {
                "step": step,
                "world_size": dist.get_world_size(),
                "optimizer_scalars": scalars,
                "param_groups": optimizer_state["param_groups"],
                "dls": selector.state_dict() if selector is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
            })

    _on_main_process(write, "write")


def load_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    selector: DynamicLayerSelector | None = None, scheduler: Any = None, adapter_name: str = "default") -> int:
    """Restore what :func:`save_checkpoint` wrote into the sharded ``model``, ``optimizer``,
    ``selector`` and ``scheduler``; returns the step to continue from. The number of processes may differ from the run
    that wrote it (the tensors are stored full size)."""
    _require_process_group()
    directory = Path(directory)
    missing = [name for name in (ADAPTER_FILE, OPTIMIZER_FILE, STATE_FILE) if not (directory / name).is_file()]
    if missing:
        raise RoSAError(f"{directory} is not a rosa FSDP checkpoint: {', '.join(missing)} missing. "
                        "Pass a directory written by rosa.fsdp.save_checkpoint.")
    state = read_json_object(directory / STATE_FILE)
    for what, saved, given in (("a DLS selector", state["dls"], selector), ("a learning-rate scheduler", state.get("scheduler"), scheduler)):
        if (saved is None) != (given is None):
            raise RoSAError(f"{directory} was saved {'without' if saved is None else 'with'} {what}; resume with the same setup.")
    adapter = load_file(directory / ADAPTER_FILE)
    state_dict = model.state_dict()
    expected = set(_on_main_process(lambda: _adapter_names(model, state_dict, adapter_name), "choose the adapter's tensors"))
    if set(adapter) != expected:
        raise RoSAError(f"{directory} holds another adapter than this model's ({len(adapter)} tensors saved, "
                        f"{len(expected)} in the model, {len(set(adapter) ^ expected)} names differ); resume with the same model and config.")
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, adapter, options=options)
    optimizer_state = {"state": _unflatten_optimizer_state(load_file(directory / OPTIMIZER_FILE), state["optimizer_scalars"]),
                       "param_groups": state["param_groups"]}
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    if selector is not None:
        selector.load_state_dict(state["dls"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def _on_main_process(work: Callable[[], Any], what: str) -> Any:
    """``work()`` run by process 0 only, its result handed to every process. If it raised, every process
    raises with the reason, instead of the others waiting in the next collective until its timeout (or
    forever, outside torchrun)."""
    outcome: list[Any] = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            outcome[0] = (True, work())
        except Exception as err:  # re-raised below, on every process
            error, outcome[0] = err, (False, f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(outcome, src=0)
    if error is not None:
        raise error
    succeeded, value = outcome[0]
    if not succeeded:
        raise RoSAError(f"process 0 failed to {what}: {value}")
    return value


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _flatten_optimizer_state(state: dict[str, dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``{parameter: {entry: value}}`` as one flat dict of tensors for safetensors, plus the non-tensor
    entries (plain numbers some optimizers keep) for JSON."""
    tensors, scalars = {}, {}
    for parameter, entries in state.items():
        for entry, value in entries.items():
            key = f"{parameter}{_STATE_SEPARATOR}{entry}"
            if isinstance(value, torch.Tensor):
                tensors[key] = _full(value).detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, scalars


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        parameter, entry = key.rsplit(_STATE_SEPARATOR, 1)
        state.setdefault(parameter, {})[entry] = value
    return state


def _require_process_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RoSAError("rosa.fsdp needs a process group: launch with torchrun and call "
                        "torch.distributed.init_process_group() first.")
