"""Batched, resumable evaluation: batched answers equal single-item answers; no item lost or doubled."""

from __future__ import annotations

import json

import pytest

from conftest import DATA, STORIES, randomize_adapters, require
from rosa import RoSAConfig, get_rosa_model
from rosa.data import load_records, task_file
from rosa.data.prompts import eval_prompt, response_of
from rosa.errors import RoSAError
from rosa.eval.generation import generate_responses, generation_config
from rosa.eval.report import compute_metrics
from rosa.eval.runner import evaluate
from rosa.loading import load_base_model, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(require(STORIES)))


@pytest.fixture(scope="module")
def base():
    return load_base_model(str(STORIES), precision="fp32").eval()


@pytest.fixture(scope="module")
def rosa_model():
    model = get_rosa_model(load_base_model(str(STORIES), precision="fp32"), RoSAConfig(targets=("q", "k"), r_low=0.5))
    randomize_adapters(model, std=0.5)
    return model.eval()


def prompts_of(task, n):
    return [eval_prompt(r["instruction"]) for r in load_records(task_file(task, require(DATA)))[:n]]


@pytest.mark.parametrize("decoding", ["greedy", "beam4"])
@pytest.mark.parametrize("which", ["base", "rosa_model"])
def test_batched_answers_are_the_single_item_answers_string_for_string(request, tokenizer, decoding, which):
    model = request.getfixturevalue(which)
    # Mixed lengths in one batch, so every row but the longest is left-padded.
    prompts = prompts_of("boolq", 4) + prompts_of("SVAMP", 4)
    lengths = {len(tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) >= 4, "the batch must mix prompt lengths"
    config = generation_config(decoding, 24, tokenizer)
    batched = generate_responses(model, tokenizer, prompts, config)
    single = [generate_responses(model, tokenizer, [p], config)[0] for p in prompts]
    assert batched == single
    assert all(batched) and len(set(batched)) > 1, "responses are real, varied text"


class Interrupting:
    """A model whose generate() dies after ``calls`` batches, like a killed process."""

    def __init__(self, model, calls):
        self.model, self.calls = model, calls

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        if self.calls == 0:
            raise KeyboardInterrupt("simulated kill")
        self.calls -= 1
        return self.model.generate(*args, **kwargs)


TASKS = "boolq,AQuA"


def run(model, tokenizer, out, **kwargs):
    settings = dict(tasks=TASKS, data_dir=DATA, decoding="greedy", batch_size=3, limit=5, progress=False)
    return evaluate(model, tokenizer, out, **{**settings, **kwargs})


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_interrupted_evaluation_resumes_with_no_item_lost_or_doubled(tmp_path, base, tokenizer):
    reference = run(base, tokenizer, tmp_path / "clean")
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(base, calls=2), tokenizer, tmp_path / "resumed")
    partial = lines(tmp_path / "resumed" / "predictions.jsonl")
    assert len(partial) == 5 and not (tmp_path / "resumed" / "metrics.json").exists()

    calls = []
    counting = Interrupting(base, calls=10**6)
    counting.generate = lambda *a, **k: calls.append(1) or base.generate(*a, **k)
    resumed = run(counting, tokenizer, tmp_path / "resumed", batch_size=2)
    assert len(calls) == 3, "only the 5 missing items are generated (batches of 2, 2, 1)"
    assert resumed == reference
    assert lines(tmp_path / "resumed" / "predictions.jsonl") == lines(tmp_path / "clean" / "predictions.jsonl")
    keys = [(p["task"], p["index"]) for p in lines(tmp_path / "clean" / "predictions.jsonl")]
    assert keys == [("boolq", i) for i in range(5)] + [("AQuA", i) for i in range(5)]


def test_a_line_cut_by_a_kill_is_dropped_and_regenerated(tmp_path, base, tokenizer):
    reference = run(base, tokenizer, tmp_path / "clean")
    out = tmp_path / "cut"
    run(base, tokenizer, out)
    text = (out / "predictions.jsonl").read_text()
    (out / "predictions.jsonl").write_text(text[: text.index("\n", len(text) // 2) + 40])  # a half-written line
    assert run(base, tokenizer, out) == reference
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "clean" / "predictions.jsonl").read_text()


def test_a_larger_limit_only_generates_the_new_items(tmp_path, base, tokenizer):
    run(base, tokenizer, tmp_path / "grow", limit=2)
    calls = []
    counting = Interrupting(base, calls=10**6)
    counting.generate = lambda *a, **k: calls.append(k["input_ids"].shape[0]) or base.generate(*a, **k)
    grown = run(counting, tokenizer, tmp_path / "grow", limit=5)
    assert sorted(calls) == [3, 3] and grown == run(base, tokenizer, tmp_path / "fresh", limit=5)


def test_other_decoding_settings_are_refused_in_the_same_directory(tmp_path, base, tokenizer):
    run(base, tokenizer, tmp_path / "e", limit=1)
    with pytest.raises(RoSAError, match="decoding differ"):
        run(base, tokenizer, tmp_path / "e", limit=1, decoding="beam4")
    with pytest.raises(RoSAError, match="not an evaluation directory"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("x")
        run(base, tokenizer, tmp_path / "other", limit=1)


def test_a_missing_task_is_reported_and_the_others_are_evaluated(tmp_path, base, tokenizer):
    metrics = run(base, tokenizer, tmp_path / "m", tasks="hellaswag,boolq", limit=2)
    assert list(metrics["tasks"]) == ["boolq"] and metrics["tasks"]["boolq"]["total"] == 2
    assert "hellaswag" in metrics["missing"] and "3ea7e99795e63a01" in metrics["missing"]["hellaswag"]
    assert "| hellaswag | missing |" in (tmp_path / "m" / "results.md").read_text()


def test_predictions_carry_every_field_and_aqua_reports_the_strict_rule(tmp_path, base, tokenizer):
    metrics = run(base, tokenizer, tmp_path / "p")
    predictions = lines(tmp_path / "p" / "predictions.jsonl")
    assert set(predictions[0]) == {"task", "index", "prompt", "generation", "extracted", "label", "correct"}
    aqua = [p for p in predictions if p["task"] == "AQuA"]
    assert all({"extracted_strict", "correct_strict"} <= set(p) for p in aqua)
    assert metrics["tasks"]["AQuA"]["strict_correct"] == sum(p["correct_strict"] for p in aqua)
    assert predictions[0]["prompt"] == prompts_of("boolq", 1)[0]


def test_macro_and_micro_averages():
    predictions = [{"task": "boolq", "correct": c} for c in (True, True, False, False)] + [
        {"task": "AQuA", "correct": True, "correct_strict": False}
    ]
    metrics = compute_metrics(predictions, ["boolq", "AQuA", "hellaswag"], {"hellaswag": "not here"})
    assert metrics["tasks"]["boolq"] == {"correct": 2, "total": 4, "accuracy": 0.5}
    assert metrics["tasks"]["AQuA"]["accuracy"] == 1.0 and metrics["tasks"]["AQuA"]["strict_accuracy"] == 0.0
    assert metrics["macro_average"] == 0.75 and metrics["micro_average"] == 3 / 5 and metrics["items"] == 5
    assert "hellaswag" not in metrics["tasks"] and metrics["missing"] == {"hellaswag": "not here"}


@pytest.mark.parametrize("decoding", ["greedy", "beam4"])
def test_the_shared_prompt_prefill_changes_no_token_of_plain_generate(base, tokenizer, decoding):
    config = generation_config(decoding, 24, tokenizer)
    for prompt in prompts_of("piqa", 3) + prompts_of("AQuA", 2):
        ids = tokenizer([prompt], return_tensors="pt")
        plain = base.generate(**ids, generation_config=config)[0]
        expected = response_of(tokenizer.decode(plain, skip_special_tokens=True))
        assert generate_responses(base, tokenizer, [prompt], config) == [expected]


def test_training_batches_pad_right_and_generation_pads_left_without_changing_the_tokenizer(base, tokenizer):
    from transformers import DataCollatorForSeq2Seq

    from rosa.data.prompts import tokenize_for_training

    records = load_records(task_file("boolq", require(DATA)))[:2]
    examples = [tokenize_for_training(r, tokenizer, cutoff_len=40 + 30 * i) for i, r in enumerate(records)]
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="pt")(examples)
    assert batch["attention_mask"][0, 0] == 1 and batch["attention_mask"][0, -1] == 0, "right padding"
    generate_responses(base, tokenizer, prompts_of("boolq", 2), generation_config("greedy", 2, tokenizer))
    assert tokenizer.padding_side == "right"


def test_arithmetic_text_keeps_special_tokens_as_upstream_decodes_it():
    """Upstream's evaluate.py decodes the whole sequence with special tokens, its commonsense
    evaluation skips them: a generation "24", BOS, "5", EOS reads 5 for arithmetic and 245 otherwise."""
    import torch
    from transformers import AutoTokenizer

    from rosa.eval.generation import KEEP_SPECIAL_TOKENS, scored_text
    from rosa.eval.scoring import extract_answer

    tokenizer = AutoTokenizer.from_pretrained(str(require(STORIES)))
    prompt = torch.tensor(tokenizer(eval_prompt("How many?", ""))["input_ids"])
    piece = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    generated = torch.tensor([*piece("24"), tokenizer.bos_token_id, *piece("5"), tokenizer.eos_token_id, *piece("7")])
    math = scored_text(tokenizer, prompt, generated, KEEP_SPECIAL_TOKENS["math"])
    commonsense = scored_text(tokenizer, prompt, generated, KEEP_SPECIAL_TOKENS["commonsense"])
    assert math.replace(" ", "") == f"24{tokenizer.bos_token}5{tokenizer.eos_token}"  # nothing after the first EOS
    assert commonsense.replace(" ", "") == "245"  # special tokens skipped (this tokenizer puts a space between)
    assert extract_answer("gsm8k", math) == 5.0


@pytest.mark.parametrize("decoding", ["greedy", "beam4"])
def test_the_shared_prefill_uses_the_cache_api_transformers_6_keeps(base, tokenizer, decoding):
    """transformers 5.x warns (FutureWarning) that ``past_key_values`` goes away in 6.0; the evaluation's
    shared prefill must hand ``generate`` its cache under the current name, so no such warning is raised."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate_responses(base, tokenizer, prompts_of("boolq", 2), generation_config(decoding, 2, tokenizer))
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
