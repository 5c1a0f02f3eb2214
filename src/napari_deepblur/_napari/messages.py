"""Every exception as one sentence for a napari notification, saying what to do
(:func:`user_message`; typed exceptions, not their text, decide the advice), and
:func:`guarded`, which turns a job's errors into such sentences."""

from __future__ import annotations

from collections.abc import Generator


class UserError(ValueError):
    """An error whose message is already a sentence for the user (what went wrong, what
    to do)."""


def user_message(exc: BaseException, action: str = "") -> str:
    """One readable sentence for a notification (no traceback), saying what to do."""
    prefix = f"{action} failed: " if action else ""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, UserError):
        return prefix + _sentence(text)
    from ..devices import is_out_of_memory
    from ..models import ModelFileError, ModelNotFoundError
    from ..outputs import OutputExistsError

    if is_out_of_memory(exc):
        return prefix + (
            "the GPU ran out of memory. Choose the device 'cpu', close other programs that "
            "use the GPU, or use a smaller tile size."
        )
    if isinstance(exc, ModelFileError):
        return prefix + _sentence(text) + " Choose a shipped model or another model file."
    if isinstance(exc, ModelNotFoundError):
        return prefix + _sentence(text) + " Check the path, or choose a shipped model."
    if isinstance(exc, FileNotFoundError):
        return prefix + _sentence(text) + " Check the path."
    if isinstance(exc, OutputExistsError):
        return prefix + f"{exc.path} already exists. Choose another file name."
    if isinstance(exc, ValueError):
        return prefix + _sentence(text)
    return prefix + (
        f"unexpected {type(exc).__name__}: {_sentence(text)} Please report it (napari "
        "version, image size and the settings you used)."
    )


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def guarded(job: Generator, action: str) -> Generator:
    """Run ``job`` (``yield from``), turning any exception into a :class:`UserError` with a
    sentence (thread workers swallow RuntimeErrors raised by generators, so a CUDA
    out-of-memory error would otherwise never reach the user)."""
    try:
        return (yield from job)
    except Exception as exc:  # noqa: BLE001 - every error becomes a message
        raise UserError(user_message(exc, action)) from exc
