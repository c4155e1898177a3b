"""ONNX Runtime sessions: execution providers, device resolution and threads.

Every network microtex runs at inference time goes through :class:`Session`,
whatever the model: it feeds named inputs, checked against the shapes the ONNX
file declares, and returns named outputs.

``device="auto"`` takes CUDA when ``onnxruntime-gpu`` is installed and a GPU
answers, and falls back to the CPU otherwise (logged on ``microtex.engine.session``);
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
_SAID = {"no cuda": False}

# ONNX Runtime's element type names -> NumPy dtypes inputs are converted to.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


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
            value = env
        return check_positive_int("MICROTEX_NUM_THREADS", value)
    if _CPUS is None or _CPUS[0] != os.getpid():
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            count = os.cpu_count() or 1
        _CPUS = (os.getpid(), count)
    return _CPUS[1]


#: ONNX Runtime optimizers no session runs. ``WeightBiasQuantization`` (ONNX Runtime
#: 1.20+) re-quantizes a float conv between DequantizeLinear and QuantizeLinear, the
#: shape of an int8 graph with a layer kept in float32; in 1.32 that moved VGG19's
#: features by 30-45 %. Float graphs have no such conv, so nothing else changes.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


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
        if device == "auto" and not _SAID["no cuda"]:  # once a process, not per session
            _SAID["no cuda"] = True
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
    input_names : tuple of str
    input_name : str
        The first input (the only one of a backbone: ``"image"``).
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
            self._session = ort.InferenceSession(
                self.path, sess_options=options, providers=providers,
                disabled_optimizers=list(DISABLED_OPTIMIZERS),
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            if device == "auto" and providers[0] != CPU:
                log.warning("CUDA session failed (%s); falling back to the CPU", exc)
                self._session = ort.InferenceSession(
                    self.path, sess_options=options, providers=[CPU],
                    disabled_optimizers=list(DISABLED_OPTIMIZERS),
                )
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
        # a failed run (e.g. out of memory) raises with ONNX Runtime's message;
        # printing it to stderr as well would repeat it outside microtex's report
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        self.input_names = tuple(self._inputs)
        self.input_name = self.input_names[0]
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(
        self, inputs: np.ndarray | Mapping[str, np.ndarray], outputs=None
    ) -> dict[str, np.ndarray]:
        """Run the network.

        Parameters
        ----------
        inputs : array or dict of str to array
            One array for a model with a single input, or a dict input name ->
            array. Each is converted to a C-contiguous array of the input's
            declared element type (float32 for ``tensor(float)``) and checked
            against its declared shape (rank and fixed sizes), e.g. a
            backbone's ``"image"`` ``(batch, 1, height, width)`` in [0, 1].
        outputs : sequence of str, optional
            Output names to compute; default all, in the model's order.

        Returns
        -------
        dict of str to numpy.ndarray
            Output name -> array.

        Raises
        ------
        ValueError
            An input of the wrong shape (the message names the expected and
            the given shape), an unknown or missing input name, or a single
            array for a model with several inputs.
        """
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(self.input_names))
            missing = [name for name in self.input_names if name not in inputs]
            if unknown or missing:
                raise ValueError(
                    f"inputs must be named {list(self.input_names)}; "
                    f"unknown: {unknown}, missing: {missing}"
                )
            feed = {name: self._checked(name, value) for name, value in inputs.items()}
        else:
            if len(self.input_names) != 1:
                raise ValueError(
                    f"{self.path!r} has {len(self.input_names)} inputs "
                    f"{list(self.input_names)}; pass a dict name -> array"
                )
            feed = {self.input_name: self._checked(self.input_name, inputs)}
        names = list(self.output_names if outputs is None else outputs)
        values = self._session.run(names, feed, self._run_options)
        return dict(zip(names, values, strict=True))

    def _checked(self, name: str, value) -> np.ndarray:
        """``value`` as the C-contiguous array input ``name`` takes, its shape checked."""
        declared = self._inputs[name]
        dtype = _ORT_DTYPES.get(declared.type)
        array = np.ascontiguousarray(value, dtype=dtype)
        shape = declared.shape
        if shape is not None and (
            array.ndim != len(shape)
            or any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape, strict=True))
        ):
            expected = ", ".join("?" if d is None else str(d) for d in shape)
            raise ValueError(f"input {name!r} must have shape ({expected}); got {array.shape}")
        return array

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
