"""Deprecated: the 0.1 home of the ONNX Runtime sessions; use :mod:`microtex.engine.session`.

Removed in 0.3.
"""

import warnings

from microtex.engine.session import (
    CPU,
    CUDA,
    DEVICES,
    Session,
    available_providers,
    resolve_device,
    shared_session,
)

__all__ = [
    "CPU",
    "CUDA",
    "DEVICES",
    "Session",
    "available_providers",
    "resolve_device",
    "shared_session",
]

warnings.warn(
    "microtex.runtime is deprecated and will be removed in 0.3; use microtex.engine.session",
    FutureWarning,
    stacklevel=2,
)
