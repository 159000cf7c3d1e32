"""Find the data dir and the files in it, and check them against their published SHA-256.

The data dir is only needed for names (``boolq``, ``math_mix``); a path to a JSON file never
touches it, so users with their own data need no setup. A missing file is reported with where it
comes from and its checksum, because the large upstream files are not always obtainable.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from rosa.data.catalog import (
    KNOWN_FILES, STAND_INS, TASKS, TEST_FILES, TRAINING_SETS, KnownFile, canonical_task,
)
from rosa.data.records import load_records
from rosa.errors import DataError

ENV_VAR = "ROSA_DATA_DIR"
DEFAULT_DATA_DIR = Path("..") / "shared" / "data" / "llm-adapters"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileCheck:
    """One known file: ``path`` is relative to the data dir (the layout it was found in)."""

    path: str
    status: str  # "ok", "mismatch" or "missing"
    expected_sha256: str
    actual_sha256: str | None
    expected_records: int | None


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """An explicit dir wins over ``ROSA_DATA_DIR``, which wins over the project's ``../shared`` default."""
    if explicit is not None:
        return _existing_dir(Path(explicit), "the data dir given")
    env = os.environ.get(ENV_VAR)
    if env:
        return _existing_dir(Path(env), f"the data dir in {ENV_VAR}")
    default = Path.cwd() / DEFAULT_DATA_DIR
    if default.is_dir():
        return default.resolve()
    raise DataError(
        "no LLM-Adapters data dir found; give one in any of three ways: pass it (data_dir=DIR, or "
        f"--data-dir DIR on the command line), set {ENV_VAR}=DIR, or run from a directory beside which "
        f"{DEFAULT_DATA_DIR} exists (looked for {default})."
    )


def task_file(task: str, data_dir: str | Path | None = None) -> Path:
    return find_known(TEST_FILES[canonical_task(task)], data_dir)


def train_file(name: str, data_dir: str | Path | None = None) -> Path:
    key = name.strip().lower()
    if key not in TRAINING_SETS:
        raise DataError(f"unknown training set {name!r}; known training sets are {', '.join(TRAINING_SETS)}.")
    hint = f" Meanwhile the seeded mix {STAND_INS[key]!r} stands in at small scale." if key in STAND_INS else ""
    return find_known(TRAINING_SETS[key], data_dir, hint)


def find_known(known: KnownFile, data_dir: str | Path | None = None, hint: str = "") -> Path:
    """The file in either layout (this project's, or an LLM-Adapters clone), or how to get it."""
    data_dir = resolve_data_dir(data_dir)
    found = _find(known, data_dir)
    if found is not None:
        return found
    looked = " and ".join(str(data_dir / rel) for rel in known.layouts)
    raise DataError(
        f"{known.path} is not in {data_dir}: looked for {looked}. It comes from {known.source_repo} at "
        f"commit {known.source_commit} ({known.source_path}), expected SHA-256 {known.sha256}; place a copy "
        f"at either path and check a copy with `rosa data verify --data-dir {data_dir}`.{hint}"
    )


def load_dataset(spec: str, data_dir: str | Path | None = None, seed: int = 42) -> list[dict[str, str]]:
    """``spec`` is a JSON file, or a training set, mix or task name (a task name means its test set)."""
    # Imported here because the mixes find their sources through this module.
    from rosa.data.mixes import MIXES, build_mix

    path = Path(spec).expanduser()
    if path.is_file() or path.suffix.lower() == ".json":
        return load_records(path)
    key = spec.strip().lower()
    if key in TRAINING_SETS:
        return load_records(train_file(key, data_dir))
    if key in MIXES:
        return build_mix(key, data_dir, seed)
    if key in {t.name.lower() for t in TASKS}:
        return load_records(task_file(key, data_dir))
    known = [*TRAINING_SETS, *MIXES, *(t.name for t in TASKS)]
    raise DataError(
        f"{spec!r} is neither an existing file nor a known dataset; give a path to a JSON file or one of "
        f"{', '.join(known)} (a task name loads its test set)."
    )


def verify_data_dir(data_dir: str | Path | None = None) -> list[FileCheck]:
    data_dir = resolve_data_dir(data_dir)
    checks = []
    for known in KNOWN_FILES:
        found = _find(known, data_dir)
        if found is None:
            checks.append(FileCheck(known.path, "missing", known.sha256, None, known.records))
            continue
        actual = _sha256(found)
        status = "ok" if actual == known.sha256 else "mismatch"
        rel = found.relative_to(data_dir).as_posix()
        checks.append(FileCheck(rel, status, known.sha256, actual, known.records))
    return checks


def _find(known: KnownFile, data_dir: Path) -> Path | None:
    for rel in known.layouts:
        candidate = data_dir / rel
        if candidate.is_file():
            return candidate
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _existing_dir(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.is_dir():
        problem = "is a file, not a directory" if path.exists() else "does not exist"
        raise DataError(f"{what}, {path}, {problem}; point it at a folder holding eval/<task>/test.json files.")
    return path.resolve()
