"""Which transformers families RoAE supports, checked by measurement on tiny random models.

    python scripts/rope_coverage.py                      # every causal-LM family -> docs/rope-coverage.md
    python scripts/rope_coverage.py cohere gemma3_text   # just these, printed

For each family a tiny randomly initialised model is built from its config class, and
``get_rosa_model`` is asked to adapt q and k. A refusal is recorded with its message. An accepted
model must then pass three checks against witnesses that do not use rosa's own code:

- identity: logits equal the base model's exactly at initialisation;
- the adapted dimensions: every layer's queries and keys are recorded as the attention kernel
  receives them (``torch.nn.functional.scaled_dot_product_attention``), for one token repeated at
  every position. Repetition keeps every layer's input the same at every position whatever the
  attention weights, so (a) a layer applies RoPE exactly when its recorded states vary with the
  position, (b) raising the model's own ``inv_freq`` entry of pair ``i`` changes exactly pair ``i``'s
  dimensions, which tells the layout without assuming it, and (c) with random adapters on every layer,
  each layer's changed dimensions must be the pairs with the lowest ``inv_freq`` (ties to the higher
  index) and nothing else;
- cached generation equals uncached generation token for token.

The test suite runs :func:`check_family` on the families the project names (tests/test_rope_coverage.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers as T
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from rosa import RoSAConfig, RoSAError, get_rosa_model
from rosa.architecture import find_decoder_stack
from rosa.config import round_half_up

REPO = Path(__file__).resolve().parents[1]
R_LOW = 0.25
VOCAB = 97
SIZES = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, initializer_range=0.2,
    # GPT-style names of the same sizes
    n_embd=64, n_layer=3, n_head=4, n_positions=128, rotary_dim=8,
    # mixtures of experts
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
)
DEFAULT = object()  # in OVERRIDES: leave this size at the config class's default
THREE_LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"]
# Multi-head latent attention: 8 rotary + 8 non-rotary dims per query/key head.
MLA = dict(
    q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, head_dim=8, v_head_dim=16, n_routed_experts=4,
    num_experts_per_tok=2, first_k_dense_replace=1, moe_intermediate_size=32, n_group=1, topk_group=1,
)
# What a family needs beyond SIZES to build a small model of the layout worth checking.
OVERRIDES = {
    "cohere2": dict(layer_types=THREE_LAYER_TYPES, sliding_window=8),
    "exaone4": dict(layer_types=THREE_LAYER_TYPES, sliding_window=8),
    "gemma3_text": dict(layer_types=THREE_LAYER_TYPES, sliding_window=8),
    "olmo3": dict(layer_types=THREE_LAYER_TYPES, sliding_window=8),
    **{family: MLA for family in (
        "deepseek_v2", "deepseek_v3", "deepseek_v32", "glm4_moe_lite", "glm_moe_dsa", "longcat_flash", "minicpm3", "sarvam_mla",
    )},
    "falcon": dict(multi_query=True, new_decoder_architecture=False, num_kv_heads=1),
    "jetmoe": dict(kv_channels=16, num_local_experts=4, num_experts_per_tok=2),
    "phi": dict(partial_rotary_factor=0.5),
    "stablelm": dict(partial_rotary_factor=0.5),
    "persimmon": dict(partial_rotary_factor=0.5),
    "nemotron": dict(partial_rotary_factor=0.5),
    "gpt_neox": dict(rotary_pct=0.5),
    "bamba": dict(attn_layer_indices=[1]),
    "dbrx": dict(
        d_model=64, n_heads=4, n_layers=3, max_seq_len=128, head_dim=DEFAULT,
        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}, ffn_config={"ffn_hidden_size": 96, "moe_num_experts": 4, "moe_top_k": 2},
    ),
}


class WitnessError(RuntimeError):
    """The independent measurement cannot be made on this family."""


@dataclass
class Coverage:
    family: str
    status: str  # "supported", "refused", or "not checked" (no tiny model could be built)
    detail: str
    failures: list[str] = field(default_factory=list)


def tiny_config(family: str, **extra):
    """The family's config at SIZES; a size its config class will not take (a read-only property, say)
    is left at its default."""
    sizes = {k: v for k, v in {**SIZES, **OVERRIDES.get(family, {}), **extra}.items() if v is not DEFAULT}
    while True:
        try:
            return CONFIG_MAPPING[family](**sizes)
        except Exception as err:
            refused = [key for key in sizes if f"'{key}'" in str(err)]
            if not refused:
                raise
            del sizes[refused[0]]


# A config whose size fields have other names keeps its real sizes: measured on the meta device
# first, so such a family is reported instead of filling the memory.
MAX_PARAMETERS = 50_000_000


def tiny_model(family: str, **extra) -> torch.nn.Module:
    config = tiny_config(family, **extra)
    model_class = getattr(T, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family])
    attention = "sdpa" if model_class._supports_sdpa else "rosa_coverage_recorder"
    with torch.device("meta"):
        size = sum(p.numel() for p in T.AutoModelForCausalLM.from_config(config).parameters())
    if size > MAX_PARAMETERS:
        raise ValueError(f"the config's sizes did not shrink it ({size:,} parameters)")
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


def _sdpa_through_interface(module, query, key, value, attention_mask, **kwargs):
    """For families without sdpa (Gemma 2, GPT-OSS): their own interface call, routed to sdpa."""
    kwargs.pop("softcap", None)
    kwargs.pop("s_aux", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("rosa_coverage_recorder", _sdpa_through_interface)
AttentionMaskInterface.register("rosa_coverage_recorder", sdpa_mask)


@contextlib.contextmanager
def recorded_states(model: torch.nn.Module):
    """``{layer: (q, k)}`` as the attention kernel receives them, filled by each forward inside."""
    records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    current: list[int] = []
    original = F.scaled_dot_product_attention

    def recording(query, key, *args, **kwargs):
        records[current[-1]] = (query.detach().clone(), key.detach().clone())
        return original(query, key, *args, **kwargs)

    handles = [
        block.register_forward_pre_hook(lambda module, args, index=index: current.append(index))
        for index, block in enumerate(find_decoder_stack(model).layers)
    ]
    F.scaled_dot_product_attention = recording
    try:
        yield records
    finally:
        F.scaled_dot_product_attention = original
        for handle in handles:
            handle.remove()


def _states(model, tokens) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    with recorded_states(model) as records, torch.no_grad():
        model(tokens, use_cache=False)
    return records


# Attention averages identical values in another summation order at each position, so "the same" is
# the same to within float rounding; every effect checked for is larger than this by orders of magnitude.
TOLERANCE = 1e-3


def _changed(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    """Head dimensions (last axis) that differ anywhere, beyond a common scale of each head vector.

    The scale is there for families that normalise q and k after RoPE (HunYuan): changing a few
    dimensions then rescales the whole head, which is not a change of the other dimensions' content.
    Its estimate, the median ratio over the head's dimensions, is 1 wherever fewer than half change.
    """
    ratio = after / torch.where(before == 0, torch.ones_like(before), before)
    scale = ratio.median(dim=-1, keepdim=True).values
    difference = (after - before * scale).abs().flatten(0, -2).amax(dim=0)
    return set((difference > TOLERANCE).nonzero().flatten().tolist())


def _varies_with_position(states: torch.Tensor) -> bool:
    """States are [batch, heads, seq, dim]: a difference between positions."""
    return bool(((states - states[:, :, :1]).abs() > TOLERANCE).any())


def _frequency_buffers(model, layer: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The rotary frequencies ``layer`` rotates with, and every buffer holding them (a family that
    restores ``original_inv_freq`` on each call, such as LongRoPE's, must see the change too)."""
    buffers = {name: b for name, b in model.named_buffers() if name.endswith("inv_freq")}
    layer_types = getattr(model.config.get_text_config(), "layer_types", None)
    if layer_types and any(f".{layer_types[layer]}_" in name for name in buffers):
        buffers = {name: b for name, b in buffers.items() if f".{layer_types[layer]}_" in name}
    current = [b for name, b in buffers.items() if "original" not in name]
    if len(current) != 1:
        raise RuntimeError(f"cannot tell layer {layer}'s rotary frequencies among {sorted(buffers)}")
    return current[0], list(buffers.values())


def expected_low_dims(model, tokens, layer_states) -> dict[int, set[int]]:
    """Per RoPE layer, the dimensions of its lowest-frequency pairs, found by intervention.

    A family whose rotary embedding recomputes its frequencies from the config on every call
    (PhiMoE) ignores the intervention; that is reported, and such a family needs its dimensions
    stated (``check_family(..., low_dims=...)``).
    """
    if not layer_states:
        raise WitnessError("the attention does not call scaled_dot_product_attention, so its inputs cannot be recorded")
    rope_layers = [layer for layer, (query, _) in layer_states.items() if _varies_with_position(query)]
    layers_of: dict[int, list[int]] = {}
    buffers = {}
    for layer in rope_layers:
        inv_freq, holders = _frequency_buffers(model, layer)
        layers_of.setdefault(id(inv_freq), []).append(layer)
        buffers[id(inv_freq)] = (inv_freq, holders)
    expected = {}
    for key, (inv_freq, holders) in buffers.items():
        frequencies = inv_freq.clone()
        dims_of_pair = []  # per pair: {layer: changed dims}, from one forward for all layers sharing the buffer
        for pair in range(len(frequencies)):
            saved = [holder.clone() for holder in holders]
            for holder in holders:
                holder[pair] += 0.5  # half a radian more per position: far above TOLERANCE
            try:
                states = _states(model, tokens)
                dims_of_pair.append({layer: _changed(layer_states[layer][0], states[layer][0]) for layer in layers_of[key]})
            finally:
                for holder, value in zip(holders, saved):
                    holder.copy_(value)
        rotated = [i for i in range(len(frequencies)) if frequencies[i] != 0]  # 0: not rotated (LFM3's partial RoPE)
        n_low = max(1, round_half_up(R_LOW * len(rotated)))
        rank = sorted(rotated, key=lambda i: (float(frequencies[i]), -i))
        for layer in layers_of[key]:
            if not all(dims_of_pair[i][layer] for i in rotated):
                raise WitnessError(f"layer {layer}: changing the rotary frequency buffers changed nothing; the "
                                   "rotary embedding does not read them, so the layout cannot be measured this way")
            expected[layer] = set().union(*(dims_of_pair[i][layer] for i in rank[:n_low]))
    return expected


def _randomize(model) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for adapter in model.roae_adapters().values():
            for name, weight in adapter.named_parameters():
                if name.endswith("_B"):
                    weight.copy_(torch.randn(weight.shape, generator=generator))


# Families whose rotary embedding ignores its frequency buffers (it recomputes them from the config on
# every call), so the intervention cannot measure them: their lowest-frequency dims at SIZES, read from
# their modeling code (Llama's rotate-half layout).
STATED_LOW_DIMS = {"phimoe": [6, 7, 14, 15]}


def check_family(family: str, **extra) -> Coverage:
    """Build ``family`` (``extra``: config fields beyond the script's sizes) and check it as above."""
    low_dims = STATED_LOW_DIMS.get(family)
    tokens = torch.full((1, 8), 5)
    mixed = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    try:
        base = tiny_model(family, **extra)
        with torch.no_grad():
            logits = base(mixed).logits
    except Exception as err:  # a config that needs more than SIZES: reported, not guessed at
        return Coverage(family, "not checked", f"no tiny model: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
    try:
        model = get_rosa_model(base, RoSAConfig(targets=("q", "k"), r_low=R_LOW))
    except RoSAError as err:
        return Coverage(family, "refused", str(err))
    except Exception as err:  # not a clean refusal: a defect to fix, reported in the table
        return Coverage(family, "crashed", "get_rosa_model raised", [_describe(err)])
    try:
        return _checked(family, model, mixed, logits, tokens, low_dims)
    except Exception as err:
        return Coverage(family, "supported", "checks raised", [_describe(err)])


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"


def _checked(family, model, mixed, logits, tokens, low_dims) -> Coverage:
    failures, notes = [], []
    with torch.no_grad():
        if not torch.equal(model(mixed).logits, logits):
            failures.append("not the base model at initialisation")
    # Measured on the adapted model at initialisation, which is the base model (checked just above).
    before = _states(model, tokens)
    try:
        expected = expected_low_dims(model, tokens, before)
    except WitnessError as err:
        notes.append(f"dims {'stated' if low_dims else 'not checked'}: {err}")
        expected = {layer: set(low_dims) for layer, (query, _) in before.items() if _varies_with_position(query)} if low_dims else {}
    _randomize(model)
    after = _states(model, tokens)
    if expected and sorted(model.roae_adapters()) != sorted(expected):
        failures.append(f"adapted layers {sorted(model.roae_adapters())}, RoPE layers {sorted(expected)}")
    for layer, dims in expected.items():
        for name, old, new in zip("qk", before[layer], after[layer]):
            if not old.any():
                notes.append(f"layer {layer} {name}: zero for a repeated token, not measured")
                continue
            changed = _changed(old, new)
            if changed != dims:
                failures.append(f"layer {layer} {name}: changed dims {sorted(changed)}, lowest-frequency dims {sorted(dims)}")
    try:
        with model.disable_adapter():
            base_consistent = _cache_consistent(model, mixed)
        if not base_consistent:
            notes.append("cached generation: the base model's own differs from uncached, not checked")
        elif not _cache_consistent(model, mixed):
            failures.append("cached generation differs from uncached")
    except Exception as err:  # reported in the table rather than stopping the walk
        failures.append(f"generation failed: {_describe(err)}")
    detail = "; ".join([_geometry(model), *dict.fromkeys(notes)])
    return Coverage(family, "supported", detail, failures)


def _geometry(model) -> str:
    layouts = sorted({group.rotary.layout.name for group in model.geometry.rotary})
    detail = f"{'/'.join(layouts)}; " + "; ".join(
        f"layers {list(g.layers)}: dims {g.low_frequency_dims} of {g.rotary.layout.dim}, "
        f"{g.rotary.query_heads} q / {g.rotary.key_heads} k heads" for g in model.geometry.rotary
    )
    if model.nope_layers:
        detail += f"; without RoPE: {model.nope_layers}"
    return detail


def _cache_consistent(model, tokens) -> bool:
    def greedy(use_cache):
        with torch.no_grad():
            return model.generate(tokens[:, :4], max_new_tokens=6, do_sample=False, use_cache=use_cache, pad_token_id=0)

    return torch.equal(greedy(True), greedy(False))


def write_table(rows: list[Coverage], path: Path) -> None:
    counts = {s: sum(r.status == s and not r.failures for r in rows) for s in ("supported", "refused", "not checked")}
    counts["wrong"] = sum(bool(r.failures) for r in rows)
    lines = [
        "# RoAE coverage of transformers families",
        "",
        f"Generated by `python scripts/rope_coverage.py` with transformers {T.__version__}: every family in "
        "transformers' causal-LM mapping, as a tiny random model (3 layers, hidden 64, 4 query / 2 key-value "
        "heads, head dim 16, r_low 0.25, q and k targeted). How each check works is in the script's docstring; "
        "tests/test_rope_coverage.py runs it on the families the project names.",
        "",
        f"{counts['supported']} supported (every check that could be made passed; a note says which could not), "
        f"{counts['refused']} refused before any work "
        f"with the reason below, {counts['wrong']} accepted but failing a check or crashing (WRONG: open defects), "
        f"{counts['not checked']} not checked (the script could not build and run a tiny model from the config "
        "class with generic sizes; that says nothing about RoAE).",
        "",
        "| family | status | layout, adapted dims, heads / reason |",
        "| --- | --- | --- |",
    ]
    for row in rows:
        text = row.detail if not row.failures else f"FAILED: {'; '.join(row.failures)} ({row.detail})"
        lines.append(f"| {row.family} | {row.status if not row.failures else 'WRONG'} | {text.replace('|', '/')} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", help="model types (default: every causal-LM family)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "rope-coverage.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    families = args.families or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    rows = []
    for family in families:
        row = check_family(family)
        rows.append(row)
        print(f"{family}: {row.status}{' FAILED ' + str(row.failures) if row.failures else ''} - {row.detail}", flush=True)
    if not args.families:
        write_table(rows, args.output)
        print(f"wrote {args.output}")
    return 1 if any(row.failures for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
