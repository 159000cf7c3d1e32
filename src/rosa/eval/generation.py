"""Batched generation that gives every prompt exactly the answer it would get alone.

Upstream's batched commonsense evaluation left-pads without an attention mask, so padding leaks
into attention and answers change with the batch (LLM-Adapters issue #61); peers therefore evaluate
one item at a time. Here prompts are left-padded *with* their attention mask, and generate() derives
position ids from that mask, so a padded row computes what it would compute alone; tests compare
batched and single-item predictions string for string.

Beam search expands every prompt to its beams *before* the prompt's forward pass, so the prompt
(hundreds of tokens, against a few dozen generated for commonsense tasks) would be computed once per
beam. We run that prefill once per prompt and copy its KV cache to the beams instead; generate()
then starts from the cache. This halves evaluation time with beam4 and changes no token (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from rosa.data.prompts import response_of

# Upstream builds GenerationConfig(temperature=0.1, top_p=0.75, top_k=40, num_beams=4) and never
# sets do_sample, so its decoding is deterministic 4-beam search; the sampling knobs are inert.
DECODINGS = {"beam4": {"num_beams": 4}, "greedy": {"num_beams": 1}}
MAX_NEW_TOKENS = {"commonsense": 32, "math": 256}
# Upstream scores different text per family: commonsense_evaluate.py decodes with
# skip_special_tokens=True, evaluate.py (arithmetic) with plain tokenizer.decode(sequence), which keeps
# special tokens and the final EOS. A generation "24<s>5" therefore reads 5 upstream, not 245.
KEEP_SPECIAL_TOKENS = {"commonsense": False, "math": True}


def generation_config(decoding: str, max_new_tokens: int, tokenizer: Any) -> GenerationConfig:
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}; choose one of {sorted(DECODINGS)}")
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **DECODINGS[decoding],
    )


def _prefill(model: Any, batch: dict[str, torch.Tensor], num_beams: int) -> Any:
    """KV cache of every prompt but its last token, computed once and repeated for each beam.

    generate() feeds the uncached last token itself; positions follow the attention mask, as
    generate() derives them, so left padding shifts nothing.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    output = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
    name = _cache_name(output)
    cache = output[name]
    if num_beams > 1:
        cache.batch_repeat_interleave(num_beams)
    return {name: cache}


def _cache_name(output: Any) -> str:
    """``cache`` since transformers renamed ``past_key_values`` (5.x releases that know both warn on the
    old name, which 6.0 removes); ``past_key_values`` on earlier 5.x releases."""
    return "cache" if "cache" in output.keys() else "past_key_values"


@torch.no_grad()
def generate_responses(
    model: Any, tokenizer: Any, prompts: Sequence[str], config: GenerationConfig, keep_special_tokens: bool = False
) -> list[str]:
    """The scored response of each prompt: decode prompt + generation, keep what follows the header
    (special tokens included with ``keep_special_tokens``, see :data:`KEEP_SPECIAL_TOKENS`)."""
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    device = next(model.parameters()).device
    batch = {name: tensor.to(device) for name, tensor in batch.items()}
    sequences = model.generate(**batch, **_prefill(model, batch, config.num_beams), generation_config=config)
    width = batch["input_ids"].shape[1]
    responses = []
    for row, mask in enumerate(batch["attention_mask"]):
        responses.append(scored_text(tokenizer, batch["input_ids"][row][mask.bool()], sequences[row, width:], keep_special_tokens))
    return responses


def scored_text(tokenizer: Any, prompt_ids: torch.Tensor, new_ids: torch.Tensor, keep_special_tokens: bool) -> str:
    """What upstream scores for one prompt: the generation ends at its first EOS (which upstream's
    unbatched generate() emits last; padding after it is batching's), prompt and generation are
    decoded together, and the text after the response header is kept."""
    stops = (new_ids == tokenizer.eos_token_id).nonzero()
    if len(stops):
        new_ids = new_ids[: stops[0, 0] + int(keep_special_tokens)]
    decoded = tokenizer.decode(torch.cat([prompt_ids, new_ids]), skip_special_tokens=not keep_special_tokens)
    return response_of(decoded)
