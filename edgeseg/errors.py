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
