"""The pipeline's warnings, and their collection per task.

A warning raised on a dask worker would reach that worker's log, not the user who ran the
batch; so a batch task collects its warnings (:func:`collect`) and returns them with its
result, and the batch reports them per file. Elsewhere they are ordinary Python warnings
(napari shows them as notifications, the CLI prints them as one line).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


def warn(message: str, category: type[Warning] = RuntimeWarning, stacklevel: int = 2) -> None:
    """Warn with ``message``; inside :func:`collect` (in this thread), add it to the
    collected messages instead (once)."""
    collected = getattr(_local, "messages", None)
    if collected is None:
        warnings.warn(message, category, stacklevel=stacklevel + 1)
    elif message not in collected:
        collected.append(message)


@contextmanager
def collect() -> Iterator[list[str]]:
    """Collect the messages of :func:`warn` raised in this thread, instead of warning."""
    previous = getattr(_local, "messages", None)
    _local.messages = []
    try:
        yield _local.messages
    finally:
        _local.messages = previous
