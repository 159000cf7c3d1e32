"""The paper's Figure 1 on any model: how strongly each head dimension of the RoPE-rotated query and
key states is activated, per layer, beside that dimension's rotary frequency in that layer.

Definition (written into every report as ``definition``). Let ``Z[t, h, d]`` be the query (or key)
state of token ``t``, head ``h``, head dimension ``d`` as the layer's rotary function hands it to
attention: rotated, and modulated by RoAE when an adapter is attached. For layer ``l``::

    strength[l][d]    = mean over real tokens t of sqrt(sum over heads h of Z[t, h, d]^2)
    per_head[l][h][d] = mean over real tokens t of |Z[t, h, d]|

The L2 norm over heads gives one number per dimension whatever the head count, and keys are
measured over the key heads the rotary function receives (fewer than the query heads under GQA).
Padding tokens (``attention_mask == 0``) are excluded and prompts are padded on the right, so every
real token keeps its position and its causal context: a batched measurement equals one prompt at a
time.

Which dimensions rotate together and how fast is measured per layer from the layer's own rotary
function and rotary embedding (:func:`rosa.roae.inject.base_geometry`), not assumed: dimension ``d``
of layer ``l`` rotates at ``frequency[l][d]`` radians per position, shared with its pair partner
(``d`` and ``d + n/2`` in the rotate-half layout, ``2i`` and ``2i + 1`` interleaved, as measured),
and is null when RoPE leaves it alone (partial rotary). Layers may differ (Gemma 3's sliding and
full-attention layers have their own frequencies). Dimensions index the states the rotary function
returns: a family that splits the head before RoPE (Phi, and DeepSeek-V3's decoupled rotary part)
passes only those dimensions through it, so the others are not observed and are null past the
layer's observed width.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rosa.architecture import find_decoder_stack, text_config
from rosa.config import RoSAConfig
from rosa.data import load_dataset
from rosa.data.prompts import eval_prompt
from rosa.errors import RoSAError
from rosa.roae.inject import BaseGeometry, base_geometry
from rosa.roae.rotary_hook import observe_rotary_states
from rosa.serialization import atomic_write_json, atomic_write_png

STATES = ("query", "key")
DEFINITION = (
    "For layer l and head dimension d, strength = mean over real (non-padding) tokens t of "
    "sqrt(sum over heads h of Z[t,h,d]^2), where Z is the query or key state as the layer's rotary "
    "function hands it to attention (after RoAE too when an adapter is attached); key states are measured "
    "over the key heads it receives. per_head[l][h][d] = mean over real tokens t of |Z[t,h,d]|. "
    "frequency[l][d]: the angle per position (radians) of the rotary pair holding dimension d in layer l, "
    "pairs and angles measured from that layer's rotary function and embedding; null for dimensions RoPE "
    "does not rotate. low_frequency[l][d]: d belongs to one of the layer's round(r_low * pairs) "
    "lowest-frequency pairs. Null strengths: dimensions the layer's rotary function is not given (not observed)."
)


class _Sums:
    """Running sums over real tokens for one model: float64, so summation order barely matters."""

    def __init__(self) -> None:
        self.norm: dict[tuple[str, int], torch.Tensor] = {}
        self.abs: dict[tuple[str, int], torch.Tensor] = {}
        self.mask: torch.Tensor | None = None  # the current batch's attention mask, [batch, seq] bool
        self.tokens = 0

    def observe(self, layer: int, q: torch.Tensor, k: torch.Tensor, heads_axis: int) -> None:
        for name, state in zip(STATES, (q, k)):
            z = state.detach().movedim(heads_axis, 2)[self.mask].float()  # [real tokens, heads, dim]
            norm = z.pow(2).sum(dim=1).sqrt().sum(dim=0).double()
            absolute = z.abs().sum(dim=0).double()
            key = (name, layer)
            self.norm[key] = self.norm[key] + norm if key in self.norm else norm
            self.abs[key] = self.abs[key] + absolute if key in self.abs else absolute


def load_prompts(spec: str, data_dir: str | None = None, limit: int | None = 64) -> list[str]:
    """A ``.txt`` file (one prompt per non-empty line) or anything ``load_dataset`` accepts, in the
    evaluation prompt format so the states are those the benchmarks produce."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise RoSAError(f"prompt file {path} does not exist.")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        prompts = [eval_prompt(r["instruction"], r.get("input", "")) for r in load_dataset(spec, data_dir)]
    prompts = prompts if limit is None else prompts[:limit]
    if not prompts:
        raise RoSAError(f"{spec} holds no prompts.")
    return prompts


def activation_strength(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    batch_size: int = 8,
    max_length: int = 256,
    r_low: float = 0.25,
) -> dict[str, Any]:
    """Measure query/key activation strength per layer and head dimension (see the module docstring)."""
    if not prompts:
        raise RoSAError("activation_strength needs at least one prompt.")
    if batch_size < 1 or max_length < 1:
        raise RoSAError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}.")
    geometry = base_geometry(model, RoSAConfig(r_low=r_low))  # before the forward passes: refusals come first
    batches = _tokenized(tokenizer, prompts, batch_size, max_length, next(model.parameters()).device)
    sums, layers = _measure(model, batches)
    return _report(model, geometry, sums, layers, len(prompts), r_low)


def _measure(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[_Sums, list[int]]:
    """Run ``batches`` (``input_ids`` and ``attention_mask``) through ``model``, summing its RoPE states."""
    sums = _Sums()
    with torch.inference_mode(), observe_rotary_states(model, sums.observe) as layers:
        for batch in batches:
            sums.mask = batch["attention_mask"].bool()
            sums.tokens += int(sums.mask.sum())
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    missing = [i for i in layers if ("query", i) not in sums.norm]
    if missing:
        raise RoSAError(f"layers {missing} never applied RoPE during the forward passes; cannot measure them.")
    return sums, layers


def _tokenized(tokenizer: Any, prompts: list[str], batch_size: int, max_length: int, device: torch.device) -> Iterator[dict]:
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
            max_length=max_length, padding_side="right",  # right: real tokens keep their positions
        )
        yield {name: batch[name].to(device) for name in ("input_ids", "attention_mask")}


def _config_head_dim(model: nn.Module) -> int:
    text = text_config(model)
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def _rotary_rows(geometry: BaseGeometry, layers: list[int], width: int) -> dict[str, Any]:
    """Each measured layer's frequency and low-frequency flag per dimension, ``width`` wide."""
    frequency, low_frequency = [], []
    for layer in layers:
        group = geometry.group_of(layer)
        layout = group.rotary.layout
        low = set(group.low_frequency_dims)
        frequency.append(layout.dim_frequencies() + [None] * (width - layout.dim))
        low_frequency.append([d in low for d in range(width)])
    return {"frequency": frequency, "low_frequency": low_frequency}


def _padded(values: torch.Tensor, width: int) -> list:
    """Values per dimension, null for the dimensions past what was observed."""
    rows = values.tolist()
    if values.ndim == 1:
        return rows + [None] * (width - len(rows))
    return [row + [None] * (width - len(row)) for row in rows]


def _report(
    model: nn.Module, geometry: BaseGeometry, sums: _Sums, layers: list[int], n_prompts: int, r_low: float
) -> dict[str, Any]:
    if sums.tokens == 0:
        raise RoSAError("the prompts produced no tokens to measure.")
    measured = sorted(i for group in geometry.rotary for i in group.layers)
    if measured != layers:
        raise RoSAError(f"RoPE was observed in layers {layers}, but the rotary geometry was measured for {measured}.")
    observed = [sums.norm[("query", i)].numel() for i in layers]
    for layer, width in zip(layers, observed):
        if width != geometry.group_of(layer).rotary.layout.dim:
            raise RoSAError(f"layer {layer}: RoPE states have {width} dims, but its rotary layout was measured on "
                            f"{geometry.group_of(layer).rotary.layout.dim}.")
    head_dim = max(_config_head_dim(model), *observed)
    text = text_config(model)
    n_layers = len(find_decoder_stack(model))
    report: dict[str, Any] = {
        "model": getattr(text, "_name_or_path", "") or text.model_type,
        "definition": DEFINITION,
        "n_layers": n_layers,
        "layers": layers,
        "nope_layers": [i for i in range(n_layers) if i not in layers],
        "head_dim": head_dim,
        "r_low": r_low,
        "rotary": [group.to_dict() for group in geometry.rotary],
        **_rotary_rows(geometry, layers, head_dim),
        "observed_dims": observed,
        "prompts": n_prompts,
        "tokens": sums.tokens,
    }
    for name in STATES:
        report[name] = [_padded(sums.norm[(name, i)] / sums.tokens, head_dim) for i in layers]
        report[f"{name}_per_head"] = [_padded(sums.abs[(name, i)] / sums.tokens, head_dim) for i in layers]
        report[f"{name}_heads"] = sums.abs[(name, layers[0])].shape[0]
    return report


def low_frequency_contrast(report: dict[str, Any], state: str) -> list[tuple[int, float, float]]:
    """Per layer: mean strength of the low-frequency dims and of the other observed dims.

    This is the paper's claim in two numbers per layer: the low-frequency dims carry larger values.
    Each layer is split by its own low-frequency flags (``report["low_frequency"][row]``).
    """
    rows = []
    for layer, values, low in zip(report["layers"], report[state], report["low_frequency"]):
        low_values = [v for v, is_low in zip(values, low) if is_low and v is not None]
        other = [v for v, is_low in zip(values, low) if not is_low and v is not None]
        rows.append((layer, sum(low_values) / len(low_values), sum(other) / len(other) if other else float("nan")))
    return rows


def layer_ranges(layers: Iterable[int]) -> str:
    """``0-3, 5, 7-9``: many layer indices in a short line."""
    parts, run = [], []
    for index in [*layers, None]:
        if run and (index is None or index != run[-1] + 1):
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = []
        if index is not None:
            run.append(index)
    return ", ".join(parts)


def save_activation_report(report: dict[str, Any], output_dir: str | Path) -> list[Path]:
    """Write ``activations.json`` and one heatmap per state; returns the paths written."""
    from rosa.analyze.plots import strength_heatmap

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "activations.json"]
    atomic_write_json(paths[0], report, sort_keys=False)
    for state in STATES:
        paths.append(output_dir / f"{state}_strength.png")
        atomic_write_png(paths[-1], strength_heatmap(report, state), dpi=150)
    return paths
