"""rosa keeps working across transformers releases: its current cache API (nothing deprecated, removed in 6), and
rotary functions that 5.25 hands over as kernels modules."""

from __future__ import annotations

import logging as std_logging

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from conftest import STORIES, require
from rosa import RoSAConfig, get_rosa_model
from rosa.eval.generation import generate_responses, generation_config


class Records(std_logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_shared_prefill_generation_uses_the_cache_api():
    tokenizer = AutoTokenizer.from_pretrained(str(require(STORIES)))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token
    model = get_rosa_model(AutoModelForCausalLM.from_pretrained(str(STORIES)), RoSAConfig(targets=("q", "k"))).eval()
    logging.get_logger("transformers.utils.generic").warning_once.cache_clear()  # warned once per process otherwise
    records = Records()
    library = logging.get_logger("transformers")  # transformers' loggers write to its own handler, not propagating
    library.addHandler(records)
    prompts = ["### Instruction:\nOnce upon a time\n\n### Response:\n", "### Response:\n"]
    try:
        for decoding in ("beam4", "greedy"):
            assert len(generate_responses(model, tokenizer, prompts, generation_config(decoding, 6, tokenizer))) == 2
    finally:
        library.removeHandler(records)
    assert not [message for message in records.messages if "deprecated" in message]


def test_a_rotary_function_turned_into_a_kernels_module_is_still_found_and_read_by_its_signature():
    """transformers 5.25 with ``kernels`` makes ``@use_kernel_forward_from_hub`` functions ``nn.Module`` instances
    (``apply_rotary_pos_emb`` of most families): rosa must still find them, read ``q, k, cos, sin`` and the options
    from the plain function, and call the module, so a hub kernel put in its place keeps running."""
    import inspect

    import torch
    from torch import nn

    from rosa.roae import rotary_hook
    from rosa.roae.rotary_hook import ROTARY_SIGNATURE, _wrap, plain_function

    def apply_rotary_example(q, k, cos, sin, unsqueeze_dim=1):
        return q * cos.unsqueeze(unsqueeze_dim), k * sin.unsqueeze(unsqueeze_dim)

    class Func(nn.Module):  # what kernels' use_kernel_forward_from_hub builds around a function
        calls = 0

        def forward(self, *args, **kwargs):
            Func.calls += 1
            return apply_rotary_example(*args, **kwargs)

    module = Func()
    assert plain_function(module) is apply_rotary_example and plain_function(apply_rotary_example) is apply_rotary_example
    assert plain_function(nn.Linear(2, 2)) is None and plain_function(len) is None
    wrapped = _wrap(module, "apply_rotary_example")
    assert tuple(inspect.signature(wrapped).parameters)[:4] == ROTARY_SIGNATURE
    q, k, cos = torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.full((1, 2, 4), 2.0)
    rotated_q, _ = wrapped(q, k, cos, cos, unsqueeze_dim=2)  # nothing published: the module's result, unchanged
    assert Func.calls == 1 and torch.equal(rotated_q, apply_rotary_example(q, k, cos, cos, unsqueeze_dim=2)[0])
    # the options are bound by the plain function's names, so unsqueeze_dim=2 still tells the heads axis (a
    # (*args, **kwargs) signature would have dropped it, and RoAE would have scaled the wrong axis)
    calls = []
    token = rotary_hook._PROBE.set(calls)
    try:
        with pytest.raises(rotary_hook._ProbeFinished):
            wrapped(q, k, cos, cos, unsqueeze_dim=2)
    finally:
        rotary_hook._PROBE.reset(token)
    assert calls[0].heads_axis == 2 and calls[0].options == {"unsqueeze_dim": 2}


def test_the_installed_transformers_rotary_functions_are_found_on_llama():
    """Whatever shape the installed transformers gives ``apply_rotary_pos_emb`` (a function up to 5.24, a kernels
    module from 5.25 on), a Llama attention block's rotary function is found with the signature RoAE needs."""
    import inspect

    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    from rosa.roae.rotary_hook import ROTARY_SIGNATURE, rotary_functions

    attention = LlamaAttention(LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1), layer_idx=0)
    functions = rotary_functions(attention)
    assert list(functions) == ["apply_rotary_pos_emb"]
    assert tuple(inspect.signature(functions["apply_rotary_pos_emb"]).parameters)[:4] == ROTARY_SIGNATURE
