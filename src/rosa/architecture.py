"""Find the parts of a Hugging Face causal LM that RoAE and DLS act on.

Both work from module structure rather than per-family tables, so a PEFT-wrapped model, a
RoSA-wrapped model and a bare ``transformers`` model are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rosa.errors import UnsupportedModelError


def text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class DecoderStack:
    """The decoder blocks of a model and the dotted name of the list that holds them."""

    prefix: str
    layers: nn.ModuleList

    def __len__(self) -> int:
        return len(self.layers)

    def layer_of(self, parameter_name: str) -> int | None:
        """Index of the decoder block a parameter belongs to, from its name alone."""
        head = f"{self.prefix}."
        if not parameter_name.startswith(head):
            return None
        index = parameter_name[len(head) :].split(".", 1)[0]
        return int(index) if index.isdigit() else None


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """The ``nn.ModuleList`` with one entry per hidden layer (``model.layers``, ``gpt_neox.layers``...)."""
    n_layers = getattr(text_config(model), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and n_layers:
            if all(any(True for _ in block.parameters()) for block in module):
                return DecoderStack(prefix=name, layers=module)
    raise UnsupportedModelError(
        f"could not find the decoder layers of {type(model).__name__}: no ModuleList with "
        f"config.num_hidden_layers={n_layers} blocks. RoSA supports Hugging Face causal LMs whose "
        "decoder blocks sit in one ModuleList (Llama, Qwen, Mistral, Gemma, Phi, GPT-NeoX, ...)."
    )


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None


def block_norms(block: nn.Module, names: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """The norms that feed a block's attention and feed-forward sub-blocks (spec section 3).

    Llama-style blocks: ``input_layernorm`` and ``post_attention_layernorm``. Blocks with a
    ``pre_feedforward_layernorm`` (Gemma 2) use it instead of the post-attention output norm.
    Blocks with neither pre-norm (OLMo 2 normalises outputs) fall back to all of their norms.
    ``names`` overrides the choice (``DLSConfig.norm_names``).
    """
    children = {name: child for name, child in block.named_children() if _is_norm(child)}
    if names is not None:
        missing = [n for n in names if n not in children]
        if missing:
            raise UnsupportedModelError(
                f"norm(s) {missing} not found in {type(block).__name__}; it has {sorted(children)}. "
                "Fix DLSConfig.norm_names."
            )
        return {n: children[n] for n in names}
    chosen = {}
    if "input_layernorm" in children:
        chosen["input_layernorm"] = children["input_layernorm"]
    ffn_norm = "pre_feedforward_layernorm" if "pre_feedforward_layernorm" in children else "post_attention_layernorm"
    if ffn_norm in children:
        chosen[ffn_norm] = children[ffn_norm]
    if not chosen:
        chosen = children
    if not chosen:
        raise UnsupportedModelError(
            f"{type(block).__name__} has no norm module with a weight, so DLS cannot score it. "
            "Pass DLSConfig(norm_names=...) naming the block's norm modules."
        )
    return chosen
