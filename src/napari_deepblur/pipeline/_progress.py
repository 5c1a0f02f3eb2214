"""Long work as generators: the :class:`Progress` they yield, and :func:`run`, which runs
one to its result."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass


@dataclass
class Progress:
    """A step of long work: ``done`` of ``total`` units (tiles, planes), with a message."""

    done: int
    total: int
    message: str = ""


def run(generator: Generator, progress=None):
    """Run a pipeline generator to the end and return its result; ``progress``, when given,
    is called with every item it yields (e.g. each :class:`Progress`)."""
    while True:
        try:
            step = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)
