"""``precision="int8"``: calibrate a featurizer's network on images, and say what it costs.

:meth:`TextureFeaturizer.fit <microtex.TextureFeaturizer.fit>` with
``precision="int8"`` reads up to ``CALIBRATION_IMAGES`` images (cropped and
resized as the featurizer reads them) to quantize the float32 direct graph
(:func:`microtex.engine.quantize.quantize_static_int8`), and up to
``HELD_OUT_IMAGES`` more to measure the result against float32. The quantized
graph is cached under a hash of the float graph, the calibration images and
the quantization code, and travels in a bundle as its ``backbone.onnx``; the
accuracy report travels in the manifest. Pooling (Gram, mean, max, VLAD) runs
in float32 on the int8 graph's float32 outputs.

The report gives, per tap and pooling, the relative error ‖f − f₃₂‖ / ‖f₃₂‖
of each held-out image's feature vector (median and max over the images),
and the share of held-out images whose nearest neighbour (by the mean and
Gram features of every tap) is the same in int8 as in float32. A warning is
logged when the CPU lacks VNNI (int8 then gains little) and when a median
error exceeds ``TOLERANCE``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pathlib

import numpy as np

from microtex.errors import ImageTooSmallError, NoImagesError

__all__ = [
    "CALIBRATION_IMAGES",
    "HELD_OUT_IMAGES",
    "TOLERANCE",
    "calibrate",
    "cpu_flags",
    "cpu_has_vnni",
    "pooled_features",
    "relative_errors",
]

log = logging.getLogger("microtex.features")

#: Images the network is calibrated on, and images its error is measured on.
CALIBRATION_IMAGES = 20
HELD_OUT_IMAGES = 10
#: The largest median relative error of a tap's pooled features that passes silently.
TOLERANCE = 0.02
_REPORT_POOLS = ("mean", "max", "gram")


def cpu_flags() -> list[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where it cannot be read)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].split() for line in text.splitlines()
                 if line.startswith("flags")), None)  # fmt: skip


def cpu_has_vnni() -> bool | None:
    """Whether the CPU has AVX-512 VNNI, AVX-VNNI or AMX int8 (None where it cannot say)."""
    flags = cpu_flags()
    if flags is None:
        return None
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _spread(n: int, k: int) -> list[int]:
    """``k`` positions spread evenly over ``range(n)`` (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _images(plan, images, on_error: str, failures: list, count: int,
            tiles: tuple[int, int] | None = None) -> list[tuple[str, np.ndarray]]:  # fmt: skip
    """Up to ``count`` ``(id, image)`` as the featurizer reads (or tiles) them, spread evenly.

    Inputs are visited evenly spaced first (so that folders sorted by class or
    condition calibrate on all of them), then the rest in order, until
    ``count`` are taken. With ``tiles`` each input gives at most its share of
    patches, themselves spread over the image; without, an image too small
    for the deepest tap or over ``plan.max_pixels`` is skipped (files) or
    raises, as featurizing it would.
    """
    from microtex.errors import ImageTooLargeError
    from microtex.features.stream import input_list, iter_inputs
    from microtex.io.preprocess import tile
    from microtex.io.read import report_skip

    inputs, files = input_list(images)
    first = _spread(len(inputs), count)
    order = first + [i for i in range(len(inputs)) if i not in set(first)]
    share = max(1, -(-count // max(1, min(len(inputs), count))))
    taken: list[tuple[str, np.ndarray]] = []
    for index in order:
        for image_id, image in iter_inputs([inputs[index]], plan.crop_bottom, plan.image_size,
                                           on_error, failures):  # fmt: skip
            image_id = image_id if files else f"array[{index}]"
            shape = f"{image.shape[0]}x{image.shape[1]}"
            if tiles is not None:
                size, stride = tiles
                if min(image.shape) < size:
                    problem, error = f"image {shape} is smaller than one {size}x{size} tile", None
                else:
                    patches, origins = tile(image, size, stride)
                    for j in _spread(len(patches), share):
                        row, col = origins[j]
                        taken.append((f"{image_id}@{row},{col}", patches[j]))
                    problem = None
            elif min(image.shape) < plan.min_side:
                problem = (f"image {shape} is smaller than {plan.min_side} pixels, the least "
                           f"that layer {plan.cnn_taps[-1]} needs")  # fmt: skip
                error = ImageTooSmallError
            else:
                problem, error = plan.too_large(*image.shape), ImageTooLargeError
                if problem is None:
                    taken.append((image_id, image))
            if problem is not None:
                if on_error == "skip" and files:
                    report_skip(failures, image_id, problem, log)
                else:
                    raise (error or ImageTooSmallError)(f"{image_id}: {problem}")
        if len(taken) >= count:
            break
    return taken[:count]


def _digest(images: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return digest.hexdigest()


@functools.cache
def _code_fingerprint() -> str:
    from microtex.engine import cache, quantize, weight_rounding

    return cache.code_fingerprint([__file__, quantize.__file__, weight_rounding.__file__])


def _quantized_graph(float_path: pathlib.Path, calibration: list[np.ndarray]) -> pathlib.Path:
    import onnx
    import onnxruntime as ort

    from microtex import _files
    from microtex.engine import cache, metadata
    from microtex.engine.export import save_model
    from microtex.engine.quantize import QUANTIZATION, quantize_static_int8

    key = {
        "kind": "int8-backbone",
        "float_graph_sha256": _files.sha256_file(float_path),
        "calibration_sha256": _digest(calibration),
        "quantization": QUANTIZATION,
        "code_sha256": _code_fingerprint(),
        "onnxruntime": ort.__version__,  # its quantizer made the graph
        "onnx": onnx.__version__,
    }

    def produce(path: pathlib.Path) -> None:
        model, record = quantize_static_int8(str(float_path), calibration)
        document = metadata.read_metadata(float_path)
        document.update(precision="int8", quantization=record)
        save_model(metadata.attach(model, document), path)

    return cache.cached_path(key, "vgg-int8", produce, what="int8 backbone",
                             record={"calibration_images": len(calibration)})  # fmt: skip


def pooled_features(run, images, taps) -> dict[str, np.ndarray]:
    """``{"{tap}/{mean|max|gram}": (n_images, n_features)}`` float64 of each image, one at a time.

    ``run(batch)`` gives ``{tap: activations}`` for a ``(1, 1, H, W)`` batch
    (an ONNX Runtime session's ``run``, or any other runtime's); Gram is G/M,
    upper triangle.
    """
    from microtex.features import pooling

    out: dict[str, list] = {}
    for image in images:
        result = run(np.ascontiguousarray(image, dtype=np.float32)[None, None])
        for tap in taps:
            acts = np.ascontiguousarray(result[tap], dtype=np.float32)
            out.setdefault(f"{tap}/mean", []).append(pooling.mean_pool(acts)[0])
            out.setdefault(f"{tap}/max", []).append(pooling.max_pool(acts)[0])
            out.setdefault(f"{tap}/gram", []).append(pooling.gram(acts)[0])
    return {key: np.stack(rows).astype(np.float64) for key, rows in out.items()}


def relative_errors(got: dict, reference: dict) -> dict[str, dict[str, float]]:
    """Per feature block: median and max over images of ‖f − f_ref‖ / ‖f_ref‖."""
    errors = {}
    for key, ref in reference.items():
        norms = np.linalg.norm(ref, axis=1)
        relative = np.linalg.norm(got[key] - ref, axis=1) / np.where(norms > 0, norms, 1.0)
        errors[key] = {"median": float(np.median(relative)), "max": float(relative.max())}
    return errors


def _nearest(rows: np.ndarray) -> np.ndarray:
    distances = ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    return np.argmin(distances, axis=1)


def _report(float_path, int8_path, images, taps, held_out: bool, n_calibration: int) -> dict:
    from microtex.engine.session import Session

    reference = pooled_features(Session(float_path, device="cpu").run, images, taps)
    got = pooled_features(Session(int8_path, device="cpu").run, images, taps)
    errors = relative_errors(got, reference)
    report = {
        "calibration_images": n_calibration,
        "test_images": len(images),
        "held_out": held_out,
        "relative_error": errors,
        "tolerance": TOLERANCE,
        "cpu_vnni": cpu_has_vnni(),
    }
    if len(images) >= 3:
        # every block weighted alike: each scaled by its float32 norm over the images
        keys = [k for k in reference if not k.endswith("/max")]
        scales = {k: np.linalg.norm(reference[k]) or 1.0 for k in keys}
        nearest_32 = _nearest(np.hstack([reference[k] / scales[k] for k in keys]))
        nearest_8 = _nearest(np.hstack([got[k] / scales[k] for k in keys]))
        report["nearest_neighbour_agreement"] = float(np.mean(nearest_32 == nearest_8))
    worst = max(errors, key=lambda k: errors[k]["median"])
    report["worst"] = {"feature": worst, **errors[worst]}
    report["within_tolerance"] = errors[worst]["median"] <= TOLERANCE
    return report


def calibrate(pipeline, images, *, on_error: str = "raise", failures: list | None = None,
              tiles: tuple[int, int] | None = None) -> tuple[pathlib.Path, dict]:  # fmt: skip
    """Quantize ``pipeline``'s network on ``images``; ``(int8 graph path, accuracy report)``.

    Up to ``CALIBRATION_IMAGES + HELD_OUT_IMAGES`` readable images (or tiles)
    are taken, spread over the inputs; ``HELD_OUT_IMAGES`` of them, spread over
    those, measure and the rest calibrate. With fewer than
    ``CALIBRATION_IMAGES + 1``, all calibrate and the error is measured on
    them (``"held_out": False`` in the report).
    """
    from microtex.backbones.vgg import cached_onnx

    plan = pipeline.plan
    failures = [] if failures is None else failures
    taken = _images(plan, images, on_error, failures, CALIBRATION_IMAGES + HELD_OUT_IMAGES,
                    tiles)  # fmt: skip
    if not taken:
        raise NoImagesError("no readable image to calibrate the int8 network on",
                            failures=failures)  # fmt: skip
    n_held = max(0, min(HELD_OUT_IMAGES, len(taken) - CALIBRATION_IMAGES))
    held_at = set(_spread(len(taken), n_held + 2)[1:-1]) if n_held else set()
    held = [taken[i] for i in sorted(held_at)]
    calibration = [item for i, item in enumerate(taken) if i not in held_at]
    float_path = cached_onnx(plan.config, conv_algorithm="direct")
    int8_path = _quantized_graph(float_path, [image for _, image in calibration])
    measured = held or calibration
    report = _report(float_path, int8_path, [image for _, image in measured], plan.cnn_taps,
                     bool(held), len(calibration))  # fmt: skip
    report["calibration_ids"] = [i for i, _ in calibration]
    report["test_ids"] = [i for i, _ in measured]
    if report["cpu_vnni"] is False:
        log.warning("this CPU has no VNNI instructions: int8 runs little faster than float32 here")
    if not report["within_tolerance"]:
        worst = report["worst"]
        log.warning(
            "int8 moves %s by %.1f %% (median relative error over %d images), more than the "
            "%.0f %% tolerance; calibrate on more (and more typical) images or use fp32",
            worst["feature"], 100 * worst["median"], report["test_images"], 100 * TOLERANCE,
        )  # fmt: skip
    if len(calibration) < CALIBRATION_IMAGES:
        log.warning("int8 calibrated on %d images; %d or more calibrate better",
                    len(calibration), CALIBRATION_IMAGES)  # fmt: skip
    return int8_path, report
