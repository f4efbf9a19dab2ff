"""The exception family of edgeseg: one class per failure class, each carrying its remedy and exit code.

Every error raised on purpose by edgeseg derives from :class:`EdgesegError`, so a caller (the watcher, the
command line) can catch the family and carry on. Messages name the file, series UID or key concerned and the fix
for that case. Each class carries what is the same for every error of its class:

* ``kind``: short machine-readable name, written as ``kind`` into ``<name>.edgeseg-error.json`` and the logs;
* ``exit_code``: the command line's exit status for it (distinct per class; the table is in the README);
* ``remedy``: what to do about this class of failure, written as ``what_to_do`` into the error file beside a
  series. It may name ``{device}``, ``{folder}`` and ``{log_file}``, filled in by :func:`remedy_for`.

Commands take their exit codes from here (``err.exit_code``, :data:`EXIT_FAILED`, ...), never from literals.
"""
from __future__ import annotations

from typing import Iterator, Sequence

#: exit status of a command that did what it was asked
EXIT_OK = 0
#: exit status after Ctrl+C / SIGINT (128 + 2, as shells report a process killed by SIGINT)
EXIT_INTERRUPTED = 130
#: exit status of ``segment`` on a folder of several series when some were segmented and others failed (each
#: failure is logged with its own reason; :func:`summary_exit_code`)
EXIT_SOME_FAILED = 17

#: what the remedy of an error that is not an :class:`EdgesegError` (a bug) says; may name ``{log_file}``
UNEXPECTED_REMEDY = ("Unexpected error (a bug in edgeseg): the log {log_file} has the details; please report it "
                     "with that file.")
#: ``kind`` recorded for an error that is not an :class:`EdgesegError`
UNEXPECTED_KIND = "internal"

#: what a remedy's placeholders say when the caller does not know the value
_CONTEXT_DEFAULTS = {"device": "the configured device", "folder": "the output folder", "log_file": "file"}


class EdgesegError(Exception):
    """Base class of every error edgeseg raises on purpose. Its exit code (1) is also the generic failure of a
    command (``watch --once`` with a failed series, ``doctor`` with a failed check)."""

    #: short machine-readable name used in error files and logs
    kind = "error"
    #: process exit code used by the command line
    exit_code = 1
    #: what to do about this class of failure (``what_to_do`` of the error file); see :func:`remedy_for`
    remedy = "See the error above; `edgeseg doctor` checks the installation."


class ConfigError(EdgesegError, ValueError):
    """A configuration file, flag or option is invalid (names the key path and the fix). Its exit code (2) is
    also the one of a command line that names no sub-command."""

    kind = "config"
    exit_code = 2
    remedy = ("Correct the key or flag the message names (every key of watch_config.yaml is explained by its "
              "comment) and start again.")


class ModelFolderError(EdgesegError):
    """An nnU-Net v2 results folder or release zip is missing files or does not match its checkpoint."""

    kind = "model_folder"
    exit_code = 3
    remedy = ("Give `edgeseg export` the nnU-Net v2 trained-model folder as nnU-Net wrote it (plans.json, "
              "dataset.json, fold_N/checkpoint_final.pth) or its release zip, and export again.")


class ExportError(EdgesegError):
    """The export pipeline (ONNX, OpenVINO conversion, quantization, validation) failed."""

    kind = "export"
    exit_code = 4
    remedy = ("Export again with -v to see the stage that failed; check the --calibration series and the free "
              "disk space where --out is written.")


class BundleError(EdgesegError):
    """A model bundle is missing, malformed, or its files do not match their recorded hashes."""

    kind = "bundle"
    exit_code = 5
    remedy = "The model bundle is damaged or incomplete: run `edgeseg doctor` and copy the bundle again."


class InvalidSeriesError(EdgesegError, ValueError):
    """An input series cannot be read as one 3-D volume (names the series and the reason)."""

    kind = "invalid_series"
    exit_code = 6
    remedy = ("This series cannot be segmented as it is. Check it on the scanner console (one complete 3-D "
              "series) and send it again.")


class InferenceError(EdgesegError):
    """OpenVINO could not compile or run the model on the requested device."""

    kind = "inference"
    exit_code = 7
    remedy = ("OpenVINO could not run the model on {device}: run `edgeseg doctor`; if it persists set device: CPU "
              "in watch_config.yaml.")


class OutputError(EdgesegError):
    """Results could not be written (disk full, permissions); nothing half-written is left behind."""

    kind = "output"
    exit_code = 8
    remedy = "Results could not be written: check free disk space and write permission in {folder}."


class MissingDependencyError(EdgesegError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    kind = "missing_dependency"
    exit_code = 9
    remedy = "This edgeseg installation is incomplete: reinstall it (with the extra the message names)."


class StateStoreError(EdgesegError):
    """The watcher's state folder or job store is damaged, empty or gone (names the path and the exact fix)."""

    kind = "state_store"
    exit_code = 10
    remedy = ("The watcher's state folder or job store is gone or damaged: run the command the message gives (it "
              "moves the damaged store aside), then start the watcher again.")


class WatcherRunningError(EdgesegError):
    """Another watcher holds the lock on the same state folder (names its pid and the folder)."""

    kind = "watcher_running"
    exit_code = 11
    remedy = ("Another watcher already uses this state folder: stop it first (`edgeseg status` shows its pid), or "
              "give this one a state_dir of its own.")


class SeriesTooLargeError(InvalidSeriesError):
    """A series' headers promise more voxels, frames or decompressed bytes than the configured limits allow."""

    kind = "too_large"
    exit_code = 12
    remedy = ("This series is larger than the limits: in watch_config.yaml allow for it (limits.max_voxels, "
              "limits.max_decompressed_mb, limits.max_frames) only if it is a genuine image this PC has the "
              "memory for; otherwise check the export on the scanner console.")


class TimeCeilingError(EdgesegError):
    """A series cannot finish, or did not finish, within the hard time ceiling per series."""

    kind = "time_ceiling"
    exit_code = 13
    remedy = ("This series cannot be segmented within time_ceiling_s on this PC. Raise time_ceiling_s in "
              "watch_config.yaml if a longer wait is acceptable, or segment it by hand with `edgeseg segment`.")


class SeriesInterruptedError(EdgesegError):
    """Segmenting a series stopped the watcher process repeatedly (out-of-memory kill, crash, forced stop)."""

    kind = "interrupted"
    exit_code = 14
    remedy = ("Segmenting this series stopped the watcher repeatedly (crash or out-of-memory kill). Check the "
              "series; re-copy it to try again, or segment it by hand with `edgeseg segment` to see the error.")


class OutOfMemoryError(EdgesegError, MemoryError):
    """The PC ran out of memory while segmenting a series."""

    kind = "out_of_memory"
    exit_code = 15
    remedy = ("This PC ran out of memory segmenting the series: close other programs, set max_concurrent_series: "
              "1 (and a smaller time_budget_s, which picks a lighter plan) in watch_config.yaml.")


class PartialResultError(EdgesegError):
    """A series was segmented, but some requested outputs could not be written: the result is *partial*. The
    written results are published; ``manifest.json`` has ``status: partial`` and the reason per missing output
    (``missing_outputs``), and the message names each missing output and why."""

    kind = "partial"
    exit_code = 16
    remedy = ("The series was segmented, but not every requested result could be written: the message names each "
              "missing one and why. The other results are in its .edgeseg folder; remove the cause named and send "
              "the series again to get the missing ones.")


class DicomNodeError(EdgesegError):
    """The DICOM node cannot do its work: the listener's port is taken or not allowed, its certificate does not
    load, or a destination does not answer a C-ECHO (names the address and the fix)."""

    kind = "dicom_node"
    exit_code = 18
    remedy = ("Check dicom_listener and destinations in watch_config.yaml against the console's and the PACS's "
              "DICOM node settings (AE title, host, port, TLS); `edgeseg doctor` tests the port and C-ECHOes every "
              "destination.")


class DeliveryError(EdgesegError):
    """A result could not be delivered to a destination: refused for good (unknown AE title, SOP class not
    supported) or still not accepted when it reached delivery.max_age_h (names the destination and the status)."""

    kind = "delivery"
    exit_code = 19
    remedy = ("The destination did not take the result: fix what the message names on the PACS (our AE title "
              "known to it, the SEG/SR SOP classes allowed) or in destinations, then `edgeseg deliver --retry` sends "
              "the failed deliveries again.")


#: exit status of a command that failed without one error class to name (the base class's code)
EXIT_FAILED = EdgesegError.exit_code
#: exit status of ``segment`` when every series was segmented but some result is partial (an output missing)
EXIT_PARTIAL = PartialResultError.exit_code


def error_classes() -> Iterator[type[EdgesegError]]:
    """:class:`EdgesegError` and every subclass (defined so far), depth first in definition order."""
    stack: list[type[EdgesegError]] = [EdgesegError]
    seen: set[type[EdgesegError]] = set()
    while stack:
        cls = stack.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        stack[:0] = cls.__subclasses__()


def exit_code_of(err: BaseException) -> int:
    """The exit code for ``err``: its class's ``exit_code`` for the family, :data:`EXIT_FAILED` otherwise."""
    return err.exit_code if isinstance(err, EdgesegError) else EXIT_FAILED


def kind_of(err: BaseException) -> str:
    """The ``kind`` for ``err``: its class's for the family, :data:`UNEXPECTED_KIND` otherwise."""
    return err.kind if isinstance(err, EdgesegError) else UNEXPECTED_KIND


def summary_exit_code(succeeded: int, partial: int, failures: Sequence[BaseException]) -> int:
    """The exit status of a command that segmented several series: :data:`EXIT_OK` when all ``succeeded``
    completely; :data:`EXIT_PARTIAL` when none failed but ``partial`` results lack an output; when some failed
    (``failures``, in order), :data:`EXIT_SOME_FAILED` if any other series was segmented (completely or partially),
    else the first failure's own code (:func:`exit_code_of`)."""
    if failures:
        return EXIT_SOME_FAILED if succeeded + partial else exit_code_of(failures[0])
    return EXIT_PARTIAL if partial else EXIT_OK


def remedy_for(err: BaseException | type[BaseException], **context: object) -> str:
    """The remedy of ``err``'s class with ``context`` filled in: ``device`` (the configured OpenVINO device),
    ``folder`` (where results are written), ``log_file``. An error outside the family is a bug
    (:data:`UNEXPECTED_REMEDY`). A placeholder without a value gets a neutral wording."""
    cls = err if isinstance(err, type) else type(err)
    template = cls.remedy if issubclass(cls, EdgesegError) else UNEXPECTED_REMEDY
    values = {**_CONTEXT_DEFAULTS, **{k: v for k, v in context.items() if v is not None}}
    return template.format_map(values)
