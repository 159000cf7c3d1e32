"""The LLM-Adapters prompts and training tokenization, byte for byte.

The published numbers of the paper (and of LLM-Adapters, DoRA, ...) were produced with these exact
strings, whitespace included: upstream builds them from indented triple-quoted f-strings, so every
line after the first starts with 16 spaces. The training variant (``finetune.py``) and the
evaluation variant (``commonsense_evaluate.py`` / ``evaluate.py``) differ: the no-input preamble ends
"request." plus two spaces when training and one space when evaluating, and the blank lines inside the
training prompt carry the 16 spaces while the evaluation prompt's are empty. Source:
AGI-Edgerunners/LLM-Adapters (``generate_prompt`` in those three scripts), read at their latest
revision; the strings are pinned in ``tests/test_prompts.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

INDENT = " " * 16
RESPONSE_HEADER = "### Response:"
_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


def train_prompt(record: Mapping[str, str]) -> str:
    """Prompt plus target, as ``finetune.py`` trains on it."""
    blank = INDENT + "\n"
    if record.get("input"):
        return (
            f"{_PREAMBLE_WITH_INPUT} \n\n"
            f"{INDENT}### Instruction:\n{INDENT}{record['instruction']}\n{blank}"
            f"{INDENT}### Input:\n{INDENT}{record['input']}\n{blank}"
            f"{INDENT}{RESPONSE_HEADER}\n{INDENT}{record['output']}"
        )
    return (
        f"{_PREAMBLE}  \n\n"
        f"{INDENT}### Instruction:\n{INDENT}{record['instruction']}\n{blank}"
        f"{INDENT}{RESPONSE_HEADER}\n{INDENT}{record['output']}"
    )


def eval_prompt(instruction: str, input: str = "") -> str:
    """The prompt the evaluation scripts generate from (the response follows the trailing indent)."""
    if input:
        return (
            f"{_PREAMBLE_WITH_INPUT}\n\n"
            f"{INDENT}### Instruction:\n{INDENT}{instruction}\n\n"
            f"{INDENT}### Input:\n{INDENT}{input}\n\n"
            f"{INDENT}{RESPONSE_HEADER}\n{INDENT}"
        )
    return f"{_PREAMBLE} \n\n{INDENT}### Instruction:\n{INDENT}{instruction}\n\n{INDENT}{RESPONSE_HEADER}\n{INDENT}"


def response_of(decoded: str) -> str:
    """The scored text: what follows the first response header, stripped (as upstream's ``split(...)[1]``)."""
    parts = decoded.split(RESPONSE_HEADER)
    return parts[1].strip() if len(parts) > 1 else ""


def tokenize_for_training(
    record: Mapping[str, str], tokenizer: Any, cutoff_len: int = 256, train_on_inputs: bool = True
) -> dict[str, list[int]]:
    """Token ids and labels of one record, with upstream's rules.

    The sequence is truncated to ``cutoff_len`` tokens; EOS is appended only when the sequence was
    not truncated (a truncated answer must not learn to stop). With ``train_on_inputs`` (upstream's
    default) the loss covers prompt and response; otherwise the prompt's tokens are masked with -100,
    the prompt being tokenized on its own exactly as upstream does.
    """
    ids = tokenizer(train_prompt(record), truncation=True, max_length=cutoff_len)["input_ids"]
    if ids[-1] != tokenizer.eos_token_id and len(ids) < cutoff_len:
        ids = [*ids, tokenizer.eos_token_id]
    labels = list(ids)
    if not train_on_inputs:
        prompt_ids = tokenizer(train_prompt({**record, "output": ""}), truncation=True, max_length=cutoff_len)["input_ids"]
        labels[: len(prompt_ids)] = [-100] * min(len(prompt_ids), len(labels))
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def training_lengths(records: Sequence[Mapping[str, str]], tokenizer: Any) -> list[tuple[int, int]]:
    """Per record, the untruncated token counts of its training prompt without and with the response
    (EOS not counted), as :func:`tokenize_for_training` splits them: the response is the tokens from
    the first count up to the second, so a ``cutoff_len`` at or below the first keeps none of it
    and one below the second cuts it. Tokenized as one batch: this runs over a whole data set."""
    full = tokenizer([train_prompt(r) for r in records])["input_ids"]
    prompts = tokenizer([train_prompt({**r, "output": ""}) for r in records])["input_ids"]
    return [(len(p), len(f)) for p, f in zip(prompts, full)]
