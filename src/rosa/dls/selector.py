"""Dynamic Layer Selection (spec section 3): train only the k layers that matter most right now.

Step numbering: ``step()`` is called once per optimizer step, after the last backward of that step
and before ``optimizer.step()``. Steps ``0 .. warmup-1`` train every layer. The backward of step
``warmup-1 + m*interval`` is a *scoring* step: its norm-weight gradients score the layers, and the
selection made from them applies from the next step on. So each selection is used for exactly the
steps whose backward ran under it, in every mode.

Norm weights get ``requires_grad`` only during scoring steps, and their gradients are diverted
(by a post-accumulate hook) into the selector's own buffers and removed from ``.grad``. They
therefore never reach gradient clipping or the optimizer, whichever optimizer holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from rosa.architecture import DecoderStack, block_norms, find_decoder_stack
from rosa.config import DLSConfig, RoSAConfig
from rosa.errors import RoSAError


@dataclass
class LayerGroup:
    index: int
    adapter_parameters: list[nn.Parameter]
    norm_weights: list[nn.Parameter]


def _layer_groups(model: nn.Module, stack: DecoderStack, norm_names: tuple[str, ...] | None) -> list[LayerGroup]:
    groups = [LayerGroup(i, [], []) for i in range(len(stack))]
    for name, parameter in model.named_parameters():
        index = stack.layer_of(name)
        if index is not None and parameter.requires_grad:
            groups[index].adapter_parameters.append(parameter)
    for group in groups:
        norms = block_norms(stack.layers[group.index], norm_names)
        group.norm_weights = [norm.weight for norm in norms.values()]
    if not any(group.adapter_parameters for group in groups):
        raise RoSAError(
            "DynamicLayerSelector found no trainable parameter inside the decoder layers. Create it after "
            "get_rosa_model(...) or peft.get_peft_model(...), before freezing anything yourself."
        )
    return groups


def _layer_norms(grads: list[list[torch.Tensor]]) -> list[float]:
    """Each layer's norm-weight gradient norm, the same on every process.

    Under data parallelism (DDP) each process holds the gradients of its own micro-batches: they are
    averaged first, as DDP averages parameter gradients, so the scores are those of the global batch.
    Under FSDP2 they are ``DTensor`` shards FSDP has already averaged: each process sums the squares of
    its shard and one all-reduce adds the shards up, with no second averaging.
    """
    if any(isinstance(grad, DTensor) for layer in grads for grad in layer):
        return _sharded_norms(grads)
    grads = _averaged_over_processes(grads)
    return [float(torch.sqrt(sum(grad.pow(2).sum() for grad in layer))) for layer in grads]


def _averaged_over_processes(grads: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return grads
    world = torch.distributed.get_world_size()
    if world == 1:
        return grads
    flat = torch.cat([grad.flatten() for layer in grads for grad in layer])
    torch.distributed.all_reduce(flat)
    pieces = iter(torch.split(flat / world, [grad.numel() for layer in grads for grad in layer]))
    return [[next(pieces).view_as(grad) for grad in layer] for layer in grads]


def _sharded_norms(grads: list[list[torch.Tensor]]) -> list[float]:
    reference = grads[0][0]
    if not all(isinstance(grad, DTensor) and grad.device_mesh == reference.device_mesh
               and grad.placements == reference.placements for layer in grads for grad in layer):
        raise RoSAError("DLS found norm weights sharded in different ways (or some not at all); shard every "
                        "decoder layer the same way, for example with rosa.fsdp.shard_model.")
    squares = torch.stack([sum(grad.to_local().float().pow(2).sum() for grad in layer) for layer in grads])
    for mesh_dim, placement in enumerate(reference.placements):
        if placement.is_shard():
            torch.distributed.all_reduce(squares, group=reference.device_mesh.get_group(mesh_dim))
        elif not placement.is_replicate():
            raise RoSAError(f"DLS cannot score norm gradients placed as {placement}; expected shards or replicas.")
    return [float(value) for value in squares.sqrt()]


def _detach_hidden(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: the block's hidden-state input without its autograd history, so backward
    ends here. ``requires_grad`` is kept, since reentrant checkpointing needs an input that requires
    grad to produce any parameter gradient inside the block."""
    if args and isinstance(args[0], torch.Tensor):
        hidden = args[0]
        return (hidden.detach().requires_grad_(hidden.requires_grad), *args[1:]), kwargs
    hidden = kwargs["hidden_states"]
    return args, {**kwargs, "hidden_states": hidden.detach().requires_grad_(hidden.requires_grad)}


def _record_on_adapter(model: nn.Module, config: DLSConfig) -> None:
    """A RoSA adapter trained with DLS says so in its saved config and model card."""
    adapter_config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    if isinstance(adapter_config, RoSAConfig):
        adapter_config.dls = config.to_dict()


class DynamicLayerSelector:
    """Chooses which decoder layers train, from LayerNorm-weight gradient norms.

    Works on RoSA and PEFT LoRA/DoRA models alike: a layer's adapter
    parameters are the trainable parameters inside its decoder block when the selector is created.
    """

    def __init__(self, model: nn.Module, config: DLSConfig | None = None):
        self.config = config or DLSConfig()
        stack = find_decoder_stack(model)
        self._layers = stack.layers
        self.groups = _layer_groups(model, stack, self.config.norm_names)
        self.n_layers = len(self.groups)
        self.k = self.config.k(self.n_layers)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.step_count = 0
        self.selected: list[int] = list(range(self.n_layers))
        self.history: list[dict] = []
        self._norm_grads: dict[int, list[torch.Tensor | None]] = {}
        self._hooks = []
        for group in self.groups:
            for slot, weight in enumerate(group.norm_weights):
                weight.requires_grad_(True)  # hooks can only be registered on such tensors
                self._hooks.append(weight.register_post_accumulate_grad_hook(self._divert(group.index, slot)))
        # Cutting the graph below a layer is only safe when nothing before the decoder layers trains.
        self._can_cut = not any(p.requires_grad for name, p in model.named_parameters() if stack.layer_of(name) is None)
        self._cut = None
        self._prepare(self.step_count)
        _record_on_adapter(model, self.config)

    # -- schedule -------------------------------------------------------------------------------
    def is_scoring_step(self, step: int) -> bool:
        """Whether the backward of optimizer step ``step`` produces the scores of a selection."""
        after = step + 1 - self.config.warmup
        return after >= 0 and after % self.config.interval == 0

    def _divert(self, index: int, slot: int):
        def hook(weight: torch.Tensor) -> None:
            grads = self._norm_grads.setdefault(index, [None] * len(self.groups[index].norm_weights))
            grads[slot] = weight.grad.detach().float() if grads[slot] is None else grads[slot] + weight.grad.float()
            weight.grad = None

        return hook

    def _prepare(self, step: int) -> None:
        """Set ``requires_grad`` for the coming step's forward/backward."""
        scoring = self.is_scoring_step(step)
        for group in self.groups:
            for weight in group.norm_weights:
                weight.requires_grad_(scoring)
            if self.config.mode == "freeze":
                active = group.index in self.selected
                for parameter in group.adapter_parameters:
                    parameter.requires_grad_(active)
        if self.config.mode == "freeze":
            self._cut_below(0 if scoring else min(self.selected))

    def _cut_below(self, layer: int | None) -> None:
        """Freeze mode: backward stops at ``layer``, the lowest one that needs a gradient this step.

        Autograd stops there by itself when nothing below requires grad, but transformers'
        ``gradient_checkpointing_enable`` (and PEFT) make the embedding output require grad, which
        would drag every backward down to layer 0. Detaching ``layer``'s input (a forward pre-hook)
        stops it whatever set that flag. ``None`` removes the cut.
        """
        if self._cut is not None:
            self._cut.remove()
            self._cut = None
        if layer is not None and self._can_cut:
            self._cut = self._layers[layer].register_forward_pre_hook(_detach_hidden, with_kwargs=True)

    # -- the step -------------------------------------------------------------------------------
    def step(self) -> None:
        """Call after backward and before ``optimizer.step()``, once per optimizer step."""
        self._mask_unselected()
        if self.is_scoring_step(self.step_count):
            self._select(self._scores())
        self._norm_grads.clear()
        self.step_count += 1
        self._prepare(self.step_count)

    def _mask_unselected(self) -> None:
        chosen = set(self.selected)
        for group in self.groups:
            if group.index in chosen:
                continue
            for parameter in group.adapter_parameters:
                if self.config.mode == "zero":
                    parameter.grad = torch.zeros_like(parameter)
                else:
                    parameter.grad = None

    def _scores(self) -> list[float]:
        missing = [g.index for g in self.groups if self._norm_grads.get(g.index) is None or None in self._norm_grads[g.index]]
        if missing:
            raise RoSAError(
                f"DLS scoring step {self.step_count}: no norm-weight gradient for layers {missing}. Call "
                "selector.step() once per optimizer step, after loss.backward() and before optimizer.step()."
            )
        return _layer_norms([self._norm_grads[g.index] for g in self.groups])

    def _select(self, scores: list[float]) -> None:
        exploit = bool(torch.rand((), generator=self.generator) < self.config.p_exploit)
        if exploit:
            order = sorted(range(self.n_layers), key=lambda i: (-scores[i], i))
            chosen = order[: self.k]
        else:
            chosen = torch.randperm(self.n_layers, generator=self.generator)[: self.k].tolist()
        self.selected = sorted(chosen)
        self.history.append(
            {
                "step": self.step_count + 1,
                "scored_at_step": self.step_count,
                "scores": scores,
                "selected": list(self.selected),
                "kind": "exploit" if exploit else "explore",
            }
        )

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable state; restoring it makes a resumed run select exactly as an uninterrupted one."""
        return {
            "config": self.config.to_dict(),
            "n_layers": self.n_layers,
            "step_count": self.step_count,
            "selected": list(self.selected),
            "history": [dict(record) for record in self.history],
            "generator_state": self.generator.get_state().tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("n_layers") != self.n_layers or state.get("config") != self.config.to_dict():
            raise RoSAError(
                "DLS state was saved for another setup (layers or DLSConfig differ): saved "
                f"{state.get('n_layers')} layers / {state.get('config')}, now {self.n_layers} / "
                f"{self.config.to_dict()}. Resume with the same model and DLS settings."
            )
        self.step_count = int(state["step_count"])
        self.selected = [int(i) for i in state["selected"]]
        self.history = [dict(record) for record in state["history"]]
        self.generator.set_state(torch.tensor(state["generator_state"], dtype=torch.uint8))
        self._norm_grads.clear()
        self._prepare(self.step_count)

    def remove(self) -> None:
        """Detach from the model: remove hooks, freeze norms, make every adapter parameter trainable."""
        for handle in self._hooks:
            handle.remove()
        self._cut_below(None)
        for group in self.groups:
            for weight in group.norm_weights:
                weight.requires_grad_(False)
            for parameter in group.adapter_parameters:
                parameter.requires_grad_(True)
