"""Answer extraction and scoring, reproducing the LLM-Adapters evaluation protocol.

LLM-Adapters (``commomsense_evaluate.py`` and ``evaluate.py``) scores generations with plain,
case-sensitive regular-expression searches and no word boundaries. Its quirks are kept on purpose so
accuracies stay comparable to published numbers (spec section 4, research notes B.3):

* label words match inside other words ("untrue" reads as "true"), and the first match wins;
* numeric answers are the *last* number in the text, after removing commas;
* AQuA takes the *first* capital A-E anywhere, so "Bill ..." reads as "B". ``strict=True`` offers a
  stricter AQuA rule, to be reported separately and never mixed with the comparable numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rosa.errors import DataError, RoSAConfigError

#: LLM-Adapters counts a numeric prediction as correct within this absolute tolerance.
NUMERIC_TOLERANCE = 0.001


@dataclass(frozen=True)
class _Rule:
    kind: Literal["word", "number", "letter"]
    pattern: re.Pattern[str]


def _words(*words: str) -> _Rule:
    return _Rule("word", re.compile("|".join(map(re.escape, words))))


def _numbered(stem: str, n: int) -> _Rule:
    return _words(*(f"{stem}{i}" for i in range(1, n + 1)))


# Upstream's number pattern: optional minus, digits, optional point, optional digits ("3." is 3).
_NUMBER = _Rule("number", re.compile(r"-?\d+\.?\d*"))
_LETTER = _Rule("letter", re.compile(r"[A-E]"))

_RULES: dict[str, _Rule] = {
    "boolq": _words("true", "false"),
    "piqa": _numbered("solution", 2),
    "social_i_qa": _numbered("answer", 5),
    "hellaswag": _numbered("ending", 4),
    "winogrande": _numbered("option", 2),
    "ARC-Easy": _numbered("answer", 5),
    "ARC-Challenge": _numbered("answer", 5),
    "openbookqa": _numbered("answer", 5),
    "MultiArith": _NUMBER,
    "gsm8k": _NUMBER,
    "AddSub": _NUMBER,
    "AQuA": _LETTER,
    "SingleEq": _NUMBER,
    "SVAMP": _NUMBER,
    "mawps": _NUMBER,
}

#: The canonical task names, commonsense first, in the order the spec lists them.
SCORED_TASKS: tuple[str, ...] = tuple(_RULES)

# Strict AQuA: an explicit statement ("answer is D", "Answer: (D)") beats a parenthesised option,
# which beats a bare letter. The letter must be followed by a non-word character or the end, so the
# article in "the answer is A train" still matches but "answer is Bill" does not.
_STRICT_STATED = re.compile(r"[Aa]nswer(?:\s+is|\s*:)\s*:?\s*\(?([A-E])(?![A-Za-z0-9_])")
_STRICT_PAREN = re.compile(r"\(([A-E])\)")
_STRICT_BARE = re.compile(r"([A-E])[.)]?")


def _rule(task: str) -> _Rule:
    try:
        return _RULES[task]
    except KeyError:
        raise RoSAConfigError(
            f"Unknown evaluation task {task!r}; valid names (exact spelling): "
            f"{', '.join(SCORED_TASKS)}."
        ) from None


def _strict_letter(text: str) -> str | None:
    for pattern in (_STRICT_STATED, _STRICT_PAREN):
        found = pattern.findall(text)
        if found:
            return found[-1]
    bare = _STRICT_BARE.fullmatch(text)
    return bare.group(1) if bare else None


def extract_answer(task: str, text: str, *, strict: bool = False) -> str | float | None:
    """Extract the answer a generation gives for ``task``, or None when it gives none.

    Label-word tasks (boolq ... openbookqa) return the first label word found anywhere in the text,
    case-sensitively and inside other words too, as LLM-Adapters does ("untrue" gives "true").
    Numeric tasks return the last number as a float after removing commas, as LLM-Adapters does
    (so "1,234.5 then -7" gives -7.0). AQuA returns the first capital A-E anywhere, LLM-Adapters'
    rule, which reads a rationale's "Bill" as "B"; keep it for comparability with published numbers.

    ``strict=True`` changes AQuA only (other tasks ignore it) to a rule that reads only letters
    presented as an option: (1) the last "answer is X" / "answer: X" (optionally "(X)"; "answer"
    may be capitalised; X in A-E not followed by a letter, digit or underscore); else (2) the last
    parenthesised "(X)"; else (3) the whole text is one letter A-E, optionally followed by "." or
    ")"; else None. Capitals inside words and the article "A" therefore never count.

    Raises RoSAConfigError for a task name outside ``SCORED_TASKS`` (lookup is exact).
    """
    rule = _rule(task)
    # Upstream strips the generation first; no search depends on it, but behaviour stays equal.
    text = text.strip()
    if rule.kind == "number":
        numbers = rule.pattern.findall(text.replace(",", ""))
        return float(numbers[-1]) if numbers else None
    if rule.kind == "letter" and strict:
        return _strict_letter(text)
    found = rule.pattern.search(text)
    return found.group(0) if found else None


def is_correct(task: str, text: str, label: str, *, strict: bool = False) -> bool:
    """Whether the generation ``text`` answers ``label`` under LLM-Adapters' scoring of ``task``.

    Label words and AQuA letters must equal the label exactly; numeric answers must lie within
    0.001 of it (|label - prediction| <= 0.001), upstream's tolerance. No extracted answer is wrong.
    ``strict`` is passed to `extract_answer` (it changes AQuA only).

    Raises RoSAConfigError for an unknown task, and DataError when a numeric task's label is not a
    number, since that means the dataset, not the model, is wrong.
    """
    rule = _rule(task)
    prediction = extract_answer(task, text, strict=strict)
    if rule.kind != "number":
        return prediction is not None and prediction == label
    try:
        target = float(label)
    except (TypeError, ValueError):
        raise DataError(
            f"Task {task!r} has numeric answers, but the label {label!r} is not a number; "
            "check the dataset's 'answer' field."
        ) from None
    return prediction is not None and abs(target - prediction) <= NUMERIC_TOLERANCE
