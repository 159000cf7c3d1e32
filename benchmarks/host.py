"""What machine a benchmark ran on, named well enough to tell two hosts of one kind apart: the same
command gave different ratios on an AMD EPYC and an Intel Xeon host of this project's 2-core kind."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


def cpu_machine() -> str:
    """``"<cpu>, <n> CPUs"``."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs"
