"""rosa uses transformers' current cache API, so nothing it calls is deprecated (removed in transformers 6)."""

from __future__ import annotations

import logging as std_logging

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
