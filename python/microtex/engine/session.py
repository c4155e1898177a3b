"""ONNX Runtime sessions: execution providers, device resolution and threads (DESIGN.md §2).

Every network microtex runs at inference time goes through :class:`Session`.
``device="auto"`` takes CUDA when ``onnxruntime-gpu`` is installed and a GPU
answers, and falls back to the CPU otherwise (logged on ``microtex.runtime``);
``device="cuda"`` where CUDA is not available is a :class:`~microtex.errors.DeviceError`.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same Python module;
to switch, ``pip uninstall -y onnxruntime && pip install onnxruntime-gpu``
(or the ``microtex[gpu]`` extra after uninstalling ``onnxruntime``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from microtex._validation import check_choice, check_positive_int
from microtex.errors import DeviceError

__all__ = [
    "DEVICES",
    "Session",
    "available_providers",
    "check_threads",
    "default_threads",
    "resolve_device",
    "runs_on_cpu",
    "shared_session",
]

log = logging.getLogger("microtex.engine.session")

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# cuDNN's exhaustive algorithm search runs again for every new input shape and
# can stall for seconds on a micrograph of an unseen size; the heuristic choice
# is within a few percent for VGG's 3x3 convolutions.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "cudnn_conv_use_max_workspace": "1"}


_CPUS: tuple[int, int] | None = None  # (pid, CPUs it may use)


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise ImportError("microtex needs onnxruntime: pip install onnxruntime") from exc
    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers the installed ONNX Runtime offers."""
    return list(_ort().get_available_providers())


def default_threads() -> int:
    """Threads for inference and the kernels when none are given.

    ``MICROTEX_NUM_THREADS`` if set (read on every call), else the CPUs this
    process may run on (read once per process).
    """
    global _CPUS
    env = os.environ.get("MICROTEX_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"MICROTEX_NUM_THREADS must be an integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"MICROTEX_NUM_THREADS must be >= 1, got {value}")
        return value
    if _CPUS is None or _CPUS[0] != os.getpid():
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            count = os.cpu_count() or 1
        _CPUS = (os.getpid(), count)
    return _CPUS[1]


def check_threads(n_threads: int | None) -> int:
    """``n_threads`` checked, or :func:`default_threads` for None."""
    if n_threads is None:
        return default_threads()
    return check_positive_int("n_threads", n_threads, allow_none=True)


def runs_on_cpu(device: str = "auto") -> bool:
    """Whether ``device`` resolves to the CPU with the installed ONNX Runtime."""
    return resolve_device(device)[0] == CPU


def resolve_device(device: str = "auto") -> list:
    """Provider list for ``device``: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Raises
    ------
    ValueError
        Unknown device name.
    DeviceError
        ``"cuda"`` asked for but the installed ONNX Runtime has no CUDA provider.
    """
    check_choice("device", device, DEVICES)
    have_cuda = CUDA in available_providers()
    if device == "cuda" and not have_cuda:
        raise DeviceError(
            "device='cuda' asked for, but the installed onnxruntime has no CUDAExecutionProvider "
            f"(available: {available_providers()}); install onnxruntime-gpu instead of onnxruntime"
        )
    if device == "cpu" or (device == "auto" and not have_cuda):
        if device == "auto":
            log.info("no CUDA execution provider in onnxruntime; running on the CPU")
        return [CPU]
    return [(CUDA, dict(CUDA_OPTIONS)), CPU]


class Session:
    """An ONNX Runtime inference session over one ONNX file.

    Parameters
    ----------
    path : path-like
        The ONNX file.
    device : {"auto", "cpu", "cuda"}
    n_threads : int, optional
        Intra-op threads on the CPU (default: the CPUs this process may use).

    Attributes
    ----------
    providers : list of str
        Providers the session actually uses, in priority order.
    device : str
        ``"cuda"`` or ``"cpu"``: where the network runs.
    input_name : str
    output_names : tuple of str
    """

    def __init__(self, path, device: str = "auto", n_threads: int | None = None):
        ort = _ort()
        providers = resolve_device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = check_threads(n_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; microtex logs what matters
        # ONNX Runtime's worker threads spin for tens of milliseconds after Run()
        # returns, waiting for more work; the pooling kernels and image decoding
        # that follow a run then share the cores with them. Spinning within a
        # run (between operators) is kept.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.path = os.fspath(path)
        try:
            self._session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            if device == "auto" and providers[0] != CPU:
                log.warning("CUDA session failed (%s); falling back to the CPU", exc)
                self._session = ort.InferenceSession(self.path, sess_options=options, providers=[CPU])
            else:
                raise
        self.providers = list(self._session.get_providers())
        if device == "cuda" and CUDA not in self.providers:
            raise DeviceError(
                f"device='cuda' asked for, but ONNX Runtime could not start CUDA for {self.path!r} "
                "(no GPU, or CUDA/cuDNN libraries missing)"
            )
        if device == "auto" and providers[0] != CPU and CUDA not in self.providers:
            log.warning("CUDA provider present but not usable; running on the CPU")
        self.device = "cuda" if CUDA in self.providers else "cpu"
        self.input_name = self._session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, batch: np.ndarray, outputs=None) -> dict[str, np.ndarray]:
        """Run the network on a batch ``(n, 1, height, width)`` float32 in [0, 1].

        Returns a dict output name -> array.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"batch must have shape (n, 1, height, width); got {batch.shape}")
        names = list(self.output_names if outputs is None else outputs)
        values = self._session.run(names, {self.input_name: batch})
        return dict(zip(names, values))

    def metadata(self) -> Mapping[str, str]:
        """The ONNX file's custom metadata (``metadata_props``)."""
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def __repr__(self) -> str:
        return f"Session({self.path!r}, providers={self.providers})"


_SHARED: OrderedDict = OrderedDict()
_SHARED_LOCK = threading.Lock()
_SHARED_MAX = 4  # each session holds its network's weights (tens of MB)


def shared_session(path, device: str = "auto", n_threads: int | None = None) -> Session:
    """A :class:`Session` reused across callers for the same file, device and threads.

    Building a session costs tenths of a second (graph optimization, first-run
    allocations); featurizing many small folders one after the other should
    not pay that every time. The few most recently used sessions are kept; a
    file changed on disk (size or modification time) gets a new session.
    """
    stat = os.stat(path)
    key = (os.path.abspath(os.fspath(path)), stat.st_size, stat.st_mtime_ns, device, n_threads)
    with _SHARED_LOCK:
        session = _SHARED.get(key)
        if session is not None:
            _SHARED.move_to_end(key)
            return session
    session = Session(path, device=device, n_threads=n_threads)
    with _SHARED_LOCK:
        _SHARED[key] = session
        _SHARED.move_to_end(key)
        while len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)
    return session
