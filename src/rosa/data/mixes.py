"""Seeded stand-ins for Commonsense15K and Math10K, which are missing from the shared data.

Both are built from smaller training files of the same upstream commit
(AGI-Edgerunners/LLM-Adapters 816657208af4db747803f87ba40a4c71383fed7a), records unchanged and
untagged, in the LLM-Adapters format.

``commonsense_mix`` stands in for Commonsense15K. Its sources are the training sets of boolq,
ARC-Easy, ARC-Challenge and openbookqa (``train/commonsense/*.json``: 9,427, 2,251, 1,119 and
4,957 records), in that order. One ``random.Random(seed)`` shuffles each source in that order;
records are then taken round-robin, one from each source that still has records, until 15,000
are taken or every source is exhausted, and the result is shuffled with the same generator. So
small sources are used completely and the rest is balanced: the mix holds 6,673 boolq, 2,251
ARC-Easy, 1,119 ARC-Challenge and 4,957 openbookqa records. Commonsense15K draws on eight
commonsense training sets; piqa, social_i_qa, hellaswag and winogrande have no training file
here, so the stand-in covers four of them.

``math_mix`` stands in for Math10K: all 3,260 records of ``train/math/math_data.json`` (the
older LLM-Adapters math set: word problems with a worked "A: ... The answer is N." output, and
some AQuA-style items with a "Rationale: ..." output and a letter answer), shuffled with
``random.Random(seed)``. Math10K has about 10,000 records, so this is about a third of its size.

Every record of these files has all four fields as strings, with ``input`` always empty, so
nothing is filled in or derived. A few records repeat verbatim in the published files (1 extra copy in
ARC-Challenge, 5 in openbookqa, 9 in math_data.json); they are kept as published.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from rosa.data.catalog import COMMONSENSE_SOURCES, MATH_SOURCE
from rosa.data.locate import find_known, resolve_data_dir
from rosa.data.records import load_records
from rosa.errors import DataError

COMMONSENSE_MIX_SIZE = 15_000

Records = list[dict[str, str]]


def commonsense_mix(data_dir: str | Path | None = None, seed: int = 42) -> Records:
    data_dir = resolve_data_dir(data_dir)
    rng = random.Random(seed)
    sources = []
    for known in COMMONSENSE_SOURCES.values():
        records = load_records(find_known(known, data_dir))
        rng.shuffle(records)
        sources.append(records)
    mix = _round_robin(sources, COMMONSENSE_MIX_SIZE)
    rng.shuffle(mix)
    return mix


def math_mix(data_dir: str | Path | None = None, seed: int = 42) -> Records:
    records = load_records(find_known(MATH_SOURCE, data_dir))
    random.Random(seed).shuffle(records)
    return records


MIXES: MappingProxyType[str, Callable[..., Records]] = MappingProxyType(
    {"commonsense_mix": commonsense_mix, "math_mix": math_mix}
)


def build_mix(name: str, data_dir: str | Path | None = None, seed: int = 42) -> Records:
    builder = MIXES.get(name.strip().lower())
    if builder is None:
        raise DataError(f"unknown mix {name!r}; known mixes are {', '.join(MIXES)}.")
    return builder(data_dir, seed)


def _round_robin(sources: list[Records], limit: int) -> Records:
    mix: Records = []
    depth = 0
    while len(mix) < limit:
        row = [records[depth] for records in sources if depth < len(records)]
        if not row:
            break
        mix.extend(row[: limit - len(mix)])
        depth += 1
    return mix
