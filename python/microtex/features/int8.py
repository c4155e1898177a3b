"""``precision="int8"``: calibrate a featurizer's network on images, and say what it costs.

:meth:`TextureFeaturizer.fit <microtex.TextureFeaturizer.fit>` with
``precision="int8"`` reads up to ``CALIBRATION_IMAGES`` images (cropped and
resized as the featurizer reads them) to quantize the float32 direct graph
(:func:`microtex.engine.quantize.quantize_static_int8`), and up to
``HELD_OUT_IMAGES`` more to measure the result against float32. The quantized
graph is cached under a hash of the float graph, the calibration images, the
layers kept in float32 (``float_layers``), the quantization code and the
onnx and onnxruntime versions, and travels in a bundle as its ``backbone.onnx``; the
accuracy report travels in the manifest. Pooling (Gram, mean, max, VLAD) runs
in float32 on the int8 graph's float32 outputs.

Without images (``fit(None)``, ``microtex calibrate`` with none given) the
network is calibrated on :func:`calibration_textures`, synthetic two-phase
fields, lamellae and gray-level textures built into microtex; the report
then says so (``"calibration": "built-in textures"``) and a warning notes that
images like the ones to be featurized calibrate better.

The report gives, per tap and pooling, the relative error ‖f − f₃₂‖ / ‖f₃₂‖
of each held-out image's feature vector (median and max over the images),
and the share of held-out images whose nearest neighbour (by the mean and
Gram features of every tap) is the same in int8 as in float32. As a yardstick
it also gives how far the float32 features themselves move when the same
images get Gaussian noise of one gray level of an 8-bit image
(``NOISE_SIGMA``): deep Gram features of small images move by several percent
under noise no one would see in the picture.
A warning is logged when the CPU lacks VNNI (int8 then gains little) and when
a median error exceeds ``TOLERANCE``.
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
    "NOISE_SIGMA",
    "TOLERANCE",
    "calibrate",
    "calibration_textures",
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
#: The yardstick's noise: one gray level of an 8-bit image (images are read into [0, 1]).
NOISE_SIGMA = 1 / 255
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


def calibration_textures(count: int = CALIBRATION_IMAGES + HELD_OUT_IMAGES,
                         size: int = 224) -> list[np.ndarray]:  # fmt: skip
    """``count`` synthetic ``size``² images in [0, 1] to calibrate int8 on without real ones.

    In turn: two-phase microstructures (thresholded Gaussian random fields,
    correlation length 1.5–12 px, 10–50 % second phase, 0.3–0.5 contrast,
    dark or bright matrix), lamellar marble textures (4–28
    stripes per side) and continuous gray-level fields with noise; the same
    images every call.
    """
    from microtex import synth

    rng = np.random.default_rng(20261130)
    images = []
    for i in range(count):
        kind, t = i % 3, (i // 3) / max(1, (count - 1) // 3)
        if kind == 0:
            length, fraction = 1.5 + 10.5 * t, 0.1 + 0.4 * rng.random()
            phase = synth.two_phase_field((size, size), length, fraction, seed=rng)
            soft = synth.gaussian_random_field((size, size), 1.0, seed=rng)  # grain-level shading
            low = rng.uniform(0.05, 0.45)
            high = low + rng.uniform(0.3, 0.5)
            low, high = (low, high) if i % 2 else (high, low)
            image = low + (high - low) * phase + 0.03 * soft
        elif kind == 1:
            image = synth.perlin_texture(size, k=4 + 24 * t, theta=rng.uniform(0, np.pi),
                                         amplitude=rng.uniform(0.5, 2.5), seed=rng)  # fmt: skip
        else:
            field = synth.gaussian_random_field((size, size), 2 + 14 * t, seed=rng)
            image = 0.5 + 0.18 * field + 0.05 * rng.standard_normal((size, size))
        image = image + 0.02 * rng.standard_normal((size, size))
        images.append(np.clip(image, 0, 1).astype(np.float32))
    return images


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


def _quantized_graph(float_path: pathlib.Path, calibration: list[np.ndarray],
                     float_layers: tuple[str, ...] = ()) -> pathlib.Path:  # fmt: skip
    import onnx
    import onnxruntime as ort

    from microtex import _files
    from microtex.engine import cache, metadata
    from microtex.engine.export import save_model
    from microtex.engine.quantize import QUANTIZATION, quantize_static_int8
    from microtex.engine.session import DISABLED_OPTIMIZERS

    key = {
        "kind": "int8-backbone",
        "float_graph_sha256": _files.sha256_file(float_path),
        "calibration_sha256": _digest(calibration),
        "quantization": QUANTIZATION,
        "float_layers": list(float_layers),
        "disabled_optimizers": list(DISABLED_OPTIMIZERS),  # bias correction runs sessions
        "code_sha256": _code_fingerprint(),
        "onnxruntime": ort.__version__,  # its quantizer made the graph
        "onnx": onnx.__version__,
    }

    def produce(path: pathlib.Path) -> None:
        model, record = quantize_static_int8(str(float_path), calibration,
                                             keep_float=float_layers)  # fmt: skip
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

    float32 = Session(float_path, device="cpu")
    reference = pooled_features(float32.run, images, taps)
    got = pooled_features(Session(int8_path, device="cpu").run, images, taps)
    errors = relative_errors(got, reference)
    rng = np.random.default_rng(0)
    noisy = [np.clip(image + rng.normal(0, NOISE_SIGMA, image.shape), 0, 1).astype(np.float32)
             for image in images]  # fmt: skip
    noise = relative_errors(pooled_features(float32.run, noisy, taps), reference)
    report = {
        "calibration_images": n_calibration,
        "test_images": len(images),
        "held_out": held_out,
        "relative_error": errors,
        "float32_noise": {"sigma": NOISE_SIGMA, "relative_error": noise},
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
    them (``"held_out": False`` in the report). ``images=None`` calibrates
    on :func:`calibration_textures` (224², or a tile; resized as images are).
    """
    from microtex.backbones.vgg import cached_onnx

    plan = pipeline.plan
    failures = [] if failures is None else failures
    builtin = images is None
    if builtin:
        images = calibration_textures(size=max(tiles[0] if tiles else 224, plan.min_side))
        log.warning("int8 calibrated on built-in synthetic textures; images like the ones you "
                    "will featurize calibrate better (fit on them, or microtex calibrate IMAGES)")
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
    int8_path = _quantized_graph(float_path, [image for _, image in calibration],
                                 plan.float_layers)  # fmt: skip
    measured = held or calibration
    report = _report(float_path, int8_path, [image for _, image in measured], plan.cnn_taps,
                     bool(held), len(calibration))  # fmt: skip
    report["calibration"] = "built-in textures" if builtin else "images"
    report["float_layers"] = list(plan.float_layers)

    def named(items):
        return [i.replace("array[", "texture[", 1) if builtin else i for i, _ in items]

    report["calibration_ids"], report["test_ids"] = named(calibration), named(measured)
    if report["cpu_vnni"] is False:
        log.warning("this CPU has no VNNI instructions: int8 runs little faster than float32 here")
    if not report["within_tolerance"]:
        worst = report["worst"]
        noise = report["float32_noise"]["relative_error"][worst["feature"]]["median"]
        log.warning(
            "int8 moves %s by %.1f %% (median relative error over %d images), more than the "
            "%.0f %% tolerance (one gray level of noise moves it by %.1f %% in float32); "
            "calibrate on more (and more typical) images, keep the deepest convolutions in "
            "float32 (float_layers, --float-layers) or use fp32",
            worst["feature"], 100 * worst["median"], report["test_images"], 100 * TOLERANCE,
            100 * noise,
        )  # fmt: skip
    if len(calibration) < CALIBRATION_IMAGES:
        log.warning("int8 calibrated on %d images; %d or more calibrate better",
                    len(calibration), CALIBRATION_IMAGES)  # fmt: skip
    return int8_path, report
