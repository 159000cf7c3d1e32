"""GGUF checkpoints (llama.cpp's format) as ordinary model inputs.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=name)``) by dequantising every tensor,
which takes tens of seconds even for a 135M model on a few CPU cores. rosa does that once per file:
the dequantised model and its tokenizer are saved as a plain Hugging Face directory under the cache
(``$ROSA_CACHE_DIR``, else ``~/.cache/rosa``), keyed by the file's SHA-256, and every later load
reads that directory. ``--model`` may name the ``.gguf`` file or a directory holding exactly one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rosa.errors import RoSAError

SUFFIX = ".gguf"
SOURCE_FILE = "gguf_source.json"  # in a cached directory: which file it was converted from


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file: the directory and file name transformers wants, and the file's SHA-256."""

    file: Path

    @property
    def directory(self) -> str:
        return str(self.file.parent)

    @property
    def name(self) -> str:
        return self.file.name


def gguf_source(name_or_path: str) -> GGUFSource | None:
    """The GGUF file ``name_or_path`` names (the file, or a directory with one and no ``config.json``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == SUFFIX:
        return GGUFSource(path.resolve())
    if path.is_dir() and not (path / "config.json").exists():
        files = sorted(path.glob(f"*{SUFFIX}"))
        if len(files) > 1:
            raise RoSAError(f"{path} holds several GGUF files ({', '.join(f.name for f in files)}); pass one of them as --model.")
        if files:
            return GGUFSource(files[0].resolve())
    return None


def cache_root() -> Path:
    return Path(os.environ.get("ROSA_CACHE_DIR") or Path.home() / ".cache" / "rosa")


def sha256(path: Path) -> str:
    """The file's SHA-256, read once per process for a file unchanged since (the tokenizer and the
    model of one command both ask, and a GGUF file can be many gigabytes)."""
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_config(source: GGUFSource, trust_remote_code: bool = False):
    """The model's config, read from the file's metadata (no tensor is dequantised).

    Parsed once per process for a file unchanged since, and handed out as a copy: the parse walks every
    metadata field (SmolLM2's 49,152-token vocabulary takes about 6 s), and ``rosa info`` and
    ``--match-params`` build the model on the meta device five times to count parameters at several ranks."""
    stat = source.file.stat()
    return copy.deepcopy(_gguf_config(source, stat.st_size, stat.st_mtime_ns, trust_remote_code))


@functools.lru_cache(maxsize=8)
def _gguf_config(source: GGUFSource, size: int, mtime_ns: int, trust_remote_code: bool):
    from transformers import AutoConfig

    with _explained(source):
        return AutoConfig.from_pretrained(source.directory, gguf_file=source.name, trust_remote_code=trust_remote_code)


def dequantised_directory(source: GGUFSource) -> Path:
    """The cached Hugging Face directory of ``source``, converting it on first use.

    The conversion is written to a private staging directory and published with one rename, so a
    killed conversion never leaves a half-written entry, and two processes converting the same file
    at once both end with the one entry that was published first.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rosa.serialization import current_umask

    digest = sha256(source.file)
    target = cache_root() / "gguf" / digest
    if (target / SOURCE_FILE).is_file():
        return target
    try:  # before the conversion, so an unwritable cache costs nothing
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=target.parent))
        os.chmod(staging, 0o777 & ~current_umask())  # a cache shared by a team, like the files in it
    except OSError as error:
        raise RoSAError(
            f"cannot write the converted model to {target.parent} ({error.strerror}); set ROSA_CACHE_DIR to a "
            "writable directory."
        ) from error
    try:
        with _explained(source):
            model = AutoModelForCausalLM.from_pretrained(source.directory, gguf_file=source.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source.directory, gguf_file=source.name)
        # The tensors are plain float32 now; the config only remembers where they came from.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps({"file": str(source.file), "sha256": digest}, indent=2))
        os.rename(staging, target)
    except OSError:
        if not (target / SOURCE_FILE).is_file():  # not another process's finished conversion: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _explained(source: GGUFSource) -> Iterator[None]:
    """transformers' errors for a file it cannot read, as one message naming the file and the fix."""
    try:
        yield
    except RoSAError:
        raise
    except (ValueError, KeyError, OSError, NotImplementedError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RoSAError(
            f"cannot read {source.file} as a GGUF model: {reason.rstrip('.')}. transformers dequantises the GGUF "
            "architectures and quantisation types it lists as supported; convert other files to a Hugging Face "
            "directory first."
        ) from error
