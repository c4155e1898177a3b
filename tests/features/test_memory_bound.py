"""The memory bound of a featurization: max_pixels, the peak estimate, out of memory per file."""

from __future__ import annotations

import json
import logging
import textwrap

import numpy as np
import pytest
from PIL import Image

from microtex import TextureFeaturizer, featurize
from microtex.backbones import BackboneConfig, peak_bytes_per_pixel
from microtex.engine import memory
from microtex.engine.session import Session
from microtex.errors import ImageTooLargeError, NoImagesError
from microtex.features import plan as plan_module
from microtex.features.plan import make_plan
from microtex.features.stream import batches

from _helpers import run_python

SHALLOW = {"taps": "relu1_1,relu2_1", "pool": "mean,gram", "device": "cpu"}


def _png(path, shape, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def mixed_dir(tmp_path):
    """Two 40x40 images around one 60x80 (4800 pixels), sorted a, b_big, c."""
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "a.png", (40, 40), 1)
    _png(folder / "b_big.png", (60, 80), 2)
    _png(folder / "c.png", (40, 40), 3)
    return folder


# ---------------------------------------------------------------- the estimate and the default
def test_peak_estimate_counts_the_trunk_and_every_tap():
    direct = peak_bytes_per_pixel(BackboneConfig(taps="relu1_1"), "direct")
    assert direct == 4 * (160 + 64)
    both = peak_bytes_per_pixel(BackboneConfig(taps=("relu1_1", "relu3_1")), "direct")
    assert both == 4 * (160 + 64 + 256 / 16)
    # the Winograd graph holds more; relu1_1 alone has no layer to rewrite
    deep = BackboneConfig(taps="relu3_1")
    assert peak_bytes_per_pixel(deep, "winograd") > peak_bytes_per_pixel(deep, "direct")
    assert peak_bytes_per_pixel(deep, "auto") == peak_bytes_per_pixel(deep, "winograd")
    assert peak_bytes_per_pixel(BackboneConfig(taps="relu1_1"), "winograd") == direct


def test_auto_max_pixels_fits_half_the_machines_memory(monkeypatch):
    monkeypatch.setattr(plan_module, "memory_budget", lambda: 1 << 30)
    plan = make_plan(taps="relu1_1", conv_algorithm="direct")
    assert plan.max_pixels == (1 << 30) // (4 * (160 + 64))
    monkeypatch.setattr(plan_module, "memory_budget", lambda: 1 << 32)
    assert make_plan(taps="relu1_1", conv_algorithm="direct").max_pixels == (1 << 32) // 896
    assert make_plan(taps="raw").max_pixels is None  # no network, no network input
    assert make_plan(taps="relu1_1", max_pixels=123).max_pixels == 123


def test_machine_memory_is_the_smaller_of_ram_and_the_cgroup_limit(monkeypatch):
    monkeypatch.setattr(memory, "_cgroup_limit", lambda: 1 << 20)
    assert memory.machine_memory() == 1 << 20
    assert memory.memory_budget() == 1 << 19
    monkeypatch.setattr(memory, "_cgroup_limit", lambda: None)
    assert memory.machine_memory() > 1 << 28  # this machine's RAM


def test_an_explicit_max_pixels_beyond_the_budget_is_warned_before_the_run(monkeypatch, caplog):
    monkeypatch.setattr(plan_module, "memory_budget", lambda: 1 << 30)
    with caplog.at_level(logging.WARNING, logger="microtex.features"):
        make_plan(taps="relu1_1", conv_algorithm="direct", max_pixels=10_000_000)
    assert "max_pixels=10,000,000 lets one network input take about 8.3 GB" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="microtex.features"):
        make_plan(taps="relu1_1", conv_algorithm="direct", max_pixels=1_000_000)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_pixels": 0}, "max_pixels must be a positive number of pixels or 'auto', got 0"),
        ({"max_pixels": "lots"}, "max_pixels must be a positive number of pixels"),
        ({"image_size": 100_000}, "image_size: size 100000 is too large: sides are at most 65535"),
        ({"image_size": (20, 70_000)}, r"sides are at most 65535"),
        ({"image_size": 200, "max_pixels": 10_000},
         r"image_size=200 makes every image at least 40,000 pixels, more than "
         r"max_pixels=10,000; use a smaller image_size \(--image-size\), tile the images "
         r"\(--tile\)"),
        ({"image_size": (100, 101), "max_pixels": 10_000}, "at least 10,100 pixels"),
    ],
)  # fmt: skip
def test_sizes_that_cannot_fit_are_refused_before_any_work(params, message):
    with pytest.raises(ValueError, match=message):
        make_plan(taps="relu1_1", **params)


def test_a_tile_larger_than_max_pixels_is_refused():
    featurizer = TextureFeaturizer(taps="relu1_1", max_pixels=1000)
    with pytest.raises(ValueError, match=r"tile=40 makes 1,600 pixels per patch, more than "
                                         r"max_pixels=1,000"):  # fmt: skip
        featurizer.fit(np.zeros((1, 64, 64), np.float32), tile=40)


# ---------------------------------------------------------------- batches and large images
def test_batches_hold_at_most_max_pixels_but_always_one_image():
    items = [(f"i{k}", np.zeros((10, 10), np.float32)) for k in range(7)]
    sizes = [len(ids) for ids, _ in batches(items, batch_size=8, max_pixels=300)]
    assert sizes == [3, 3, 1]
    assert [len(ids) for ids, _ in batches(items, 8, max_pixels=50)] == [1] * 7
    assert [len(ids) for ids, _ in batches(items, 4)] == [4, 3]


@pytest.mark.torch
def test_smaller_batches_give_the_same_features(shallow_onnx, rng):
    images = rng.random((5, 32, 32), dtype=np.float32)
    whole = featurize(images, batch_size=8, **SHALLOW)
    split = featurize(images, batch_size=8, max_pixels=2 * 32 * 32, **SHALLOW)
    np.testing.assert_allclose(split.features, whole.features, rtol=1e-6, atol=1e-7)


@pytest.mark.torch
def test_an_image_above_max_pixels_is_reported_and_the_rest_featurized(shallow_onnx, mixed_dir):
    table = featurize(mixed_dir, max_pixels=4000, on_error="skip", **SHALLOW)
    assert [p.split("/")[-1] for p in table.ids] == ["a.png", "c.png"]
    (failure,) = table.failures
    assert str(failure.path).endswith("b_big.png")
    assert failure.reason.startswith(
        "image 60x80 (4,800 pixels) is larger than max_pixels=4,000 (the network would need "
        "about 5 MB); pass image_size (--image-size) to resize it or tile (--tile)"
    )
    # its rows equal the same images' rows without the limit
    free = featurize(mixed_dir, **SHALLOW)
    np.testing.assert_allclose(table.features, free.features[[0, 2]], rtol=1e-6)
    with pytest.raises(ImageTooLargeError, match=r"b_big.png: image 60x80"):
        featurize(mixed_dir, max_pixels=4000, on_error="raise", **SHALLOW)
    with pytest.raises(ImageTooLargeError, match=r"array\[0\]: image 60x80"):
        featurize(np.zeros((1, 60, 80), np.float32), max_pixels=4000, **SHALLOW)
    with pytest.raises(NoImagesError, match="larger than max_pixels"):
        featurize(mixed_dir / "b_big.png", max_pixels=4000, on_error="skip", **SHALLOW)
    # resizing or tiling makes it fit
    resized = featurize(mixed_dir, max_pixels=4000, image_size=40, on_error="skip", **SHALLOW)
    assert len(resized.ids) == 3 and not resized.failures
    tiled = featurize(mixed_dir, max_pixels=4000, tile=40, on_error="skip", **SHALLOW)
    assert len(tiled.ids) == 4 and not tiled.failures


# ---------------------------------------------------------------- out of memory in a run
def _allocation_failure():
    """The exception ONNX Runtime raises when its arena cannot allocate."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    return Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running "
                "Conv node. Status Message: bfc_arena.cc:360 Failed to allocate memory for "
                "requested buffer of size 576000000")  # fmt: skip


@pytest.mark.torch
def test_out_of_memory_is_reported_per_file_and_a_batch_retried_image_by_image(
    shallow_onnx, mixed_dir, monkeypatch
):
    free = featurize(mixed_dir, **SHALLOW)
    real_run = Session.run
    runs = []

    def run(self, inputs, outputs=None):
        runs.append(inputs.shape)
        if inputs.shape[0] > 1 or inputs.shape[-1] == 80:  # batches, and the big one alone
            raise _allocation_failure()
        return real_run(self, inputs, outputs)

    monkeypatch.setattr(Session, "run", run)
    table = featurize(sorted(mixed_dir.iterdir())[::2] + [mixed_dir / "b_big.png"],
                      on_error="skip", **SHALLOW)  # fmt: skip
    assert [p.split("/")[-1] for p in table.ids] == ["a.png", "c.png"]
    np.testing.assert_allclose(table.features, free.features[[0, 2]], rtol=1e-6)
    (failure,) = table.failures
    assert str(failure.path).endswith("b_big.png")
    assert failure.reason.startswith("out of memory in the network on an image 60x80 "
                                     "(estimated peak")  # fmt: skip
    assert "--image-size" in failure.reason and "--tile" in failure.reason
    assert runs[0][0] == 2 and runs[1][0] == runs[2][0] == 1  # a+c together, then alone
    with pytest.raises(ImageTooLargeError, match="b_big.png: out of memory"):
        featurize(mixed_dir / "b_big.png", on_error="raise", **SHALLOW)


@pytest.mark.torch
def test_an_error_that_is_not_out_of_memory_still_raises(shallow_onnx, mixed_dir, monkeypatch):
    def run(self, inputs, outputs=None):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(Session, "run", run)
    with pytest.raises(RuntimeError, match="some other failure"):
        featurize(mixed_dir, on_error="skip", **SHALLOW)


def test_what_counts_as_out_of_memory():
    assert memory.is_out_of_memory(MemoryError())
    assert memory.is_out_of_memory(_allocation_failure())
    assert memory.is_out_of_memory(RuntimeError("CUDA failure 2: out of memory"))
    assert not memory.is_out_of_memory(RuntimeError("Invalid rank for input: image"))
    assert not memory.is_out_of_memory(KeyboardInterrupt())


@pytest.mark.torch
@pytest.mark.slow
def test_a_real_allocation_failure_skips_the_file_not_the_job(shallow_onnx, tmp_path):
    # a real process under an address-space limit: ONNX Runtime's arena really fails
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "a_small.png", (48, 48), 1)
    _png(folder / "b_big.png", (1500, 1500), 2)  # ~2.3 GB for relu1_1 + relu2_1
    _png(folder / "c_small.png", (48, 48), 3)
    script = textwrap.dedent(f"""
        import json, resource, numpy as np
        from microtex import featurize, TextureFeaturizer
        f = TextureFeaturizer(taps="relu1_1,relu2_1", pool="mean", device="cpu",
                              max_pixels=10**9).fit(np.zeros((1, 16, 16), np.float32))
        f.transform(np.zeros((1, 32, 32), np.float32))  # session open, arena warm
        status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
        limit = int(status) * 1024 + (700 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        table = featurize({str(folder)!r}, featurizer=f, on_error="skip")
        print(json.dumps({{"ids": table.ids, "failures": [[str(x.path), x.reason]
                                                        for x in table.failures]}}))
    """)
    result = run_python("-c", script, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert [p.split("/")[-1] for p in report["ids"]] == ["a_small.png", "c_small.png"]
    ((path, reason),) = report["failures"]
    assert path.endswith("b_big.png") and reason.startswith("out of memory")
    assert "Failed to allocate" not in result.stderr  # ONNX Runtime's own log stays quiet


@pytest.mark.torch
def test_peak_estimate_is_near_the_measured_peak(default_onnx):
    # the estimate sizes max_pixels: the resident peak of a 1024x1024 run of the default
    # taps, measured; above it (safe) but not by much (max_pixels would be needlessly small)
    script = textwrap.dedent("""
        import json, resource, numpy as np
        from microtex import TextureFeaturizer
        f = TextureFeaturizer(device="cpu",
                              conv_algorithm="direct").fit(np.zeros((1, 16, 16), np.float32))
        f.transform(np.zeros((1, 64, 64), np.float32))
        image = np.random.default_rng(0).random((1, 1024, 1024), dtype=np.float32)
        def status(key):
            text = open("/proc/self/status").read()
            return int(text.split(key + ":")[1].split()[0]) * 1024
        open("/proc/self/clear_refs", "w").write("5")  # peak := now (an export may have run)
        before = status("VmRSS")
        f.transform(image)
        print(json.dumps({"grew": status("VmHWM") - before,
                          "estimate": f.pipeline_.plan.peak_bytes(1024 * 1024)}))
    """)
    result = run_python("-c", script, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    ratio = report["estimate"] / report["grew"]
    assert 0.95 <= ratio <= 1.6, report
