"""Read an LLM-Adapters JSON file: a list of records with four string fields.

Every check happens at load time, so a bad file fails with its name, record index and field
before any model is loaded rather than as a KeyError halfway through training or evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

from rosa.errors import DataError

FIELDS = ("instruction", "input", "output", "answer")
FORMAT_HINT = "each record needs instruction, input, output and answer strings (the LLM-Adapters format)"

_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def load_records(path: str | Path) -> list[dict[str, str]]:
    """Records keep any extra fields, so richer files still load."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"{path} {what}; give the path of a JSON file whose top level is a list of records.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "fix the file or fetch a fresh copy."
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; LLM-Adapters files are UTF-8 JSON.") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level is {_kind(data)}, not a list; {FORMAT_HINT}, in one JSON list.")
    if not data:
        raise DataError(f"{path} contains no records; {FORMAT_HINT}.")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {index} is {_kind(record)}, not an object; {FORMAT_HINT}.")
        missing = [field for field in FIELDS if field not in record]
        if missing:
            names = ", ".join(repr(field) for field in missing)
            raise DataError(f"{path}: record {index} lacks field{'s' * (len(missing) > 1)} {names}; {FORMAT_HINT}.")
        for field in FIELDS:
            if not isinstance(record[field], str):
                raise DataError(
                    f"{path}: record {index} field {field!r} is {_kind(record[field])}, not a string; {FORMAT_HINT}."
                )
    return data


def _kind(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)
