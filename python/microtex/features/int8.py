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

__all__ = ["CALIBRATION_IMAGES", "HELD_OUT_IMAGES", "TOLERANCE", "calibrate", "cpu_has_vnni"]

log = logging.getLogger("microtex.features")

#: Images the network is calibrated on, and images its error is measured on.
CALIBRATION_IMAGES = 20
HELD_OUT_IMAGES = 10
#: The largest median relative error of a tap's pooled features that passes silently.
TOLERANCE = 0.02
_REPORT_POOLS = ("mean", "max", "gram")


def cpu_has_vnni() -> bool | None:
    """Whether the CPU has AVX-512 VNNI or AVX-VNNI (None where /proc/cpuinfo cannot say)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), None)  # fmt: skip
    if flags is None:
        return None
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _images(plan, images, on_error: str, failures: list, count: int) -> list[np.ndarray]:
    """Up to ``count`` images as the featurizer reads them, large enough for its deepest tap."""
    from microtex.features.stream import iter_inputs
    from microtex.io.read import report_skip

    taken = []
    for image_id, image in iter_inputs(images, plan.crop_bottom, plan.image_size, on_error,
                                       failures):  # fmt: skip
        if min(image.shape) < plan.min_side:
            message = (
                f"image {image.shape[0]}x{image.shape[1]} is smaller than {plan.min_side} "
                f"pixels, the least that layer {plan.cnn_taps[-1]} needs"
            )
            if on_error == "skip" and not image_id.startswith("array["):
                report_skip(failures, image_id, message, log)
                continue
            raise ImageTooSmallError(f"{image_id}: {message}")
        taken.append(image)
        if len(taken) == count:
            break
    return taken


def _digest(images: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return digest.hexdigest()


@functools.cache
def _code_fingerprint() -> str:
    from microtex.engine import cache, quantize

    return cache.code_fingerprint([__file__, quantize.__file__])


def _quantized_graph(float_path: pathlib.Path, calibration: list[np.ndarray]) -> pathlib.Path:
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
    }

    def produce(path: pathlib.Path) -> None:
        model, record = quantize_static_int8(str(float_path), calibration)
        document = metadata.read_metadata(float_path)
        document.update(precision="int8", quantization=record)
        save_model(metadata.attach(model, document), path)

    return cache.cached_path(key, "vgg-int8", produce, what="int8 backbone",
                             record={"calibration_images": len(calibration)})  # fmt: skip


def _pooled(session, images, taps) -> dict[str, np.ndarray]:
    from microtex.features import pooling

    out: dict[str, list] = {}
    for image in images:
        result = session.run(image[None, None])
        for tap in taps:
            acts = result[tap]
            out.setdefault(f"{tap}/mean", []).append(pooling.mean_pool(acts)[0])
            out.setdefault(f"{tap}/max", []).append(pooling.max_pool(acts)[0])
            out.setdefault(f"{tap}/gram", []).append(pooling.gram(acts)[0])
    return {key: np.stack(rows).astype(np.float64) for key, rows in out.items()}


def _nearest(rows: np.ndarray) -> np.ndarray:
    distances = ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    return np.argmin(distances, axis=1)


def _report(float_path, int8_path, images, taps, held_out: bool, n_calibration: int) -> dict:
    from microtex.engine.session import Session

    reference = _pooled(Session(float_path, device="cpu"), images, taps)
    got = _pooled(Session(int8_path, device="cpu"), images, taps)
    errors = {}
    for key, ref in reference.items():
        norms = np.linalg.norm(ref, axis=1)
        relative = np.linalg.norm(got[key] - ref, axis=1) / np.where(norms > 0, norms, 1.0)
        errors[key] = {"median": float(np.median(relative)), "max": float(relative.max())}
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


def calibrate(pipeline, images, *, on_error: str = "raise",
              failures: list | None = None) -> tuple[pathlib.Path, dict]:  # fmt: skip
    """Quantize ``pipeline``'s network on ``images``; ``(int8 graph path, accuracy report)``.

    The first ``CALIBRATION_IMAGES`` readable images calibrate, the next
    ``HELD_OUT_IMAGES`` measure; with fewer, the error is measured on the
    calibration images themselves (``"held_out": False`` in the report).
    """
    from microtex.backbones.vgg import cached_onnx

    plan = pipeline.plan
    failures = [] if failures is None else failures
    taken = _images(plan, images, on_error, failures, CALIBRATION_IMAGES + HELD_OUT_IMAGES)
    if not taken:
        raise NoImagesError("no readable image to calibrate the int8 network on",
                            failures=failures)  # fmt: skip
    calibration = taken[:CALIBRATION_IMAGES]
    held = taken[CALIBRATION_IMAGES:]
    float_path = cached_onnx(plan.config, conv_algorithm="direct")
    int8_path = _quantized_graph(float_path, calibration)
    report = _report(float_path, int8_path, held or calibration, plan.cnn_taps, bool(held),
                     len(calibration))  # fmt: skip
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
