"""The LLM-Adapters prompt strings, byte for byte, and the training tokenization rules."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from conftest import STORIES, require
from rosa.data.prompts import eval_prompt, response_of, tokenize_for_training, train_prompt

RECORD = {"instruction": "Is water wet?", "input": "", "output": "the correct answer is true", "answer": "true"}

# Written out literally (not built from the module's pieces) so a changed byte fails the test.
TRAIN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    "                ### Instruction:\n"
    "                Is water wet?\n"
    "                \n"
    "                ### Response:\n"
    "                the correct answer is true"
)
EVAL_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                Is water wet?\n"
    "\n"
    "                ### Response:\n"
    "                "
)
TRAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                Add.\n"
    "                \n"
    "                ### Input:\n"
    "                2 and 3\n"
    "                \n"
    "                ### Response:\n"
    "                5"
)
EVAL_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    "                ### Instruction:\n"
    "                Add.\n"
    "\n"
    "                ### Input:\n"
    "                2 and 3\n"
    "\n"
    "                ### Response:\n"
    "                "
)


def test_training_prompt_is_upstreams_byte_for_byte():
    assert train_prompt(RECORD) == TRAIN_NO_INPUT
    assert train_prompt({"instruction": "Add.", "input": "2 and 3", "output": "5"}) == TRAIN_WITH_INPUT


def test_evaluation_prompt_is_upstreams_byte_for_byte():
    assert eval_prompt("Is water wet?") == EVAL_NO_INPUT
    assert eval_prompt("Add.", "2 and 3") == EVAL_WITH_INPUT


def test_the_two_preambles_differ_by_exactly_one_trailing_space():
    train_first, eval_first = TRAIN_NO_INPUT.split("\n")[0], EVAL_NO_INPUT.split("\n")[0]
    assert train_first == eval_first + " " and eval_first.endswith("request. ")


def test_response_is_the_text_after_the_first_response_header_stripped():
    assert response_of(EVAL_NO_INPUT + "the correct answer is true \n### Response: x") == "the correct answer is true"
    assert response_of("no header at all") == ""


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(require(STORIES))


def test_eos_is_appended_to_a_sequence_that_fits(tokenizer):
    plain = tokenizer(train_prompt(RECORD))["input_ids"]
    item = tokenize_for_training(RECORD, tokenizer, cutoff_len=256)
    assert item["input_ids"] == [*plain, tokenizer.eos_token_id]
    assert item["labels"] == item["input_ids"] and item["attention_mask"] == [1] * len(plain + [0])


def test_a_truncated_sequence_gets_no_eos(tokenizer):
    plain = tokenizer(train_prompt(RECORD))["input_ids"]
    item = tokenize_for_training(RECORD, tokenizer, cutoff_len=20)
    assert item["input_ids"] == plain[:20] and tokenizer.eos_token_id not in item["input_ids"]


def test_without_train_on_inputs_only_the_response_and_eos_carry_loss(tokenizer):
    prompt_len = len(tokenizer(train_prompt({**RECORD, "output": ""}))["input_ids"])
    item = tokenize_for_training(RECORD, tokenizer, train_on_inputs=False)
    assert item["labels"][:prompt_len] == [-100] * prompt_len
    assert item["labels"][prompt_len:] == item["input_ids"][prompt_len:]
    assert item["labels"][-1] == tokenizer.eos_token_id and len(item["labels"]) > prompt_len
