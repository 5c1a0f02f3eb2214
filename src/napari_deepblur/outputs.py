"""Output files written safely, whoever writes them (:mod:`~napari_deepblur.io`,
:mod:`~napari_deepblur.batch`, the command line).

- A disk that cannot take an output (full, over quota, read-only) is an
  :class:`OutputDiskError` whose message is a sentence naming the path; free space is
  checked before writing (:func:`check_free_space`) and a memory-mapped output gets its
  blocks before it is filled (:func:`reserve_blocks`: a full disk is then an error, not a
  SIGBUS).
- An output path that exists as a folder, a device or a pipe is never replaced
  (:func:`check_regular`), nor an existing file unless asked (:func:`check_new`: the one
  "refuse to overwrite" check, an :class:`OutputExistsError`); :func:`check_outputs` checks
  a command's outputs together before any work (new, distinct, not an input, in a folder
  we may write in).
- One writer at a time: :func:`claim_output` locks an output for a run, across threads,
  processes and (through the file system's locks) machines; the temporary files a killed
  writer left behind are removed by the next one to claim the output.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "DISK_ERRNOS",
    "OutputBusyError",
    "OutputDiskError",
    "OutputExistsError",
    "check_free_space",
    "check_new",
    "check_outputs",
    "check_regular",
    "claim_output",
    "disk_error",
    "remove_partial_files",
    "reserve_blocks",
]


#: A disk that cannot take an output: full, over quota, read-only.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class OutputDiskError(OSError):
    """An output the disk cannot take (``errno`` one of :data:`DISK_ERRNOS`), its message a
    sentence naming the path: ``str()`` is that sentence."""

    def __str__(self) -> str:
        return str(self.strerror)


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def check_free_space(path, nbytes: int) -> None:
    """OutputDiskError unless the folder of ``path`` has ``nbytes`` free (an output is
    written whole into a temporary file first, whether it replaces a file or not)."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:  # not a folder we can measure: the write itself will tell
        return
    if nbytes > free:
        raise OutputDiskError(
            errno.ENOSPC,
            f"not enough space on {path.parent}: the output {path.name} needs "
            f"{_megabytes(nbytes)}, {_megabytes(free)} free",
        )


def disk_error(exc: OSError, path: Path) -> OutputDiskError:
    """``exc`` (its ``errno`` one of :data:`DISK_ERRNOS`) as a sentence naming ``path``."""
    if isinstance(exc, OutputDiskError):
        return exc
    what = {
        errno.ENOSPC: f"the disk is full while writing {path}",
        errno.EDQUOT: f"the disk quota is exceeded while writing {path}",
        errno.EROFS: f"cannot write {path}: its file system is read-only",
    }[exc.errno]
    return OutputDiskError(exc.errno, what)


def reserve_blocks(path: Path) -> None:
    """Give the (sparse) file ``path`` its disk blocks now, so that a full disk is an
    OSError here, not a SIGBUS when a memory map later writes into a hole. Skipped where
    the system or the file system cannot (the free-space check before is then all)."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        allocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def check_regular(path) -> None:
    """Refuse an output path that exists as something other than a regular file (a
    folder, a device such as ``/dev/full``, a pipe): renaming a new file over it would
    replace it, ``overwrite`` or not."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name for the output")
    if path.exists() and not path.is_file():
        raise FileExistsError(
            f"{path} exists and is not a regular file (a device or a pipe): outputs are "
            "written as new files, so give the path of a file"
        )


class OutputExistsError(FileExistsError):
    """An output that exists, which was not to be replaced (``overwrite`` not given);
    ``path``: the output."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        super().__init__(
            f"{self.path} already exists; pass --overwrite (overwrite=True) to replace it"
        )

    def __reduce__(self):  # pickled with its path (dask sends a worker's errors back)
        return type(self), (self.path,)


def check_new(path, overwrite: bool = False) -> None:
    """The one "refuse to overwrite" check: :class:`OutputExistsError` when ``path`` exists
    and ``overwrite`` is not given, and never a path that is not a regular file
    (:func:`check_regular`), ``overwrite`` or not."""
    path = Path(path)
    check_regular(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)


def check_outputs(paths, overwrite: bool, inputs=()) -> None:
    """Before any work: each output path (None: skipped) passes :func:`check_new`, lies in an
    existing folder we may write in, and is neither an input nor another output."""
    taken = {Path(p).resolve(): f"the input {p}" for p in inputs}
    for path in (Path(p) for p in paths if p is not None):
        if path.resolve() in taken:
            raise ValueError(f"{path} would replace {taken[path.resolve()]}; choose another path")
        taken[path.resolve()] = f"the other output {path}"
        check_new(path, overwrite)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"the output folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(
                f"cannot write in the output folder {path.parent} (no permission, or a "
                "read-only disk)"
            )


def remove_partial_files(path) -> list[Path]:
    """Delete the temporary ``.<name>.<id>.partial`` files of ``path`` (left by a writer that
    was killed before it could clean up); returns what was deleted. Only for a caller that
    holds :func:`claim_output` on ``path``: a live writer's are deleted too."""
    path = Path(path)
    found = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.partial"))
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return found


class OutputBusyError(FileExistsError):
    """Another writer (a thread, a process, another machine) holds the output's claim."""


try:
    import fcntl
except ImportError:  # Windows: the claim holds between the threads of one process only
    fcntl = None
_CLAIMED: set[Path] = set()  # this process's claims (threads), whatever the file system
_CLAIMED_LOCK = threading.Lock()


@contextmanager
def claim_output(path, also=()) -> Iterator[None]:
    """The right to write ``path`` (and ``also``, the files that go with it, such as its
    estimate) while the block runs, for one writer at a time: an exclusive ``flock`` on the
    hidden ``.<name>.lock`` beside it, which the system releases when its holder dies
    (``kill -9`` included), and is removed at the end. The temporary files of ``path`` and
    ``also`` found on entry were left by a writer that died: they are removed.

    OutputBusyError when another writer holds it.
    """
    path = Path(path)
    key = path.resolve()
    busy = OutputBusyError(
        f"{path} is being written by another run (deepblur deblur or batch): wait for it "
        "to finish, or write elsewhere"
    )
    with _CLAIMED_LOCK:
        if key in _CLAIMED:
            raise busy
        _CLAIMED.add(key)
    try:
        fd, lock = _lock(path, busy)
        try:
            for p in (path, *also):
                remove_partial_files(p)
            yield
        finally:
            if fd is not None:
                lock.unlink(missing_ok=True)  # while locked: no other writer holds it now
                os.close(fd)
    finally:
        with _CLAIMED_LOCK:
            _CLAIMED.discard(key)


def _lock(path: Path, busy: Exception) -> tuple[int | None, Path]:
    """The descriptor of the locked ``.<name>.lock`` of ``path`` (None without ``fcntl``)."""
    lock = path.parent / f".{path.name}.lock"
    if fcntl is None:
        return None, lock
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            raise disk_error(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy from None
        except OSError as exc:  # a file system without locks: one writer is assumed
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            return fd, lock
        try:  # the holder before us removes the file it locked: ours must still be there
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd, lock
        except FileNotFoundError:
            pass
        os.close(fd)
