"""Long work as generators: the :class:`Progress` they yield, :func:`run`, which runs one to
its result, and :class:`ProgressBar`, the one place progress is drawn as text (the command
line, the training loops and the benchmarks; napari draws its own from the same
:class:`Progress`)."""

from __future__ import annotations

import sys
from collections.abc import Generator
from dataclasses import dataclass


@dataclass
class Progress:
    """A step of long work: ``done`` of ``total`` units (tiles, planes), with a message;
    ``total`` 0: a step before the work can be counted (preparing, loading)."""

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


#: The message of the step before the tiles count (resampling, ranging, measuring noise).
PREPARING = "preparing the image (resampling, noise level)"


class ProgressBar:
    """A text progress bar on stderr (tqdm) that draws each :class:`Progress` it is called
    with: ``done`` of ``total`` with ``message`` beside it; a new ``total`` starts a new
    bar. ``quiet``: nothing is drawn. ``leave``: the last bar stays on screen when closed.
    A context manager (closing the bar); :meth:`write` prints a line above the bar.

    >>> with ProgressBar("demo", quiet=True) as bar:
    ...     bar(Progress(1, 2, "half way"))
    """

    def __init__(self, desc: str = "", quiet: bool = False, unit: str = "step", leave=False):
        self.desc, self.quiet, self.unit, self.leave = desc, quiet, unit, leave
        self._bar = None

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        from tqdm.auto import tqdm

        if self._bar is None or (p.total and self._bar.total != p.total):
            self.close()
            self._bar = tqdm(
                total=p.total or None,  # a step before the work counts: no total yet
                desc=self.desc,
                unit=self.unit,
                leave=self.leave,
                file=sys.stderr,
            )
        if p.total:
            self._bar.n = p.done
        self._bar.set_postfix_str(p.message, refresh=False)
        self._bar.refresh()

    def write(self, text: str) -> None:
        """A line of text (on standard output) above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drive(generator: Generator, quiet: bool = False, desc: str = ""):
    """Run a generator of :class:`Progress` to its result, drawn as a :class:`ProgressBar`
    (none with ``quiet``); the generator is closed however it ends (an error, Ctrl-C)."""
    try:
        with ProgressBar(desc, quiet) as bar:
            return run(generator, bar)
    finally:
        generator.close()
