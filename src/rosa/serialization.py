"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``, never pickle.

Tensors are keyed by decoder-layer index (``layers.3.q.A.weight``) rather than by the family's
module path, and the JSON records the base geometry so a mismatched base fails before any
tensor is copied.
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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from rosa.errors import AdapterLoadError, RoSAError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "rosa-roae"
# 2: the header records each layer group's measured rotary layout (rosa.roae.inject.BaseGeometry).
FORMAT_VERSION = 2


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
    the page cache. An older ``final`` is renamed aside and removed only once the new one is in
    place: at every instant a complete old or a complete new directory exists.
    """
    for path in sorted(staged.rglob("*"), reverse=True) + [staged]:
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


def save_adapter(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    directory = Path(directory)
    weights = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(weights, metadata={"format": FORMAT}))
    atomic_write_json(directory / CONFIG_NAME, {"format": FORMAT, "format_version": FORMAT_VERSION, **header})


def read_adapter_header(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AdapterLoadError(
            f"no {CONFIG_NAME} in '{directory}': not a RoSA adapter directory. Pass the directory that "
            "RoSAModel.save_pretrained wrote."
        )
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{path} is not valid JSON ({err}); the adapter is corrupted, save it again.") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("peft_type") or header.get("format") if isinstance(header, dict) else type(header).__name__
        raise AdapterLoadError(
            f"{path} is not a RoSA adapter (format={found!r}, expected {FORMAT!r}). PEFT adapters load with "
            "peft.PeftModel.from_pretrained."
        )
    version = header.get("format_version")
    if version == 1:
        raise AdapterLoadError(
            f"{path} was saved by an older rosa (format_version 1), which assumed every model pairs its RoPE "
            "dimensions rotate-half and did not record the layout it adapted (wrong on interleaved families such "
            "as Cohere or GLM). Train the adapter again with this rosa."
        )
    if version != FORMAT_VERSION:
        raise AdapterLoadError(
            f"{path} has format_version {version!r}; this rosa reads version {FORMAT_VERSION}. Upgrade rosa."
        )
    return header


def read_adapter_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterLoadError(f"no {WEIGHTS_NAME} in '{directory}'; the adapter directory is incomplete.")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupted. Restore it "
            "from a good copy or save the adapter again."
        ) from err
