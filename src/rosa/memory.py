"""Peak memory of a stretch of work, comparable between runs that share one process.

``rosa train`` records it per run (a sweep trains many runs in one process) and
``benchmarks/train_step.py`` per variant. On CUDA it is the allocator's ``max_memory_allocated``;
on Linux CPUs the process's peak resident set (VmHWM), which ``/proc/self/clear_refs`` resets to the
current RSS; elsewhere only the whole process's maximum RSS is known, and the kind says so.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int | None:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), flags=re.MULTILINE) if _STATUS.is_file() else None
    return int(match.group(1)) * 1024 if match else None


def in_use(device: torch.device) -> int | None:
    """Bytes in use now (CUDA: allocated tensors; CPU: resident set), None where unknown."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_bytes("VmRSS")


def reset_peak(device: torch.device) -> bool:
    """Start the peak at the current usage; False where the platform cannot (the peak then stays the process's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak(device: torch.device, was_reset: bool) -> tuple[int, str]:
    """The peak since :func:`reset_peak`, in bytes, with the kind of memory it counts."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max allocated"
    high_water = _status_bytes("VmHWM") if was_reset else None
    if high_water is not None:
        return high_water, "process peak RSS while training"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024, "process max RSS (whole process)"  # macOS: bytes
