"""Files that are never half-written (temporary file, fsync, rename) and never pickled.

Adapters are PEFT's two files, ``adapter_config.json`` + ``adapter_model.safetensors``, written by
``PeftModel.save_pretrained``; everything else rosa writes (run and evaluation records, checkpoints
published as directories, figures) goes through the atomic helpers here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rosa.errors import RoSAError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``os.umask`` can only
    be read by setting it, which would briefly apply another mask to files other threads create)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename, so a kill never leaves half a file.

    The file gets the mode a plain ``open(path, "w")`` would give a new file (0666 less the umask);
    ``mkstemp`` alone would make every file private to its owner (0600), unreadable to a team sharing
    the run directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path, option: str) -> None:
    """Fail before any work, not at the first save an hour later, when ``path`` cannot be written
    (``option`` is the flag that chose it, for the message)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise RoSAError(
            f"cannot write {path}: {existing} is not writable ({err.strerror}). Choose a writable {option}."
        ) from err


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_directory(staged: Path, final: Path) -> None:
    """Make a completely written ``staged`` directory appear as ``final`` with one rename.

    Every file is flushed first, so the rename publishes content that is on disk rather than only in
    the page cache, and given the mode the umask allows. An older ``final`` is renamed aside and removed only once the new one is in
    place: at every instant a complete old or a complete new directory exists.
    """
    umask = current_umask()
    for path in sorted(staged.rglob("*"), reverse=True) + [staged]:
        # Whoever wrote the files (safetensors creates them 0600 whatever the umask), a published
        # directory gets the modes the umask allows, like every other file rosa writes.
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        _fsync(path)
    if final.exists():
        previous = final.with_name(f".{final.name}.old")
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(final, previous)
        os.rename(staged, final)
        shutil.rmtree(previous)
    else:
        os.rename(staged, final)
    _fsync(final.parent)


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Write a directory all or nothing: fill the yielded hidden sibling, which replaces ``final`` on
    success and is removed on any error, leaving ``final`` as it was. Like the files written into it,
    the directory gets the mode the umask allows (0777 less the umask), not a private temporary one."""
    staged = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(mode=0o777, parents=True)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish_directory(staged, final)


def atomic_write_json(path: Path, payload: Any, sort_keys: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n").encode())


def atomic_write_png(path: Path, figure: Any, **options: Any) -> Path:
    """Render a matplotlib figure in memory, then write it like any other file (never half a PNG)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **options)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object written by rosa (run.json, metrics.json, ...), or an error saying it is corrupted."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RoSAError(f"{path} is not valid JSON ({err}); the file is corrupted. Restore it or rerun the step that wrote it.") from err
    if not isinstance(payload, dict):
        raise RoSAError(f"{path} holds a {type(payload).__name__}, not a JSON object; the file is corrupted. Restore it or rerun the step that wrote it.")
    return payload
