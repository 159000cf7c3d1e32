"""rosa.data: the LLM-Adapters record format, the catalog, finding and verifying files, and the mixes."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import DATA, require

import rosa.data.mixes as mixes_module
from rosa.data import (
    GROUPS,
    MIXES,
    TASKS,
    build_mix,
    expand_tasks,
    load_dataset,
    load_records,
    resolve_data_dir,
    task_family,
    task_file,
    train_file,
    verify_data_dir,
)
from rosa.data.catalog import KNOWN_FILES, STAND_INS
from rosa.errors import DataError

MISSING = {
    "eval/hellaswag/test.json",
    "train/commonsense_15k.json",
    "train/math_10k.json",
    "train/commonsense_170k.json",
}
HELLASWAG_SHA = "3ea7e99795e63a01f2f5e9ddbc4dca964d9ebb22f04201e64d1ac043be51ab61"
COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"
SOURCE_ORDER = ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]


def record(**overrides):
    return {"instruction": "q", "input": "", "output": "the correct answer is true", "answer": "true", **overrides}


def write(path: Path, payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def copy_in(data_dir: Path, rel: str, as_rel: str | None = None) -> Path:
    target = data_dir / (as_rel or rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(require(DATA / rel), target)
    return target


# ---------------------------------------------------------------------------------------- records


def test_load_records_keeps_extra_fields(tmp_path):
    path = write(tmp_path / "ok.json", [record(), record(source="mine")])
    records = load_records(path)
    assert len(records) == 2 and records[1]["source"] == "mine"


@pytest.mark.parametrize(
    "payload, expected",
    [
        ({"instruction": "q"}, ["top level is an object, not a list"]),
        ([], ["contains no records"]),
        ([record(), "text"], ["record 1 is a string, not an object"]),
        ([record(), record(), {k: v for k, v in record().items() if k != "answer"}], ["record 2", "'answer'"]),
        ([record(input=None)], ["record 0 field 'input' is null, not a string"]),
        ([record(), record(answer=3)], ["record 1 field 'answer' is a number, not a string"]),
    ],
)
def test_load_records_errors_name_file_record_and_field(tmp_path, payload, expected):
    path = write(tmp_path / "bad.json", payload)
    with pytest.raises(DataError) as err:
        load_records(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message
    assert "instruction, input, output and answer strings (the LLM-Adapters format)" in message


def test_load_records_invalid_json_gives_line_and_column(tmp_path):
    path = write(tmp_path / "bad.json", '[{"instruction": "q",\n  "input": }]')
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(path) in str(err.value) and "not valid JSON (line 2, column 12" in str(err.value)


def test_load_records_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        load_records(tmp_path / "absent.json")
    assert str(tmp_path / "absent.json") in str(err.value)
    with pytest.raises(DataError, match="is a directory"):
        load_records(tmp_path)


# ---------------------------------------------------------------------------------------- catalog


def test_tasks_groups_and_families():
    assert [t.name for t in TASKS] == [
        "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa",
        "MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP", "mawps",
    ]
    assert set(GROUPS) == {"commonsense", "math", "all"}
    assert len(GROUPS["commonsense"]) == 8 and len(GROUPS["math"]) == 7 and len(GROUPS["all"]) == 15
    assert task_family("arc-easy") == "commonsense" and task_family("gsm8k") == "math"
    with pytest.raises(DataError, match="valid tasks are"):
        task_family("mmlu")


def test_expand_tasks():
    assert expand_tasks("math,boolq,BOOLQ") == [
        "boolq", "MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP", "mawps",
    ]
    assert expand_tasks(["arc-challenge", " piqa , ARC-easy"]) == ["piqa", "ARC-Easy", "ARC-Challenge"]
    assert expand_tasks("ALL") == [t.name for t in TASKS]
    with pytest.raises(DataError) as err:
        expand_tasks("boolq,mmlu")
    assert "'mmlu'" in str(err.value) and "SVAMP" in str(err.value) and "commonsense, math, all" in str(err.value)
    with pytest.raises(DataError, match="no task given"):
        expand_tasks(" , ")


def test_known_files_match_manifest():
    manifest = json.loads(require(DATA / "MANIFEST.json").read_text())
    prefix = "shared/data/llm-adapters/"
    expected = {}
    for entry in manifest["files"]:
        expected[entry["path"].removeprefix(prefix)] = (
            entry["source_repo"], entry["source_commit"], entry["source_path"], entry["sha256"], entry["records"]
        )
    for entry in manifest["missing"]["files"]:
        records = entry["expected_records"]
        expected[entry["intended_path"].removeprefix(prefix)] = (
            entry["source_repo"], entry["source_commit"], entry["source_path"], entry["expected_sha256"],
            records if isinstance(records, int) else None,
        )
    embedded = {
        f.path: (f.source_repo, f.source_commit, f.source_path, f.sha256, f.records) for f in KNOWN_FILES
    }
    assert embedded == expected
    assert set(STAND_INS.values()) <= set(MIXES)


# ------------------------------------------------------------------------------------- data dir


def test_data_dir_precedence(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    default = tmp_path / "shared" / "data" / "llm-adapters"
    for folder in (explicit, env, default, tmp_path / "work"):
        folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("ROSA_DATA_DIR", raising=False)
    assert resolve_data_dir() == default.resolve()
    monkeypatch.setenv("ROSA_DATA_DIR", str(env))
    assert resolve_data_dir() == env.resolve()
    assert resolve_data_dir(explicit) == explicit.resolve()
    assert resolve_data_dir(str(explicit)) == explicit.resolve()


def test_data_dir_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROSA_DATA_DIR", raising=False)
    with pytest.raises(DataError) as err:
        resolve_data_dir()
    assert "data_dir=DIR" in str(err.value) and "ROSA_DATA_DIR" in str(err.value)
    assert "shared/data/llm-adapters" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("ROSA_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError, match="ROSA_DATA_DIR.*does not exist"):
        resolve_data_dir()


# ------------------------------------------------------------------------------------ locating


def test_task_and_train_files_found():
    assert task_file("BoolQ", require(DATA)) == DATA.resolve() / "eval/boolq/test.json"
    assert len(load_dataset("svamp", DATA)) == 1000


def test_missing_hellaswag_gives_provenance():
    with pytest.raises(DataError) as err:
        task_file("hellaswag", require(DATA))
    message = str(err.value)
    for part in (
        str(DATA.resolve() / "eval/hellaswag/test.json"),
        str(DATA.resolve() / "dataset/hellaswag/test.json"),
        "AGI-Edgerunners/LLM-Adapters", COMMIT, "(dataset/hellaswag/test.json)", HELLASWAG_SHA,
        f"rosa data verify --data-dir {DATA.resolve()}",
    ):
        assert part in message


def test_missing_training_set_points_to_stand_in():
    with pytest.raises(DataError) as err:
        train_file("Commonsense_15K", require(DATA))
    assert "ft-training_set/commonsense_15k.json" in str(err.value) and "'commonsense_mix'" in str(err.value)
    with pytest.raises(DataError, match="known training sets are commonsense_15k, math_10k"):
        train_file("alpaca", DATA)


def test_upstream_layout(tmp_path):
    copy_in(tmp_path, "eval/boolq/test.json", "dataset/boolq/test.json")
    copy_in(tmp_path, "train/math/math_data.json", "ft-training_set/math_data.json")
    assert task_file("boolq", tmp_path) == tmp_path.resolve() / "dataset/boolq/test.json"
    assert len(load_dataset("BOOLQ", tmp_path)) == 3270
    assert len(build_mix("math_mix", tmp_path)) == 3260
    status = {c.path: c.status for c in verify_data_dir(tmp_path)}
    assert status["dataset/boolq/test.json"] == "ok"
    assert status["ft-training_set/math_data.json"] == "ok"
    assert status["eval/piqa/test.json"] == "missing"


def test_load_dataset_path_needs_no_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROSA_DATA_DIR", str(tmp_path / "gone"))
    path = write(tmp_path / "mine.json", [record()])
    assert load_dataset(str(path)) == [record()]
    assert load_dataset("mine.json") == [record()]
    with pytest.raises(DataError, match="absent.json does not exist"):
        load_dataset("absent.json")
    with pytest.raises(DataError, match="ROSA_DATA_DIR"):
        load_dataset("boolq")


def test_load_dataset_unknown_name(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("alpaca", tmp_path)
    message = str(err.value)
    for name in ("commonsense_15k", "commonsense_mix", "math_mix", "hellaswag", "mawps"):
        assert name in message


# ------------------------------------------------------------------------------------ verifying


def test_verify_real_data_dir():
    checks = verify_data_dir(require(DATA))
    assert {c.path for c in checks} == {f.path for f in KNOWN_FILES}
    for check in checks:
        if check.path in MISSING:
            assert check.status == "missing" and check.actual_sha256 is None
        else:
            assert check.status == "ok" and check.actual_sha256 == check.expected_sha256
    assert {c.path: c.expected_records for c in checks}["eval/hellaswag/test.json"] == 10042


def test_verify_tampered_copy(tmp_path):
    copy_in(tmp_path, "eval/boolq/test.json")
    tampered = copy_in(tmp_path, "eval/mawps/test.json")
    data = bytearray(tampered.read_bytes())
    data[100] ^= 1
    tampered.write_bytes(bytes(data))
    status = {c.path: c.status for c in verify_data_dir(tmp_path)}
    assert status.pop("eval/boolq/test.json") == "ok"
    assert status.pop("eval/mawps/test.json") == "mismatch"
    assert set(status.values()) == {"missing"}


# ---------------------------------------------------------------------------------------- mixes


def round_robin_counts(sizes: list[int], total: int) -> list[int]:
    """The recipe's counts, one record at a time: each pass takes one from every unexhausted source."""
    counts = [0] * len(sizes)
    while sum(counts) < total and any(c < s for c, s in zip(counts, sizes)):
        for i, size in enumerate(sizes):
            if counts[i] < size and sum(counts) < total:
                counts[i] += 1
    return counts


@pytest.fixture
def tagged(monkeypatch):
    """Mark each loaded record with (source file, index) so a mix can be traced to its sources."""
    real = mixes_module.load_records

    def load_tagged(path):
        records = real(path)
        for index, rec in enumerate(records):
            rec["origin"] = (Path(path).stem, index)
        return records

    monkeypatch.setattr(mixes_module, "load_records", load_tagged)


def test_commonsense_mix_recipe(tagged):
    mix = build_mix("commonsense_mix", require(DATA))
    sizes = [len(load_records(DATA / f"train/commonsense/{name}.json")) for name in SOURCE_ORDER]
    expected = dict(zip(SOURCE_ORDER, round_robin_counts(sizes, 15_000)))
    assert expected == {"boolq": 6673, "ARC-Easy": 2251, "ARC-Challenge": 1119, "openbookqa": 4957}
    assert len(mix) == 15_000
    assert Counter(r["origin"][0] for r in mix) == expected
    assert len({r["origin"] for r in mix}) == len(mix)


def test_mixes_are_seeded(tagged):
    require(DATA)
    for name in MIXES:
        first = [r["origin"] for r in build_mix(name, DATA, seed=42)]
        again = [r["origin"] for r in build_mix(name.upper(), DATA, seed=42)]
        other = [r["origin"] for r in build_mix(name, DATA, seed=7)]
        assert first == again
        assert first != other
    assert len({r["origin"] for r in build_mix("math_mix", DATA)}) == 3260


def test_mixes_keep_the_format():
    commonsense = load_dataset("commonsense_mix", require(DATA))
    math = load_dataset("math_mix", DATA, seed=1)
    assert len(math) == 3260
    for rec in commonsense + math:
        assert set(rec) == {"instruction", "input", "output", "answer"} and rec["input"] == ""
    assert all(r["output"] == f"the correct answer is {r['answer']}" for r in commonsense)
    assert all("Answer format:" in r["instruction"] for r in commonsense)
    with pytest.raises(DataError, match="known mixes are commonsense_mix, math_mix"):
        build_mix("math_20k", DATA)
