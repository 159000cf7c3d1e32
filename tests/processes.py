"""Run ``rosa`` in real subprocesses and kill them with SIGKILL (or interrupt them with SIGINT, as
Ctrl-C does) at chosen moments.

A kill must land at a chosen moment, so the test holds the child there (``hold=`` below): the child
imports rosa, wraps one function so that it stops for good at a chosen call and says so on disk, and
then runs the ordinary CLI; the test kills it there (``kill_when(child, held(child))``). Nothing in
rosa knows about it, and nothing depends on how fast the machine is: a kill cannot land late, and no
deadline but a hang guard is involved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

# one thread per child: the machine has 2 cores, and identical thread counts keep runs bit-identical
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}

_CHILD = """
import functools, importlib, sys, time
hold_target, hold_when, hold_after, hold_marker = {hold!r}
if hold_target:
    import os
    module_name, attribute = hold_target.rsplit(".", 1)
    owner_path, _, function_name = attribute.partition(":")
    module = importlib.import_module(module_name)
    hold_owner = getattr(module, owner_path) if function_name else module
    hold_name = function_name or owner_path
    hold_original = getattr(hold_owner, hold_name)
    hold_calls = [0]
    def stop_here():
        open(hold_marker, "w").close()
        parent = os.getppid()
        while os.getppid() == parent:  # until killed; a child whose parent died ends itself
            time.sleep(0.05)
        os._exit(70)
    @functools.wraps(hold_original)
    def holding(*args, **kwargs):
        needle, number = hold_when
        due = False
        if needle is None or needle in repr((args, kwargs)):
            hold_calls[0] += 1
            due = hold_calls[0] == number
        if due and not hold_after:
            stop_here()
        result = hold_original(*args, **kwargs)
        if due:
            stop_here()
        return result
    setattr(hold_owner, hold_name, holding)
from rosa.cli import main
sys.exit(main({argv!r}))
"""


def start(argv: list[str], hold: Hold | None = None) -> subprocess.Popen:
    """``rosa ARGV`` in a child process. ``hold=Hold(...)`` stops the child at one call of a function until it is killed (see :class:`Hold`);
    ``held(process)`` then holds."""
    hold_dir = tempfile.TemporaryDirectory(prefix="rosa-hold-")  # removed with the process object
    hold_spec = ((hold.target, (hold.needle, hold.call), hold.after, str(Path(hold_dir.name) / "held")) if hold
                 else ("", (None, 0), False, ""))
    code = _CHILD.format(hold=hold_spec, argv=list(argv))
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads would fill up and block a long run
    err = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=REPO, stdout=log, stderr=err, text=True)
    process.log, process.err, process.hold_dir = log, err, hold_dir
    return process


@dataclass(frozen=True)
class Hold:
    """Where a child stops for good: at the ``call``-th call (1 for the first) of ``target``
    (``"module.Class:method"``, or ``"module.function"`` for a module-level one) among those whose
    arguments' ``repr`` contains ``needle`` (None: every call), before the call runs or, with
    ``after``, once it has returned."""

    target: str
    call: int = 1
    needle: str | None = None
    after: bool = False


def held(process: subprocess.Popen) -> Callable[[], bool]:
    """Whether the child started with ``hold=`` has reached its hold (it stays there until killed)."""
    marker = Path(process.hold_dir.name) / "held"
    return marker.exists


def output(process: subprocess.Popen) -> str:
    """What the child printed: its stdout, then its stderr."""
    process.log.seek(0)
    return process.log.read() + errors(process)


def errors(process: subprocess.Popen) -> str:
    """What the child printed on stderr."""
    process.err.seek(0)
    return process.err.read()


# Deadlines are hang guards only, never a measure of speed: a loaded machine may run many times slower
# than a quiet one, and nothing may fail for that.
HANG_GUARD = 1800.0


def run(argv: list[str], timeout: float | None = HANG_GUARD) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rosa.cli", *argv], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout: float = HANG_GUARD, sig: int = signal.SIGKILL) -> None:
    """SIGKILL ``process`` (or send it ``sig``) as soon as ``condition()`` holds, and wait for it to end;
    fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (rc {process.returncode}) before it could be killed:\n{output(process)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError("the kill condition never held")
        time.sleep(0.01)
    os.kill(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the process did not end after signal {sig}:\n{output(process)}") from None


def exists(path: Path) -> Callable[[], bool]:
    return path.exists


def has_lines(path: Path, count: int) -> Callable[[], bool]:
    return lambda: path.is_file() and path.read_text().count("\n") >= count
