"""The exception family of edgeseg: one class per failure class, each message says what to do.

Every error raised on purpose by edgeseg derives from :class:`EdgesegError`, so a caller (the watcher, the
command line) can catch the family and carry on. Messages name the file, series UID or key concerned and the fix.
"""
from __future__ import annotations


class EdgesegError(Exception):
    """Base class of every error edgeseg raises on purpose."""

    #: short machine-readable name used in error files and logs
    kind = "error"
    #: process exit code used by the command line
    exit_code = 1


class ConfigError(EdgesegError, ValueError):
    """A configuration file, flag or option is invalid (names the key path and the fix)."""

    kind = "config"
    exit_code = 2


class ModelFolderError(EdgesegError):
    """An nnU-Net v2 results folder or release zip is missing files or does not match its checkpoint."""

    kind = "model_folder"
    exit_code = 3


class ExportError(EdgesegError):
    """The export pipeline (ONNX, OpenVINO conversion, quantization, validation) failed."""

    kind = "export"
    exit_code = 4


class BundleError(EdgesegError):
    """A model bundle is missing, malformed, or its files do not match their recorded hashes."""

    kind = "bundle"
    exit_code = 5


class InvalidSeriesError(EdgesegError, ValueError):
    """An input series cannot be read as one 3-D volume (names the series and the reason)."""

    kind = "invalid_series"
    exit_code = 6


class InferenceError(EdgesegError):
    """OpenVINO could not compile or run the model on the requested device."""

    kind = "inference"
    exit_code = 7


class OutputError(EdgesegError):
    """Results could not be written (disk full, permissions); nothing half-written is left behind."""

    kind = "output"
    exit_code = 8


class MissingDependencyError(EdgesegError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    kind = "missing_dependency"
    exit_code = 9


class StateStoreError(EdgesegError):
    """The watcher's state folder or job store is damaged, empty or gone (names the path and the exact fix)."""

    kind = "state_store"
    exit_code = 10


class WatcherRunningError(EdgesegError):
    """Another watcher holds the lock on the same state folder (names its pid and the folder)."""

    kind = "watcher_running"
    exit_code = 11


class SeriesTooLargeError(InvalidSeriesError):
    """A series' headers promise more voxels, frames or decompressed bytes than the configured limits allow."""

    kind = "too_large"
    exit_code = 12


class TimeCeilingError(EdgesegError):
    """A series cannot finish, or did not finish, within the hard time ceiling per series."""

    kind = "time_ceiling"
    exit_code = 13


class SeriesInterruptedError(EdgesegError):
    """Segmenting a series stopped the watcher process repeatedly (out-of-memory kill, crash, forced stop)."""

    kind = "interrupted"
    exit_code = 14


class OutOfMemoryError(EdgesegError, MemoryError):
    """The PC ran out of memory while segmenting a series."""

    kind = "out_of_memory"
    exit_code = 15
