"""Output files written safely, whoever writes them (:mod:`~napari_deepblur.io`,
:mod:`~napari_deepblur.batch`, the command line).

- A disk that cannot take an output (full, over quota, read-only) is an
  :class:`OutputDiskError` whose message is a sentence naming the path; free space is
  checked before writing (:func:`check_free_space`) and a memory-mapped output gets its
  blocks before it is filled (:func:`reserve_blocks`: a full disk is then an error, not a
  SIGBUS).
- An output path that exists as a folder, a device or a pipe is never replaced
  (:func:`check_regular`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = [
    "DISK_ERRNOS",
    "OutputDiskError",
    "check_free_space",
    "check_regular",
    "disk_error",
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
