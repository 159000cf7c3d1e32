"""The model card (``README.md``) of a saved RoSA adapter: what a Hub visitor needs to use and trust it.

PEFT writes its own card first (library, tags, base model, PEFT version); the RoSA section is then
added to it, or replaced when the adapter is saved again, so both survive and nothing is duplicated.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from rosa.version import __version__

CARD_NAME = "README.md"
BEGIN, END = "<!-- rosa:begin -->", "<!-- rosa:end -->"
CITATION = """@inproceedings{pan2026rosa,
  title     = {RoSA: Enhancing Parameter-Efficient Fine-Tuning via RoPE-aware Selective Adaptation in Large Language Models},
  author    = {Pan and Wang and Zhou and Cheng and Jia and Zhao},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2026},
  note      = {arXiv:2511.21733}
}"""


def trainable_parameters(config) -> int:
    """RoAE's parameter count, from the settings and the recorded geometry alone: per adapted layer and
    target, ``A`` (hidden x rank) and ``B`` (rank x heads * low-frequency dims)."""
    geometry = config.base_geometry
    total = 0
    for group in geometry["rotary"]:
        layers = [i for i in group["layers"] if config.layers is None or i in config.layers]
        for target in config.targets:
            heads = group["query_heads" if target == "q" else "key_heads"]
            per_layer = config.rank * geometry["hidden_size"] + config.rank * heads * len(group["low_frequency_dims"])
            total += per_layer * len(layers)
    return total


def _section(config) -> str:
    geometry = config.base_geometry or {}
    base = config.base_model_name_or_path or "(not recorded)"
    settings = "\n".join(f"| `{name}` | `{value}` |" for name, value in config.settings().items())
    lines = [
        BEGIN,
        "## RoSA adapter",
        "",
        f"A **RoSA** adapter (RoPE-aware Selective Adaptation, Pan et al., AAAI 2026) for `{base}`, saved by "
        f"rosa {__version__}. RoAE rescales the lowest-frequency rotary dimensions of the attention "
        f"{' and '.join({'q': 'queries', 'k': 'keys'}[t] for t in config.targets)} after RoPE, by a low-rank "
        "function of each token's hidden state; it cannot be merged into the base weights.",
        "",
        f"- base model: `{base}` ({geometry.get('model_type', '?')}, {geometry.get('num_hidden_layers', '?')} layers, "
        f"hidden size {geometry.get('hidden_size', '?')})"
        + (f"; GGUF file SHA-256 `{geometry['gguf_sha256']}`" if geometry.get("gguf_sha256") else ""),
        f"- trainable parameters: {trainable_parameters(config):,d}" if geometry else "- trainable parameters: unknown",
        "",
        "| RoAE setting | value |",
        "| --- | --- |",
        settings,
        "",
    ]
    if config.dls:
        lines += [
            "Trained with Dynamic Layer Selection (DLS):",
            "",
            "| DLS setting | value |",
            "| --- | --- |",
            *(f"| `{name}` | `{value}` |" for name, value in config.dls.items()),
            "",
        ]
    lines += [
        "Load it with PEFT once `rosa` is installed and imported:",
        "",
        "```python",
        "import rosa  # registers the RoSA method with PEFT",
        "from peft import AutoPeftModelForCausalLM",
        "",
        'model = AutoPeftModelForCausalLM.from_pretrained("<this repository or directory>")',
        "```",
        "",
        "### Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        END,
    ]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike, config) -> Path:
    path = Path(directory) / CARD_NAME
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = card.data.get("library_name") or "peft"
    card.data["tags"] = sorted({*(card.data.get("tags") or []), "rosa", "peft"})
    if config.base_model_name_or_path and not card.data.get("base_model"):
        card.data["base_model"] = config.base_model_name_or_path
    text = card.text
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + text[text.index(END) + len(END):]
    card.text = _section(config) + "\n\n" + text.strip() + "\n"
    card.save(path)
    return path
