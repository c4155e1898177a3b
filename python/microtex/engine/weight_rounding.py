"""Error-compensating rounding of int8 convolution weights (GPTQ).

Rounding each weight to its nearest int8 level (what ONNX Runtime's quantizer
does) is optimal weight by weight but not for the layer's output: the errors
of a filter's weights add up along the directions its inputs vary most. GPTQ
(Frantar et al., 2022, after Optimal Brain Surgeon) rounds a filter's weights
one input at a time and spreads each rounding error over the weights not yet
rounded, weighted by the inverse of the inputs' second moment
``H = E[x xᵀ]`` (estimated on calibration images), so that the filter's
output error ``(w − q)ᵀ H (w − q)`` stays small. The int8 scales are kept,
so the graph and its speed do not change; on VGG19 it cut the median error of
block_last's relu3_4 Gram from 0.56 % to 0.18 % and relu4_4's from 2.1 % to 1.4 %
(``benchmarks/README.md``).
"""

from __future__ import annotations

import numpy as np

from microtex.engine.export import node_attribute

__all__ = ["conv_input_moments", "gptq_round"]


def _patches(x: np.ndarray, kernel: tuple[int, int], pads, strides, dilations,
             positions: int, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Up to ``positions`` random receptive fields of one ``(channels, h, w)`` input,
    ``(n, channels * kh * kw)`` in the weights' order."""
    kh, kw = kernel
    padded = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_h = (padded.shape[1] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (padded.shape[2] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    if out_h <= 0 or out_w <= 0:
        return np.zeros((0, x.shape[0] * kh * kw), np.float32)
    count = min(positions, out_h * out_w)
    rows, cols = np.divmod(rng.choice(out_h * out_w, count, replace=False), out_w)
    dy = (np.arange(kh) * dilations[0])[None, :, None]
    dx = (np.arange(kw) * dilations[1])[None, None, :]
    top, left = (rows * strides[0])[:, None, None], (cols * strides[1])[:, None, None]
    fields = padded[:, top + dy, left + dx]
    return np.moveaxis(fields, 1, 0).reshape(count, -1)


def conv_input_moments(run, feeds, convs, weights: dict[str, np.ndarray], *,
                       positions: int = 1024, seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """``{conv name: Σ x xᵀ}`` (float64) over sampled receptive fields of each conv's input.

    ``run(feed)`` returns ``{tensor name: array}`` with every conv's input;
    ``weights[conv name]`` gives its kernel's shape. At most ``positions``
    output positions are sampled per image, so large images cost no more than
    small ones.
    """
    geometry = {}
    for conv in convs:
        auto_pad = node_attribute(conv, "auto_pad", b"NOTSET")
        if auto_pad not in (b"NOTSET", b""):
            raise ValueError(f"conv {conv.name!r}: auto_pad={auto_pad.decode()!r} is not "
                             "supported; export with explicit pads")  # fmt: skip
        geometry[conv.name] = (weights[conv.name].shape[2:],
                               node_attribute(conv, "pads", [0, 0, 0, 0]),
                               node_attribute(conv, "strides", [1, 1]),
                               node_attribute(conv, "dilations", [1, 1]))  # fmt: skip
    rng = np.random.default_rng(seed)
    moments: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = run(feed)
        for conv in convs:
            for x in values[conv.input[0]]:
                fields = _patches(np.asarray(x, np.float32), *geometry[conv.name], positions, rng)
                product = (fields.T @ fields).astype(np.float64)
                moments[conv.name] = moments.get(conv.name, 0) + product
    return moments


def gptq_round(weight: np.ndarray, scale: np.ndarray, moment: np.ndarray, *,
               damping: float = 0.01, block: int = 128) -> np.ndarray:  # fmt: skip
    """int8 levels of ``weight`` ``(filters, inputs)`` at per-filter ``scale`` (GPTQ).

    ``moment`` is ``(inputs, inputs)`` ``Σ x xᵀ``; ``damping`` times its mean
    diagonal is added for stability. Inputs are rounded in order of
    decreasing ``moment`` diagonal (the most active first), ``block`` at a
    time. Levels are clipped to [-127, 127], ONNX Runtime's symmetric int8 weight range
    (-128 would risk the uint8 × int8 products' saturation on CPUs without VNNI).
    """
    weight = np.array(weight, dtype=np.float64)
    n_filters, n_inputs = weight.shape
    moment = np.array(moment, dtype=np.float64)
    diagonal = np.diag(moment).copy()
    dead = diagonal <= 0  # inputs that never vary: their weights do not matter
    moment[dead, dead] = 1.0
    order = np.argsort(-diagonal, kind="stable")
    weight, moment = weight[:, order], moment[np.ix_(order, order)]
    moment[np.diag_indices(n_inputs)] += damping * max(float(np.mean(diagonal)), 1e-12)
    inverse = _upper_cholesky_of_inverse(moment)
    step = np.asarray(scale, dtype=np.float64).reshape(-1)
    if step.shape != (n_filters,) or not np.all(step > 0):
        raise ValueError(f"scale must be {n_filters} positive numbers, got shape {step.shape}")
    levels = np.zeros_like(weight)
    for start in range(0, n_inputs, block):
        stop = min(start + block, n_inputs)
        part = weight[:, start:stop].copy()
        errors = np.zeros_like(part)
        local = inverse[start:stop, start:stop]
        for k in range(stop - start):
            q = np.clip(np.round(part[:, k] / step), -127, 127)
            levels[:, start + k] = q
            error = (part[:, k] - q * step) / local[k, k]
            part[:, k:] -= np.outer(error, local[k, k:])
            errors[:, k] = error
        weight[:, stop:] -= errors @ inverse[start:stop, stop:]
    out = np.empty_like(levels)
    out[:, order] = levels
    return out.astype(np.int8)


def _upper_cholesky_of_inverse(moment: np.ndarray) -> np.ndarray:
    """Upper-triangular U with Uᵀ U = moment⁻¹.

    With J the order reversal, J·moment·J = L Lᵀ gives moment⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J),
    and J L⁻¹ J is upper triangular: one Cholesky factorization and one
    triangular inverse (float32 LAPACK), a third of inverting and factorizing again.
    """
    from scipy import linalg

    lower = linalg.cholesky(moment[::-1, ::-1].astype(np.float32), lower=True)
    inverse, info = linalg.lapack.strtri(lower, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular inverse failed (LAPACK info {info})")
    return np.ascontiguousarray(inverse[::-1, ::-1], dtype=np.float64)
