"""What the LLM-Adapters data is: the 15 evaluation tasks, their groups, and every known file.

Checksums, record counts and sources are copied from ``shared/data/llm-adapters/MANIFEST.json``
(files from AGI-Edgerunners/LLM-Adapters at commit 816657208af4db747803f87ba40a4c71383fed7a; the
expected SHA-256 of the four files missing there comes from the Git LFS pointers in
aneekroy/LLM-Adapters, commit f4cba6f09aa29e22c440f77585768886f75dcada). They are embedded here
because a user's data dir elsewhere has no MANIFEST.json.

A file is looked for at two places inside a data dir: this project's layout (``path``) and the
upstream repository's own layout (``source_path``), so a data dir can be an LLM-Adapters clone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from rosa.errors import DataError

UPSTREAM_REPO = "AGI-Edgerunners/LLM-Adapters"
UPSTREAM_COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"


@dataclass(frozen=True)
class Task:
    name: str
    family: str


@dataclass(frozen=True)
class KnownFile:
    """A published file; ``records`` is None where upstream gives no exact count."""

    path: str
    source_path: str
    sha256: str
    records: int | None
    source_repo: str = UPSTREAM_REPO
    source_commit: str = UPSTREAM_COMMIT

    @property
    def layouts(self) -> tuple[str, str]:
        return (self.path, self.source_path)


TASKS: tuple[Task, ...] = tuple(
    [Task(name, "commonsense") for name in (
        "boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa",
    )]
    + [Task(name, "math") for name in ("MultiArith", "gsm8k", "AddSub", "AQuA", "SingleEq", "SVAMP", "mawps")]
)

GROUPS = MappingProxyType({
    "commonsense": tuple(t.name for t in TASKS if t.family == "commonsense"),
    "math": tuple(t.name for t in TASKS if t.family == "math"),
    "all": tuple(t.name for t in TASKS),
})


TEST_FILES = MappingProxyType({
    task: KnownFile(f"eval/{task}/test.json", f"dataset/{task}/test.json", sha256, records)
    for task, sha256, records in (
        ("boolq", "89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9", 3270),
        ("piqa", "3860d11b9b42e590b6b4bbc1643214d373ed0b0d4ac62fcc7bdceb8e044ad141", 1838),
        ("social_i_qa", "71543f41127451945379d106ffedaef502f1c8770dff6d2f543aca85e3080b1d", 1954),
        ("hellaswag", "3ea7e99795e63a01f2f5e9ddbc4dca964d9ebb22f04201e64d1ac043be51ab61", 10042),
        ("winogrande", "6946f5209e7114c65c6d04f8f644c5a061af20d730b1cfe158fff3dc44076fb9", 1267),
        ("ARC-Easy", "3f32a84716ca6d57d38728bf80cc8117aecd17445c2cf29a68b571b810eb82dc", 2376),
        ("ARC-Challenge", "4a89ce368ae01a71d268d9851686738b2a0a1d84271116bab49a1dd2b48ecad7", 1172),
        ("openbookqa", "8479930f7b8a26052c78250280b5465a4016ca7fc806af440d0f37e243f3099e", 500),
        ("MultiArith", "a40f426807c8a563802c2a5b66bda3bcd1eba9c099038fd1199f0dd57de5fd28", 600),
        ("gsm8k", "2cc616a1e0b23ea1df29370476365cde71c4e0aa823fb06cc194c5a8a9381abe", 1319),
        ("AddSub", "62a8662b1ad40879953c4df0e61883a749d03aa3fc5e71f1cdb842b816e139ff", 395),
        ("AQuA", "de677f5f0139340009eb01f17c0db781b4161912cd1f4efa77292f2fcf3478ee", 254),
        ("SingleEq", "712b15edb851c97aab42a5de106d94008f94d917366c92537ed5400a8aacb207", 508),
        ("SVAMP", "ffed015784f738f317c5603177861d044c4fc94e09211d78b25e96d46c656e2c", 1000),
        ("mawps", "c1a708979cbf2b3df9ac4020baacf3e8e73fcf089e1de7dd1b305b810bfaa15f", 238),
    )
})

# The training sets of the papers; upstream gives no exact record counts ("about 15,000").
TRAINING_SETS = MappingProxyType({
    "commonsense_15k": KnownFile(
        "train/commonsense_15k.json", "ft-training_set/commonsense_15k.json",
        "86d00e372905193c968c5ebbc47024a0b166b7138b4c5c7571500157010b0eef", None,
    ),
    "math_10k": KnownFile(
        "train/math_10k.json", "ft-training_set/math_10k.json",
        "0342d0d860ad8592b579329337c90e42eefd3d9f2898043140cbd120630418b8", None,
    ),
    "commonsense_170k": KnownFile(
        "train/commonsense_170k.json", "ft-training_set/commonsense_170k.json",
        "4651a3e707fbe28be03f486f96fcf57f8c38b2173f3e38812003108970793ac8", None,
    ),
})

# Smaller training files of the same commit, the sources of the stand-in mixes (rosa.data.mixes).
COMMONSENSE_SOURCES = MappingProxyType({
    "boolq": KnownFile(
        "train/commonsense/boolq.json", "dataset/boolq/train.json",
        "5ccbaceebaddc69765e1c4a363632196b81851d303696672165ab59ec4e48c83", 9427,
    ),
    "ARC-Easy": KnownFile(
        "train/commonsense/ARC-Easy.json", "dataset/ARC-Easy/train.json",
        "6a06cece3dec32f4fb1c1b0fc29dab14be7cf3053b417290dbc6cd845359f5ff", 2251,
    ),
    "ARC-Challenge": KnownFile(
        "train/commonsense/ARC-Challenge.json", "dataset/ARC-Challenge/train.json",
        "a9debff28aafed86a08211dc3584a3b6cb38edca8c56bb34cd5002ed54aeebfb", 1119,
    ),
    "openbookqa": KnownFile(
        "train/commonsense/openbookqa.json", "dataset/openbookqa/train.json",
        "a1e094eeea01f70c0baa880f37497b26700ae99b243927b9c529984de9b1fe90", 4957,
    ),
})
MATH_SOURCE = KnownFile(
    "train/math/math_data.json", "ft-training_set/math_data.json",
    "1d06633b4db748b7cfa38f2891f8d7b17b3636717b3188dd382045b94cf999a7", 3260,
)
LICENSE = KnownFile(
    "LICENSE-DATA", "DATA_LICENSE", "d0661a893a508739e49514a80f7629633846f1f4ac889fcf638c94a15ff92e9c", None
)

KNOWN_FILES: tuple[KnownFile, ...] = (
    *TEST_FILES.values(), *TRAINING_SETS.values(), *COMMONSENSE_SOURCES.values(), MATH_SOURCE, LICENSE,
)

# Which mix (rosa.data.mixes) can stand in, at small scale, for a missing training set.
STAND_INS = MappingProxyType({"commonsense_15k": "commonsense_mix", "math_10k": "math_mix"})

_TASK_BY_KEY = {t.name.lower(): t for t in TASKS}


def expand_tasks(spec: str | Sequence[str]) -> list[str]:
    """Turn ``"math,boolq"`` (or a list of such strings) into canonical task names in catalog order."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    wanted: set[str] = set()
    for part in parts:
        for word in part.split(","):
            key = word.strip().lower()
            if not key:
                continue
            if key in GROUPS:
                wanted.update(GROUPS[key])
            elif key in _TASK_BY_KEY:
                wanted.add(_TASK_BY_KEY[key].name)
            else:
                raise DataError(f"unknown task {word.strip()!r}; {_valid_tasks()}.")
    if not wanted:
        raise DataError(f"no task given in {spec!r}; {_valid_tasks()}.")
    return [t.name for t in TASKS if t.name in wanted]


def task_family(task: str) -> str:
    """``"commonsense"`` or ``"math"``: the two families are prompted and scored differently."""
    return _task(task).family


def canonical_task(task: str) -> str:
    """Names are case-insensitive on input but spelled as upstream (``ARC-Easy``) in paths and reports."""
    return _task(task).name


def _task(name: str) -> Task:
    found = _TASK_BY_KEY.get(name.strip().lower())
    if found is None:
        raise DataError(f"unknown task {name!r}; {_valid_tasks()}.")
    return found


def _valid_tasks() -> str:
    return f"valid tasks are {', '.join(t.name for t in TASKS)}; valid groups are {', '.join(GROUPS)}"
