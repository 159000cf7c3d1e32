"""Answer extraction and scoring follow LLM-Adapters (spec section 4, research notes B.3)."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rosa.errors import DataError, RoSAConfigError
from rosa.eval import SCORED_TASKS, extract_answer, is_correct

# database=None: keep the repository free of a .hypothesis folder.
fast = settings(max_examples=150, deadline=None, database=None)

LABEL_WORDS = {
    "boolq": ["true", "false"],
    "piqa": ["solution1", "solution2"],
    "social_i_qa": [f"answer{i}" for i in range(1, 6)],
    "ARC-Easy": [f"answer{i}" for i in range(1, 6)],
    "ARC-Challenge": [f"answer{i}" for i in range(1, 6)],
    "openbookqa": [f"answer{i}" for i in range(1, 6)],
    "hellaswag": [f"ending{i}" for i in range(1, 5)],
    "winogrande": ["option1", "option2"],
}
NUMERIC_TASKS = ["MultiArith", "gsm8k", "AddSub", "SingleEq", "SVAMP", "mawps"]

# Every label word contains a digit or an "e", so text without either cannot form one, and no label
# word can start inside such text and end inside an inserted word.
NO_LABEL_ALPHABET = "".join(c for c in string.ascii_letters + " .,;:!?'()\n" if c != "e")
# Digit-free text with no "-", so nothing can turn a following number negative.
DIGIT_FREE_ALPHABET = string.ascii_letters + " .,;:!?'()$\n"

word_tasks = st.sampled_from(sorted(LABEL_WORDS))
no_label_text = st.text(alphabet=NO_LABEL_ALPHABET, max_size=40)


def test_scored_tasks_are_the_canonical_fifteen_in_spec_order():
    assert SCORED_TASKS == (
        "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge",
        "openbookqa", "MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP", "mawps",
    )  # fmt: skip


@pytest.mark.parametrize(
    "task, text, expected",
    [
        ("boolq", "untrue", "true"),  # no word boundaries
        ("boolq", "false, not true", "false"),  # first match wins
        ("boolq", "  the answer is true \n", "true"),
        ("boolq", "True", None),  # case-sensitive
        ("boolq", "", None),
        ("piqa", "solution2 beats solution1", "solution2"),
        ("piqa", "solution3", None),
        ("social_i_qa", "the correct answer is answer3 or answer1", "answer3"),
        ("ARC-Easy", "Answer3", None),
        ("ARC-Challenge", "answer5", "answer5"),
        ("openbookqa", "answer6 answer2", "answer2"),
        ("openbookqa", "answer12", "answer1"),  # plain substring, as upstream
        ("hellaswag", "ending4", "ending4"),
        ("hellaswag", "ending5", None),
        ("winogrande", "option2", "option2"),
        ("winogrande", "Option1", None),
    ],
)
def test_label_word_extraction(task, text, expected):
    assert extract_answer(task, text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234.5 then -7", -7.0),
        ("costs $1,000", 1000.0),
        ("3.", 3.0),
        ("The answer is 42.", 42.0),
        ("-15.0", -15.0),
        ("9.8 m/s", 9.8),
        ("5-3", -3.0),  # upstream's pattern reads the minus sign as part of the number
        ("1.2.3", 3.0),
        ("x = 0.5", 0.5),
    ],
)
def test_numeric_extraction_takes_the_last_number(text, expected):
    for task in NUMERIC_TASKS:
        assert extract_answer(task, text) == expected


@pytest.mark.parametrize("task", NUMERIC_TASKS)
def test_numeric_none_found(task):
    assert extract_answer(task, "no number here") is None
    assert is_correct(task, "no number here", "4") is False


@pytest.mark.parametrize("task", NUMERIC_TASKS)
def test_numeric_tolerance(task):
    assert is_correct(task, "so 15.001", "15.0")
    assert is_correct(task, "so 14.9995", "15.0")
    assert not is_correct(task, "so 15.002", "15.0")
    assert not is_correct(task, "so 14.998", "15")
    assert is_correct(task, "it is -15", "-15.0")
    assert is_correct(task, "1,000 apples", "1000")
    assert not is_correct(task, "15 then 16", "15")


def test_aqua_default_is_first_capital_a_to_e():
    assert extract_answer("AQuA", "Bill has (C)") == "B"
    assert extract_answer("AQuA", "The answer is D.") == "D"  # "T" is not A-E
    assert extract_answer("AQuA", "  so a b c ") is None
    assert is_correct("AQuA", "Bill has (C)", "B")
    assert not is_correct("AQuA", "Bill has (C)", "C")
    assert not is_correct("AQuA", "nothing", "A")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Bill has (C)", "C"),
        ("The answer is D.", "D"),
        ("A train leaves", None),
        ("Because of (B), the answer is (E)", "E"),
        ("answer is A, no wait, the answer is C", "C"),
        ("Answer: (A) 25", "A"),
        ("The answer is Bill", None),
        ("We compare (A) and (D) here", "D"),
        ("E", "E"),
        ("  B. ", "B"),
        ("C)", "C"),
        ("F", None),
        ("AB", None),
        ("A Bill", None),
    ],
)
def test_aqua_strict(text, expected):
    assert extract_answer("AQuA", text, strict=True) == expected
    assert is_correct("AQuA", text, expected or "A", strict=True) == (expected is not None)


def test_strict_changes_nothing_outside_aqua():
    assert extract_answer("boolq", "untrue", strict=True) == "true"
    assert extract_answer("gsm8k", "1,234.5 then -7", strict=True) == -7.0


@pytest.mark.parametrize("task", ["BoolQ", "aqua", "gsm8K", "arc-easy", "unknown", ""])
def test_unknown_task_names_the_task_and_the_valid_names(task):
    for call in (lambda: extract_answer(task, "true"), lambda: is_correct(task, "true", "true")):
        with pytest.raises(RoSAConfigError) as info:
            call()
        message = str(info.value)
        assert repr(task) in message
        assert all(name in message for name in SCORED_TASKS)


@pytest.mark.parametrize("task", NUMERIC_TASKS)
@pytest.mark.parametrize("label", ["abc", "", "B"])
def test_non_numeric_label_is_a_data_error(task, label):
    with pytest.raises(DataError, match=repr(label)):
        is_correct(task, "42", label)


# ---- properties -------------------------------------------------------------------------------


@fast
@given(task=word_tasks, text=no_label_text, data=st.data())
def test_inserted_label_word_is_found(task, text, data):
    assert extract_answer(task, text) is None
    word = data.draw(st.sampled_from(LABEL_WORDS[task]))
    at = data.draw(st.integers(0, len(text)))
    assert extract_answer(task, text[:at] + word + text[at:]) == word


@fast
@given(task=word_tasks, text=no_label_text, data=st.data())
def test_first_of_two_inserted_label_words_wins(task, text, data):
    first, second = (data.draw(st.sampled_from(LABEL_WORDS[task])) for _ in range(2))
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, len(text)))
    assert extract_answer(task, text[:i] + first + text[i:j] + second + text[j:]) == first


@fast
@given(
    task=st.sampled_from(NUMERIC_TASKS),
    prefix=st.text(alphabet=DIGIT_FREE_ALPHABET, max_size=30),
    value=st.one_of(
        st.integers(-(10**12), 10**12),
        st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False),
    ),
    decimals=st.integers(0, 6),
)
def test_number_with_thousands_commas_after_digit_free_text(task, prefix, value, decimals):
    formatted = f"{value:,}" if isinstance(value, int) else f"{value:,.{decimals}f}"
    expected = float(formatted.replace(",", ""))
    got = extract_answer(task, prefix + " " + formatted)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


@fast
@given(
    task=st.sampled_from(NUMERIC_TASKS),
    text=st.text(alphabet=string.digits + ",.- ab", max_size=40),
)
def test_numeric_extraction_ignores_commas(task, text):
    assert extract_answer(task, text) == extract_answer(task, text.replace(",", ""))


@fast
@given(
    task=st.sampled_from(NUMERIC_TASKS),
    a=st.integers(-99999, 99999),
    b=st.integers(-99999, 99999),
)
def test_numeric_is_correct_matches_tolerance(task, a, b):
    # Values in steps of 0.0001 around the 0.001 tolerance; a difference of exactly 0.001 is left
    # out because binary floats make that comparison go either way (as they do upstream).
    assume(abs(a - b) != 10)
    text = f"so the total is {a / 10000:.4f}"
    assert is_correct(task, text, f"{b / 10000:.4f}") == (abs(a - b) < 10)


@fast
@given(
    task=word_tasks,
    pieces=st.lists(
        st.one_of(
            st.sampled_from(sorted({w for ws in LABEL_WORDS.values() for w in ws})),
            st.text(alphabet="aentrufls12345 ", max_size=5),
        ),
        max_size=6,
    ),
    data=st.data(),
)
def test_is_correct_agrees_with_extraction_for_word_tasks(task, pieces, data):
    text = "".join(pieces)
    label = data.draw(st.sampled_from(LABEL_WORDS[task]))
    assert is_correct(task, text, label) == (extract_answer(task, text) == label)
