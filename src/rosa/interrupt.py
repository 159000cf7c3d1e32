"""Ctrl-C: which phase a ``KeyboardInterrupt`` cut, so the command line can say what was kept.

Library code marks the phases whose interruption changes that answer (``@during(LOADING_MODEL)``);
the ``KeyboardInterrupt`` that leaves such a phase carries its name (the innermost one) to
``rosa.cli.main``, which prints one line instead of a traceback (see ``rosa.cli.interrupted``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

LOADING_MODEL = "loading the model"
_ATTRIBUTE = "rosa_phase"


@contextlib.contextmanager
def during(phase: str) -> Iterator[None]:
    """Label a ``KeyboardInterrupt`` raised inside this block (or decorated function) with ``phase``,
    unless a phase nested inside already labelled it."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        if getattr(interrupt, _ATTRIBUTE, None) is None:
            setattr(interrupt, _ATTRIBUTE, phase)
        raise


def interrupted_phase(interrupt: BaseException) -> str | None:
    """The phase ``interrupt`` cut, or None when no marked phase was running."""
    return getattr(interrupt, _ATTRIBUTE, None)
