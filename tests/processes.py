"""Run ``rosa`` in real subprocesses and kill them with SIGKILL at chosen moments.

A kill must land mid-run, so a test may slow one function down inside the child (``slow=`` below):
the child imports rosa, wraps that function with a sleep, and then runs the ordinary CLI. Nothing
in rosa knows about it; only the timing changes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conftest import REPO

# one thread per child: the machine has 2 cores, and identical thread counts keep runs bit-identical
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}

_CHILD = """
import functools, importlib, sys, time
target, seconds, needle = {slow!r}
if target:
    module_name, attribute = target.rsplit(".", 1)
    owner_path, _, function_name = attribute.partition(":")
    module = importlib.import_module(module_name)
    owner = getattr(module, owner_path) if function_name else module
    name = function_name or owner_path
    original = getattr(owner, name)
    @functools.wraps(original)
    def slowed(*args, **kwargs):
        result = original(*args, **kwargs)
        if needle in repr((args, kwargs)):
            time.sleep(seconds)
        return result
    setattr(owner, name, slowed)
from rosa.cli import main
sys.exit(main({argv!r}))
"""


def start(argv: list[str], slow: tuple[str, float, str] | None = None) -> subprocess.Popen:
    """``rosa ARGV`` in a child process. ``slow=("module.Class:method", seconds, needle)`` sleeps after
    each call of that function (``"module.function"`` for a module-level one) whose arguments'
    ``repr`` contains ``needle`` ("" matches every call)."""
    code = _CHILD.format(slow=slow or ("", 0.0, ""), argv=list(argv))
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads would fill up and block a long run
    process = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def output(process: subprocess.Popen) -> str:
    process.log.seek(0)
    return process.log.read()


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rosa.cli", *argv], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``condition()`` holds; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (rc {process.returncode}) before it could be killed:\n{output(process)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError("the kill condition never held")
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def exists(path: Path) -> Callable[[], bool]:
    return path.exists


def has_lines(path: Path, count: int) -> Callable[[], bool]:
    return lambda: path.is_file() and path.read_text().count("\n") >= count
