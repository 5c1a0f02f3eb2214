"""The ``deepblur`` command line.

One module per command group (:mod:`.images`: identify, deblur, batch; :mod:`.psf`,
:mod:`.demo`, :mod:`.bench`, :mod:`.train`, :mod:`.evaluate`, :mod:`.field`: calibrate and
field-family), what they share in :mod:`.common` (optics arguments, overwrite checks,
progress bars). Each subcommand is one ``add_<name>_parser(subparsers)`` function that
registers its parser and sets ``func`` (``args -> int | None``) as a default;
:data:`SUBCOMMANDS` lists them. Expected user
errors (missing or existing files, bad values, undersampled optics, a disk that cannot take
an output) are reported as ``deepblur: error: <message>`` on stderr with exit code 2, without
a traceback.

No Qt or napari here; heavy modules are imported inside the subcommands.
"""

from __future__ import annotations

import argparse
import sys
import threading
import warnings
import zlib
from collections.abc import Callable, Sequence

from .. import __version__
from ..outputs import DISK_ERRNOS
from .bench import add_bench_parser
from .demo import add_demo_parser
from .evaluate import add_evaluate_parser
from .field import add_calibrate_parser, add_field_family_parser
from .images import add_batch_parser, add_deblur_parser, add_identify_parser
from .psf import add_psf_parser
from .train import add_train_parser

#: Errors that are the user's to fix: reported in one line, exit code 2.
USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


#: Parser registrations, in the order shown by ``deepblur --help``.
SUBCOMMANDS: list[Callable] = [
    add_demo_parser,
    add_identify_parser,
    add_deblur_parser,
    add_batch_parser,
    add_psf_parser,
    add_train_parser,
    add_evaluate_parser,
    add_calibrate_parser,
    add_field_family_parser,
    add_bench_parser,
]


class _Parser(argparse.ArgumentParser):
    """``deepblur``'s parsers (subcommands included): a usage error is one line like every
    other error, and options are never abbreviated (an abbreviation that is unique today
    becomes ambiguous when an option is added, and a subcommand's option can be taken for
    an abbreviation of its parent's: ``bench psf --batch``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"deepblur: error: {message} (see: {self.prog} --help)\n")


def _chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The innermost (sub)parser that ``args`` went through: ``deepblur bench psf`` → psf's."""
    chosen = True
    while chosen:
        chosen = False
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(args, action.dest, None)
                if name in action.choices:
                    parser, chosen = action.choices[name], True
                    break
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="deepblur",
        description="Estimate the blur of a microscope from a single image and remove it "
        "(Deep-Blur).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deepblur`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.
    A SIGTERM (``kill``) is handled like Ctrl-C: temporary output files are cleaned up."""
    import signal

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    formatwarning, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = formatwarning
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings (a constant plane copied, refinement skipped, a CUDA out-of-memory
    fallback) read like the errors: one line, no source path."""
    return f"deepblur: warning: {message}\n"


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()  # imports torch: seconds, and a Ctrl-C may come meanwhile
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named by the parser it was given to, so the hint is its own --help
            given = list(sys.argv[1:] if argv is None else argv)
            before_command = given.index(unknown[0]) < given.index(args.command)
            chosen = parser if before_command else _chosen_parser(parser, args)
            chosen.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in model cards
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    except KeyboardInterrupt:
        print("deepblur: interrupted", file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"deepblur: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk that cannot take an output is the user's to fix too;
        if exc.errno not in DISK_ERRNOS:  # other OSErrors keep the traceback that helps
            raise
        where = f": {exc.filename}" if exc.filename else ""  # ours name it in the sentence
        print(f"deepblur: error: {exc.strerror}{where}", file=sys.stderr)
        return 2
    except zlib.error as exc:  # a damaged tile of a compressed TIFF, read lazily mid-run
        print(f"deepblur: error: part of the image could not be decompressed (a damaged "
              f"file?): {exc}", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print("deepblur: interrupted (unfinished outputs were not written)", file=sys.stderr)
        return 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
