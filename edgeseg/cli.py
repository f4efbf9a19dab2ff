"""The ``edgeseg`` command line. The only place that configures logging.

Sub-commands are registered by the stage that owns them (export, runtime, watcher); heavy modules are imported
only when their sub-command runs, so ``edgeseg segment`` never imports torch. The help text the user sees is
:data:`DESCRIPTION` and :data:`EPILOG` (written for the radiographer or PACS administrator who runs it; developer
notes belong here, not there).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any, Callable, Sequence

from edgeseg import __version__
from edgeseg.errors import EXIT_INTERRUPTED, EXIT_OK, ConfigError, EdgesegError

log = logging.getLogger("edgeseg")

#: what ``edgeseg --help`` opens with: what the program does, for the people who install and run it
DESCRIPTION = """\
edgeseg segments MRI series (organs and other structures) on this computer.
It works offline: it needs no internet connection and sends results only to
the DICOM destinations you configure. It reads DICOM, NIfTI or Philips PAR/REC
series and writes beside each one a label map, a DICOM SEG, a DICOM SR report
of the structures' volumes and a preview picture. As a DICOM node it can
receive images from the scanner and send the results to a PACS."""

#: the end of ``edgeseg --help``: how to start and where to read on
EPILOG = """\
getting started:
  edgeseg demo                  see it work on the demo MRI that comes with it
  edgeseg doctor --config FILE  check this computer, the model, the folders
                                and the DICOM connections
  edgeseg watch --config FILE   run hands-free: segment every series that
                                arrives
  edgeseg segment INPUT         segment one series (a DICOM folder, a NIfTI
                                or PAR file)

Each command explains its options: edgeseg COMMAND --help.
The manual (installation, the watcher's settings, the DICOM node, exit codes
and error files) is in the docs/ folder that comes with edgeseg."""

# (name, module, function) of every sub-command's parser-registration function
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("edgeseg.export.commands", "add_parsers"),
    ("edgeseg.runtime.commands", "add_parsers"),
    ("edgeseg.runtime.watch.commands", "add_parsers"),
    ("edgeseg.runtime.demo", "add_parsers"),
    ("edgeseg.runtime.oneshot.commands", "add_parsers"),
)


# C0/C1 control characters but tab (CR, LF, ESC of ANSI sequences, ...), Unicode line separators, lone surrogates
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of an OS name (surrogateescape): the byte itself
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\r``, ``\\x1b``) and undecodable bytes of
    file names as ``\\xNN``: a DICOM attribute or a file name can neither forge a log line nor send terminal
    escape sequences."""
    return text if text.isprintable() else _UNSAFE.sub(_escape_char, text)


class SafeFormatter(logging.Formatter):
    """The one log format. Whatever a message holds (SeriesDescription, PatientName, file names), a record is one
    line: control characters in the message are escaped; traceback and stack lines are escaped the same way except
    their line breaks, and indented, so that only a record's first line starts at column 0."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return self._block(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self._block(super().formatStack(stack_info))

    @staticmethod
    def _block(text: str) -> str:
        return "\n".join("  " + escape_controls(line) for line in text.split("\n"))


def configure_logging(verbosity: int, log_file: str | None = None) -> None:
    """Human-readable structured lines: time, level, logger, message (key=value pairs inside the message), one line
    per record whatever the message holds (:class:`SafeFormatter`)."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        from logging.handlers import RotatingFileHandler

        handlers.append(RotatingFileHandler(log_file, maxBytes=10_000_000, backupCount=5, encoding="utf-8"))
    formatter = SafeFormatter(fmt, datefmt="%Y-%m-%dT%H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    if verbosity < 2:  # third-party chatter (highdicom logs every copied module at INFO) only with -vv
        for name in ("highdicom", "nncf", "PIL"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="edgeseg", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module, func in _COMMANDS:
        try:
            register: Callable[[argparse._SubParsersAction], None] = getattr(importlib.import_module(module), func)
        except ModuleNotFoundError as err:  # a stage not shipped in this build (e.g. export in the frozen app)
            if err.name and module.startswith(err.name):
                if module == "edgeseg.export.commands":
                    _add_missing_export_parser(sub)
                continue
            raise
        register(sub)
    return parser


def _add_missing_export_parser(sub: argparse._SubParsersAction) -> None:
    """``edgeseg export`` in a build without the export stage (the frozen runtime): say how to get it."""
    p = sub.add_parser("export", help="not in this runtime build (needs the export extra on a build machine)",
                       add_help=False, prefix_chars="\0")  # no option prefix: every argument, --help too, is taken
    p.add_argument("args", nargs="*")
    p.set_defaults(func=_missing_export)


def _missing_export(args: argparse.Namespace) -> int:
    from edgeseg.errors import MissingDependencyError

    raise MissingDependencyError(
        "The export stage is not part of this runtime build; install edgeseg with the export extra on a build "
        "machine: pip install 'edgeseg[export]'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose, getattr(args, "log_file", None))
    if not getattr(args, "func", None):
        parser.print_help()
        return ConfigError.exit_code  # a usage error, as argparse's own
    try:
        return int(args.func(args) or EXIT_OK)
    except EdgesegError as err:
        log.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        log.warning("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
