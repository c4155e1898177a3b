"""Exceptions a user can cause. Each message names the offending value."""

from __future__ import annotations

__all__ = [
    "MicrotexError",
    "ImageReadError",
    "ImageTooSmallError",
    "ImageTooLargeError",
    "UnknownLayerError",
    "WeightsError",
    "BundleError",
    "DeviceError",
    "NoImagesError",
    "DatasetMismatchError",
    "DatasetBusyError",
]


class MicrotexError(Exception):
    """Base class of microtex's own errors."""


class ImageReadError(MicrotexError, OSError):
    """An image file is missing, truncated, corrupt or of an unsupported kind."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


class ImageTooSmallError(MicrotexError, ValueError):
    """An image too small for what was asked of it (e.g. a crop of all its rows).

    A batch reports it for that file and goes on, like an unreadable file.
    """


class ImageTooLargeError(MicrotexError, ValueError):
    """An image too large for the memory a job may use (``max_pixels``), or out of memory."""


class UnknownLayerError(MicrotexError, ValueError):
    """A layer (tap) name the backbone does not have."""


class WeightsError(MicrotexError, ValueError):
    """A weight file that is missing, unreadable, or does not match the architecture."""


class BundleError(MicrotexError, ValueError):
    """A model bundle or cached ONNX file whose manifest or checksums do not match."""


class DeviceError(MicrotexError, RuntimeError):
    """An execution device (e.g. ``cuda``) that was asked for but is not available."""


class NoImagesError(MicrotexError, ValueError):
    """A job that got no readable image at all.

    ``failures`` lists the files that were skipped (:class:`microtex.io.ReadFailure`).
    """

    def __init__(self, message: str, failures: list | None = None):
        super().__init__(message)
        self.failures = list(failures or [])


class DatasetMismatchError(MicrotexError, ValueError):
    """A sharded dataset folder made by another job (configuration, inputs or shard size).

    Resuming would mix rows of two jobs; the message names what differs
    (``--overwrite`` starts the job over).
    """


class DatasetBusyError(MicrotexError, RuntimeError):
    """A sharded dataset folder is in use by another running job (its lock is held).

    Two jobs on one folder would overwrite each other's manifest entries.
    """
