"""TextureFeaturizer, featurize() and FeatureTable (DESIGN.md §4, §7, §9)."""

from __future__ import annotations

import logging
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from microtex import synth
from microtex.errors import BundleError, ImageReadError, UnknownLayerError
from microtex.features import plan as plan_module
from microtex.features import stream
from microtex.features.api import featurize
from microtex.features.texture import TextureFeaturizer
from microtex.io import FeatureTable

from _helpers import reference_gram, run_python

SHALLOW = ("relu1_1", "relu2_1")
BLOCK_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}  # DESIGN.md §3 / VGG
# VGG19 taps of each preset (golden, DESIGN.md §3)
PRESET_TAPS = {
    "block_first": ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
    "block_last": ["relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"],
    "all": [f"relu{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 4, 4, 4)) for i in range(1, n + 1)],
}


def channels(tap: str) -> int:
    return 1 if tap == "raw" else BLOCK_CHANNELS[int(tap[4])]


def expected_size(pool: str, c: int, layout: str = "triu", n_words: int = 32) -> int:
    return {
        "mean": c,
        "max": c,
        "vlad": n_words * c,
        "gram": c * (c + 1) // 2 if layout == "triu" else c * c,
    }[pool]


def columns_of(names, tap: str, pool: str) -> np.ndarray:
    """Indices of the columns ``{tap}/{pool}/*`` in order."""
    prefix = f"{tap}/{pool}/"
    idx = [i for i, n in enumerate(names) if n.startswith(prefix)]
    assert [names[i] for i in idx] == [f"{prefix}{j}" for j in range(len(idx))]
    return np.asarray(idx)


def textures(n: int, size=(32, 32), seed: int = 0) -> np.ndarray:
    """n distinct float32 textures in [0, 1] of shape (n, h, w)."""
    h, w = size
    side = max(h, w, 8)
    out = [
        synth.perlin_texture(side, k=3 + 2 * i, theta=0.4 * i, amplitude=2.0, seed=seed + i)[:h, :w]
        for i in range(n)
    ]
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


@pytest.fixture
def cnn(shallow_onnx):
    """The shallow graph is exported (skips without torch)."""
    return shallow_onnx


def write_png(path, image: np.ndarray) -> pathlib.Path:
    """Save a float image in [0, 1] as 8-bit PNG; return the path."""
    Image.fromarray(np.round(np.asarray(image) * 255).astype(np.uint8)).save(path)
    return pathlib.Path(path)


# ================================================================== names and shapes
@pytest.mark.parametrize(
    (
        "preset",
        "layout",
    ),  # ("all", "full") would build 2.4 million names: its count is checked below
    [
        ("block_first", "triu"),
        ("block_first", "full"),
        ("block_last", "triu"),
        ("block_last", "full"),
        ("all", "triu"),
    ],
)
def test_golden_feature_names_of_presets(preset, layout, monkeypatch):
    """Per tap C, C(C+1)/2, C² or n_words·C values; names "{tap}/{pool}/{i}" by tap, then pool."""
    pools = ("mean", "max", "gram", "vlad")
    # names come from the configuration: fit without reading images for VLAD words
    monkeypatch.setattr(stream.TexturePipeline, "fit_vlad", lambda self, *args: {})
    f = TextureFeaturizer(taps=preset, pool=pools, gram_layout=layout, n_words=3).fit(None)
    names = list(f.get_feature_names_out())
    taps = PRESET_TAPS[preset]
    assert f.taps_ == tuple(taps)
    total = sum(expected_size(p, channels(t), layout, 3) for t in taps for p in pools)
    assert len(names) == total == f.n_features_out_
    expected = [
        f"{t}/{p}/{i}"
        for t in taps
        for p in pools
        for i in range(expected_size(p, channels(t), layout, 3))
    ]
    assert names == expected


@pytest.mark.parametrize(
    ("taps", "pool", "kwargs", "n_features"),
    [
        ("block_first", "mean", {}, 64 + 128 + 256 + 512 + 512),
        ("block_last", "max", {}, 1472),
        ("block_first", "gram", {}, 2080 + 8256 + 32896 + 131328 + 131328),
        ("block_first", "gram", {"gram_layout": "full"}, 64**2 + 128**2 + 256**2 + 2 * 512**2),
        ("block_last", "vlad", {}, 32 * 1472),
        ("block_last", "vlad", {"n_words": 5}, 5 * 1472),
        ("all", "mean", {}, 2 * 64 + 2 * 128 + 4 * 256 + 8 * 512),
        ("all", "gram", {"gram_layout": "full"}, 2 * 64**2 + 2 * 128**2 + 4 * 256**2 + 8 * 512**2),
        ("relu3_1,raw", ("gram", "mean"), {}, 1 + 1 + 32896 + 256),
    ],
)
def test_golden_feature_counts(taps, pool, kwargs, n_features, monkeypatch):
    # no images: VLAD words are not fitted, the count comes from the configuration alone
    monkeypatch.setattr(stream.TexturePipeline, "fit_vlad", lambda self, *args: {})
    f = TextureFeaturizer(taps=taps, pool=pool, **kwargs).fit(None)
    assert f.n_features_out_ == n_features == len(f.get_feature_names_out())
    assert len(plan_module.make_plan(taps=taps, pool=pool, **kwargs).feature_names) == n_features


def test_names_follow_forward_tap_order_and_given_pool_order():
    f = TextureFeaturizer(taps=["relu2_1", "raw", "relu1_1"], pool="gram,mean").fit(None)
    names = list(f.get_feature_names_out())
    assert f.taps_ == ("raw", "relu1_1", "relu2_1")
    expected = (
        ["raw/gram/0", "raw/mean/0"]
        + [f"relu1_1/gram/{i}" for i in range(2080)]
        + [f"relu1_1/mean/{i}" for i in range(64)]
        + [f"relu2_1/gram/{i}" for i in range(8256)]
        + [f"relu2_1/mean/{i}" for i in range(128)]
    )
    assert names == expected


def test_vgg16_block_last_names(tmp_path):
    """VGG16 needs user weights; names need only the configuration (weights are not read)."""
    f = TextureFeaturizer(
        backbone="vgg16", weights=tmp_path / "vgg16.pth", taps="block_last", pool="mean"
    ).fit(None)
    assert f.taps_ == ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    assert f.n_features_out_ == 1472


def test_fit_without_vlad_reads_no_images(tmp_path):
    missing = [tmp_path / "nope.png", tmp_path / "nothing-here"]
    f = TextureFeaturizer(taps="block_first", pool=("mean", "gram"))
    assert f.fit(missing) is f
    assert f.fit(None) is f
    assert f.vlad_dictionaries_ == {}


# ================================================================== graph vs kernels vs numpy
@pytest.mark.torch
@pytest.mark.parametrize("normalization", ["spatial", "sum", "lubbers"])
@pytest.mark.parametrize("layout", ["triu", "full"])
def test_graph_heads_equal_cpp_kernels(cnn, image_batch, normalization, layout):
    params = {
        "taps": SHALLOW,
        "pool": ("mean", "max", "gram"),
        "gram_normalization": normalization,
        "gram_layout": layout,
        "device": "cpu",
    }
    graph = TextureFeaturizer(engine="graph", **params).fit(None)
    kernels = TextureFeaturizer(engine="kernels", **params).fit(None)
    a, b = graph.transform(image_batch), kernels.transform(image_batch)
    assert graph.pipeline_.sessions and all(
        "/" in s.output_names[0] for k, s in graph.pipeline_.sessions.items() if k[0] == "heads"
    )
    assert ("heads", "cpu", None) in graph.pipeline_.sessions and (
        "heads",
        "cpu",
        None,
    ) not in kernels.pipeline_.sessions
    names = list(graph.get_feature_names_out())
    assert a.shape == b.shape == (2, len(names))
    for tap in SHALLOW:
        for pool in ("mean", "max", "gram"):
            cols = columns_of(names, tap, pool)
            x, y = a[:, cols].astype(np.float64), b[:, cols].astype(np.float64)
            assert np.abs(y).max() > 0
            rel = np.abs(x - y) / np.maximum(np.abs(y), 1e-3 * np.abs(y).max())
            assert rel.max() < 1e-5, (tap, pool, rel.max())


@pytest.mark.torch
@pytest.mark.parametrize("normalization", ["spatial", "sum", "lubbers"])
@pytest.mark.parametrize("layout", ["triu", "full"])
def test_kernels_equal_numpy_on_onnx_activations(cnn, image_batch, normalization, layout):
    from microtex.engine.session import Session

    acts = Session(cnn, device="cpu").run(image_batch)
    f = TextureFeaturizer(
        taps=SHALLOW,
        pool=("mean", "max", "gram"),
        engine="kernels",
        gram_normalization=normalization,
        gram_layout=layout,
    ).fit(None)
    features = f.transform(image_batch)
    names = list(f.get_feature_names_out())
    for tap in SHALLOW:
        F = acts[tap].astype(np.float64)
        n, c = F.shape[:2]
        flat = F.reshape(n, c, -1)
        np.testing.assert_allclose(
            features[:, columns_of(names, tap, "mean")], flat.mean(axis=2), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(
            features[:, columns_of(names, tap, "max")], flat.max(axis=2).astype(np.float32)
        )
        reference = reference_gram(F, normalization, layout)
        np.testing.assert_allclose(
            features[:, columns_of(names, tap, "gram")],
            reference,
            rtol=1e-5,
            atol=1e-6 * np.abs(reference).max(),
        )


# ================================================================== raw tap
@pytest.mark.parametrize(
    ("normalization", "scale"), [("spatial", "m"), ("sum", 1), ("lubbers", "2m")]
)
def test_raw_tap_is_numpy_pooling_of_the_image(rng, monkeypatch, normalization, scale):
    def no_network(*args, **kwargs):
        raise AssertionError("taps='raw' must not build an ONNX session")

    monkeypatch.setattr(stream.TexturePipeline, "session", no_network)
    images = rng.random((3, 21, 17)).astype(np.float32)
    f = TextureFeaturizer(
        taps="raw", pool=("mean", "max", "gram"), gram_normalization=normalization
    )
    features = f.fit(images).transform(images)
    assert list(f.get_feature_names_out()) == ["raw/mean/0", "raw/max/0", "raw/gram/0"]
    x = images.astype(np.float64).reshape(3, -1)
    m = x.shape[1]
    divisor = {"m": m, 1: 1, "2m": 2 * m}[scale]
    np.testing.assert_allclose(features[:, 0], x.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(features[:, 1], images.reshape(3, -1).max(axis=1))
    np.testing.assert_allclose(features[:, 2], (x**2).sum(axis=1) / divisor, rtol=1e-6)


def test_raw_needs_neither_torch_nor_onnxruntime():
    code = (
        "import sys, numpy as np\n"
        "from microtex import featurize\n"
        "t = featurize(np.full((2, 8, 8), 0.5, np.float32), taps='raw', pool='mean,gram')\n"
        "assert t.features.tolist() == [[0.5, 0.25], [0.5, 0.25]], t.features\n"
        "bad = [m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


# ================================================================== VLAD
@pytest.mark.torch
def test_vlad_fit_is_reproducible_and_rows_are_unit_norm(cnn):
    images = textures(3, (24, 24))
    params = {"taps": "relu1_1", "pool": ("vlad",), "n_words": 4, "vlad_max_vectors": 1500}
    a = TextureFeaturizer(random_state=7, **params).fit(images)
    b = TextureFeaturizer(random_state=7, **params).fit(images)
    assert set(a.vlad_dictionaries_) == {"relu1_1"}
    assert a.vlad_dictionaries_["relu1_1"].shape == (4, 64)
    np.testing.assert_array_equal(a.vlad_dictionaries_["relu1_1"], b.vlad_dictionaries_["relu1_1"])
    c = TextureFeaturizer(random_state=8, **params).fit(images)
    assert not np.array_equal(a.vlad_dictionaries_["relu1_1"], c.vlad_dictionaries_["relu1_1"])
    features = a.transform(images)
    assert features.shape == (3, 4 * 64) and a.n_features_out_ == 256
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(features, b.transform(images))
    # the dictionary is fitted state: transforming other images does not refit it
    words = a.vlad_dictionaries_["relu1_1"].copy()
    a.transform(textures(2, (24, 24), seed=50))
    np.testing.assert_array_equal(a.vlad_dictionaries_["relu1_1"], words)


def test_raw_vlad_equals_numpy_residual_sums(rng):
    images = rng.random((4, 16, 12)).astype(np.float32)
    f = TextureFeaturizer(
        taps="raw",
        pool="vlad",
        n_words=3,
        random_state=0,
        intra_normalize=False,
        signed_sqrt=False,
        l2_normalize=False,
    ).fit(images)
    words = f.vlad_dictionaries_["raw"]
    assert words.shape == (3, 1)
    assert np.all(np.diff(np.sort(words[:, 0])) > 0.05)  # three distinct gray levels
    features = f.transform(images)
    x = images.reshape(4, -1, 1).astype(np.float64)
    nearest = np.abs(x - words[:, 0]).argmin(axis=2)  # (4, m)
    expected = np.stack(
        [[(x[i, nearest[i] == k, 0] - words[k, 0]).sum() for k in range(3)] for i in range(4)]
    )
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    # default flags: unit rows
    g = TextureFeaturizer(taps="raw", pool="vlad", n_words=3, random_state=0).fit(images)
    np.testing.assert_allclose(np.linalg.norm(g.transform(images), axis=1), 1.0, rtol=1e-6)


# ================================================================== inputs
def test_array_layouts_and_uint8_agree(rng):
    images = rng.random((3, 20, 24)).astype(np.float32)
    f = TextureFeaturizer(taps="raw", pool=("mean", "max", "gram")).fit(None)
    reference = f.transform(images)
    np.testing.assert_array_equal(f.transform(images[:, None]), reference)
    np.testing.assert_array_equal(f.transform(list(images)), reference)
    as_uint8 = np.round(images * 255).astype(np.uint8)
    scaled = as_uint8.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(f.transform(as_uint8), f.transform(scaled))
    np.testing.assert_array_equal(f.transform(as_uint8[:, None]), f.transform(scaled))
    assert f.transform(as_uint8)[:, 1].max() <= 1.0  # scaled /255, not 0..255


@pytest.mark.torch
def test_uint8_and_float_cnn_features_agree(cnn):
    images = np.round(textures(2, (20, 20)) * 255).astype(np.uint8)
    f = TextureFeaturizer(taps="relu1_1", pool=("mean", "gram")).fit(None)
    np.testing.assert_array_equal(f.transform(images), f.transform(images.astype(np.float32) / 255))


@pytest.mark.torch
def test_images_of_different_sizes_keep_their_order(cnn):
    sizes = [(32, 32), (40, 48), (32, 32), (32, 32), (20, 36)]
    images = [textures(1, s, seed=i)[0] for i, s in enumerate(sizes)]
    f = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram"), batch_size=2).fit(None)
    features = f.transform(images)
    assert features.shape == (5, f.n_features_out_)
    for i, image in enumerate(images):
        alone = f.transform([image])
        np.testing.assert_allclose(features[i], alone[0], rtol=1e-5, atol=1e-6)
    # rows differ (a row mix-up would be seen)
    assert np.abs(features[0] - features[2]).max() > 1e-3
    table = featurize(images, featurizer=f)
    assert table.ids == [f"array[{i}]" for i in range(5)]
    np.testing.assert_array_equal(table.features, features)


@pytest.mark.torch
def test_pooling_in_turn_or_overlapped_gives_the_same_rows(cnn):
    # the CPU pools between inferences; a GPU session overlaps pooling with
    # the next batch's inference: same rows, same order, either way
    images = [textures(1, (32, 32), seed=i)[0] for i in range(5)]
    f = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram"), batch_size=2).fit(None)
    runs = {}
    for overlap in (False, True):
        rows = list(f.pipeline_.features(images, overlap=overlap))
        assert [len(ids) for ids, _ in rows] == [2, 2, 1]
        runs[overlap] = np.concatenate([feats for _, feats in rows])
    np.testing.assert_array_equal(runs[True], runs[False])
    np.testing.assert_array_equal(runs[False], f.transform(images))
    assert np.abs(runs[False][0] - runs[False][1]).max() > 1e-3


@pytest.mark.torch
def test_cpu_pools_between_inferences_not_beside_them(cnn, monkeypatch):
    # an overlapped kernel would take a core from ONNX Runtime's threads
    import concurrent.futures

    def no_pool_thread(*args, **kwargs):
        raise AssertionError("a pooling thread was started on the CPU")

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", no_pool_thread)
    images = [textures(1, (32, 32), seed=i)[0] for i in range(3)]
    f = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram"), batch_size=2, device="cpu").fit(None)
    rows = list(f.pipeline_.features(images))
    assert [len(ids) for ids, _ in rows] == [2, 1]
    with pytest.raises(AssertionError, match="pooling thread"):
        list(f.pipeline_.features(images, overlap=True))


@pytest.mark.torch
def test_gpu_session_pools_beside_the_next_inference(cnn, monkeypatch):
    # with the network on a GPU the CPU is free: pooling runs on its own thread
    import threading

    images = [textures(1, (32, 32), seed=i)[0] for i in range(3)]
    f = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram"), batch_size=2, device="cpu").fit(None)
    expected = f.transform(images)
    real = f.pipeline_.session(heads=False)

    class OnGpu:  # the CPU session, reporting itself as a CUDA one
        device = "cuda"
        output_names = real.output_names

        def run(self, batch):
            return real.run(batch)

    monkeypatch.setattr(f.pipeline_, "session", lambda heads: OnGpu())
    pooled_on = []
    pool_batch = f.pipeline_.pool
    monkeypatch.setattr(
        f.pipeline_,
        "pool",
        lambda outputs: pooled_on.append(threading.current_thread().name) or pool_batch(outputs),
    )
    rows = list(f.pipeline_.features(images))
    assert len(pooled_on) == 2 and all(name.startswith("microtex-pool") for name in pooled_on)
    np.testing.assert_array_equal(np.concatenate([feats for _, feats in rows]), expected)


def test_paths_directory_and_order(tmp_path, rng):
    images = textures(3, (24, 20))
    paths = [
        write_png(tmp_path / name, image)
        for name, image in zip(["c.png", "a.png", "b.png"], images)
    ]
    (tmp_path / "notes.txt").write_text("not an image")
    f = TextureFeaturizer(taps="raw", pool=("mean", "gram")).fit(None)
    as_read = np.round(images * 255).astype(np.uint8)
    expected = f.transform(as_read)
    np.testing.assert_array_equal(f.transform(paths), expected)
    np.testing.assert_array_equal(f.transform([str(p) for p in paths]), expected)
    np.testing.assert_array_equal(f.transform(paths[1]), expected[1:2])
    assert f.transform([]).shape == (0, 2)
    # a directory: its image files sorted by name (a, b, c)
    np.testing.assert_array_equal(f.transform(tmp_path), expected[[1, 2, 0]])
    table = featurize(tmp_path, taps="raw", pool=("mean", "gram"))
    assert [pathlib.Path(i).name for i in table.ids] == ["a.png", "b.png", "c.png"]
    assert table.failures == []


def test_image_size_resizes_before_pooling():
    image = np.zeros((40, 60), np.float32)
    image[0, 0] = 1.0  # one bright pixel: its area average after resizing is exact
    f_int = TextureFeaturizer(taps="raw", pool=("max", "mean"), image_size=20).fit(None)
    np.testing.assert_allclose(
        f_int.transform(image[None])[0], [1 / 4, 1 / 2400], rtol=1e-6
    )  # 20x30
    f_pair = TextureFeaturizer(taps="raw", pool=("max", "mean"), image_size=(10, 15)).fit(None)
    np.testing.assert_allclose(f_pair.transform(image[None])[0], [1 / 16, 1 / 2400], rtol=1e-6)
    f_pair = TextureFeaturizer(taps="raw", pool="max", image_size=[20, 15]).fit(None)
    np.testing.assert_allclose(f_pair.transform(image[None])[0], [1 / 8], rtol=1e-6)


def test_crop_bottom_on_arrays():
    image = np.full((30, 10), 0.25, np.float32)
    image[-4:] = 1.0  # an "info band"
    f = TextureFeaturizer(taps="raw", pool=("max", "mean"), crop_bottom=4).fit(None)
    np.testing.assert_allclose(f.transform(image[None])[0], [0.25, 0.25])
    g = TextureFeaturizer(taps="raw", pool=("max", "mean"), crop_bottom=3).fit(None)
    np.testing.assert_allclose(g.transform(image[None])[0], [1.0, (26 * 0.25 + 1) / 27], rtol=1e-6)
    h = TextureFeaturizer(taps="raw", pool="max", crop_bottom=30).fit(None)
    with pytest.raises(ValueError, match="crop_bottom=30"):
        h.transform(image[None])


# ================================================================== bad input
def test_unknown_layer_lists_valid_names():
    with pytest.raises(UnknownLayerError) as info:
        TextureFeaturizer(taps="relu6_1").fit(None)
    message = str(info.value)
    assert "'relu6_1'" in message
    for name in ("relu1_1", "relu5_4", "conv3_2", "block_first"):
        assert name in message


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"pool": "median"}, "unknown pool 'median'"),
        ({"pool": "mean,mean"}, "repeated pool"),
        ({"pool": ""}, "at least one"),
        ({"taps": ""}, "at least one"),
        ({"engine": "graph", "pool": "mean,vlad"}, "engine='graph' cannot compute VLAD"),
        ({"engine": "gpu"}, "unknown engine 'gpu'"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "got 2.5"),
        ({"batch_size": True}, "got True"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"gram_normalization": "frobenius"}, "'frobenius'"),
        ({"gram_layout": "tril"}, "'tril'"),
        ({"crop_bottom": -1}, "crop_bottom"),
        ({"block_pooling": "min", "taps": "relu1_1"}, "unknown block_pooling 'min'"),
        ({"precision": "fp8", "taps": "relu1_1"}, "unknown precision 'fp8'"),
        ({"precision": "bf16", "taps": "raw"}, "unknown precision 'bf16'"),
        ({"block_pooling": "min", "taps": "raw"}, "unknown block_pooling 'min'"),
        ({"backbone": "resnet50", "taps": "relu1_1"}, "'resnet50'"),
        ({"conv_algorithm": "fft", "taps": "relu1_1"}, "unknown conv_algorithm 'fft'"),
        (
            {"conv_algorithm": "winograd", "precision": "fp16", "taps": "relu1_1"},
            "needs precision='fp32'",
        ),
    ],
)
def test_bad_parameters_fail_in_fit(params, match):
    with pytest.raises(ValueError, match=match):
        TextureFeaturizer(**params).fit(None)


@pytest.mark.torch
def test_deprecated_pooling_keyword_warns_and_still_works(cnn, image_batch):
    with pytest.warns(FutureWarning, match="block_pooling"):
        old = TextureFeaturizer(taps=SHALLOW, pooling="avg", pool="mean").fit(None)
    new = TextureFeaturizer(taps=SHALLOW, block_pooling="avg", pool="mean").fit(None)
    assert old.config_.block_pooling == "avg" == new.config_.block_pooling
    np.testing.assert_array_equal(old.transform(image_batch), new.transform(image_batch))
    default = TextureFeaturizer(taps=SHALLOW, pool="mean").fit(None).transform(image_batch)
    assert np.abs(default - new.transform(image_batch)).max() > 1e-3  # avg is not max


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 1, 1, 16, 16), (16, 16), (16,)])
def test_bad_array_shapes_name_the_shape(shape):
    f = TextureFeaturizer(taps="raw", pool="mean").fit(None)
    with pytest.raises(ValueError) as info:
        f.transform(np.zeros(shape, np.float32))
    assert str(shape) in str(info.value)


@pytest.mark.torch
def test_image_smaller_than_deepest_tap_needs(cnn, tmp_path):
    f = TextureFeaturizer(taps="relu1_1,relu3_1", pool="mean").fit(None)
    with pytest.raises(ValueError, match="3x9 is smaller than 4 pixels.*relu3_1"):
        f.transform(np.zeros((1, 3, 9), np.float32))
    assert f.transform(np.zeros((1, 4, 9), np.float32)).shape == (1, 64 + 256)
    # files that are too small are skipped (and recorded) by featurize
    small = write_png(tmp_path / "small.png", np.zeros((2, 9)))
    good = write_png(tmp_path / "good.png", textures(1, (16, 16))[0])
    table = featurize([small, good], featurizer=f)
    assert table.ids == [str(good)]
    assert [fl.path for fl in table.failures] == [str(small)]
    assert "2x9" in table.failures[0].reason


def test_corrupt_file_raises_in_transform_and_is_skipped_by_featurize(tmp_path):
    images = textures(3, (16, 16))
    a = write_png(tmp_path / "a.png", images[0])
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    c = write_png(tmp_path / "c.png", images[2])
    f = TextureFeaturizer(taps="raw", pool=("mean", "max", "gram")).fit(None)
    with pytest.raises(ImageReadError, match="b.png") as info:
        f.transform([a, bad, c])
    assert info.value.path == str(bad)
    table = featurize([a, bad, c], taps="raw", pool=("mean", "max", "gram"), on_error="skip")
    assert table.ids == [str(a), str(c)]
    assert [pathlib.Path(fl.path) for fl in table.failures] == [bad]
    np.testing.assert_array_equal(table.features, f.transform([a, c]))
    with pytest.raises(ImageReadError):
        featurize([a, bad, c], taps="raw", on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        featurize([a], taps="raw", on_error="ignore")


@pytest.mark.torch
def test_featurize_with_vlad_skips_corrupt_files_in_the_fit_too(cnn, tmp_path):
    images = textures(3, (16, 16))
    paths = [write_png(tmp_path / f"{i}.png", image) for i, image in enumerate(images)]
    (tmp_path / "1.png").write_bytes(b"garbage")
    params = {"taps": "relu1_1", "pool": ("mean", "vlad"), "n_words": 3, "random_state": 0}
    table = featurize(tmp_path, on_error="skip", **params)
    assert table.ids == [str(paths[0]), str(paths[2])]
    assert [pathlib.Path(fl.path).name for fl in table.failures] == ["1.png"]
    reference = TextureFeaturizer(**params).fit([paths[0], paths[2]])
    np.testing.assert_allclose(table.features, reference.transform([paths[0], paths[2]]), rtol=1e-5)


# ================================================================== FeatureTable
@pytest.fixture
def table(rng):
    features = (rng.standard_normal((4, 5)) * np.array([1e-6, 1, 1e3, 1e6, 0])).astype(np.float32)
    ids = ["a.png", "dir with space/b.png", 'quote"and,comma.png', "array[3]"]
    return FeatureTable(features, [f"relu1_1/mean/{i}" for i in range(5)], ids)


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet", ".NPZ"])
def test_feature_table_round_trip(tmp_path, table, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = table.write(tmp_path / f"features{suffix}")
    assert path == tmp_path / f"features{suffix}"
    back = FeatureTable.read(path)
    assert [str(c) for c in back.columns] == table.columns
    assert [str(i) for i in back.ids] == table.ids
    assert back.features.dtype == np.float32 and back.features.shape == (4, 5)
    if suffix == ".csv":
        np.testing.assert_allclose(back.features, table.features, rtol=1e-6, atol=0)
    else:
        np.testing.assert_array_equal(back.features, table.features)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary files left


def test_feature_table_csv_layout(tmp_path, table):
    import csv

    path = table.write(tmp_path / "f.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", *table.columns]
    assert [r[0] for r in rows[1:]] == table.ids


def test_feature_table_empty_round_trip(tmp_path):
    empty = FeatureTable(np.zeros((0, 2), np.float32), ["raw/mean/0", "raw/max/0"], [])
    for suffix in (".npz", ".csv"):
        back = FeatureTable.read(empty.write(tmp_path / f"e{suffix}"))
        assert (
            back.features.shape == (0, 2) and back.ids == [] and list(back.columns) == empty.columns
        )


@pytest.mark.parametrize("name", ["features.xlsx", "features", "features.npz.bak"])
def test_feature_table_unsupported_suffix(tmp_path, table, name):
    with pytest.raises(ValueError, match="unsupported feature file type") as info:
        table.write(tmp_path / name)
    assert repr(pathlib.Path(name).suffix) in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unsupported"):
        FeatureTable.read(tmp_path / name)


def test_failed_write_leaves_nothing(tmp_path, table, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        table.write(tmp_path / "features.npz")
    assert list(tmp_path.iterdir()) == []
    # an existing file is left as it was
    target = tmp_path / "features.npz"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        table.write(target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npz"]


def test_failed_parquet_write_leaves_nothing(tmp_path, table, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")

    def broken(table_, where, *args, **kwargs):
        pathlib.Path(where).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        table.write(tmp_path / "features.parquet")
    assert list(tmp_path.iterdir()) == []


# ================================================================== bundles
@pytest.fixture(scope="module")
def vlad_featurizer(shallow_onnx):
    images = textures(3, (24, 24))
    f = TextureFeaturizer(
        taps=SHALLOW,
        pool=("mean", "gram", "vlad"),
        n_words=3,
        random_state=1,
        vlad_max_vectors=1000,
        image_size=(24, 20),
    )
    return f.fit(images), images


@pytest.mark.torch
def test_bundle_round_trip(tmp_path, vlad_featurizer):
    f, images = vlad_featurizer
    path = f.save(tmp_path / "bundle")
    assert sorted(p.name for p in path.iterdir()) == ["backbone.onnx", "microtex.json", "state.npz"]
    g = TextureFeaturizer.load(path)
    assert g.taps_ == f.taps_ and g.n_features_out_ == f.n_features_out_
    assert g.image_size == (24, 20) and g.get_params()["pool"] == ("mean", "gram", "vlad")
    for tap in SHALLOW:
        np.testing.assert_array_equal(g.vlad_dictionaries_[tap], f.vlad_dictionaries_[tap])
    assert (
        pathlib.Path(g.pipeline_.session(heads=False).path).parent == path
    )  # runs the bundled graph
    np.testing.assert_array_equal(g.transform(images), f.transform(images))
    np.testing.assert_array_equal(g.get_feature_names_out(), f.get_feature_names_out())
    with pytest.raises(FileExistsError):
        f.save(path)
    f.save(path, overwrite=True)


@pytest.mark.torch
def test_bundle_written_by_microtex_0_1_loads(tmp_path, vlad_featurizer):
    # the manifest layout of the previous release: format 1, no kind (the config named the
    # class), the block pooling under "pooling"
    import json

    from microtex import load_bundle

    _, images = vlad_featurizer
    f = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram"), block_pooling="avg").fit(None)
    path = f.save(tmp_path / "bundle")
    manifest = json.loads((path / "microtex.json").read_text())
    del manifest["kind"], manifest["kind_version"]
    manifest["format_version"] = 1
    params = manifest["config"]["params"]
    params["pooling"] = params.pop("block_pooling")
    manifest["config"]["kind"] = "TextureFeaturizer"
    (path / "microtex.json").write_text(json.dumps(manifest))
    for g in (TextureFeaturizer.load(path), load_bundle(path)):
        assert isinstance(g, TextureFeaturizer) and g.get_params()["block_pooling"] == "avg"
        np.testing.assert_array_equal(g.transform(images), f.transform(images))
    default = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram")).fit(None).transform(images)
    assert np.abs(default - f.transform(images)).max() > 1e-3  # avg pooling made a difference


@pytest.mark.torch
def test_a_bundle_saves_the_fitted_model_not_later_parameters(tmp_path, vlad_featurizer):
    f, images = vlad_featurizer
    g = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram")).fit(None)
    before = g.transform(images)
    g.set_params(gram_normalization="lubbers", image_size=(12, 12))  # not fitted yet
    loaded = TextureFeaturizer.load(g.save(tmp_path / "bundle"))
    assert loaded.get_params()["gram_normalization"] == "spatial"
    np.testing.assert_array_equal(loaded.transform(images), before)


@pytest.mark.torch
def test_a_newer_layout_of_the_kind_is_refused_by_every_loader(tmp_path, cnn):
    import json

    from microtex import load_bundle

    path = TextureFeaturizer(taps="relu1_1", pool="mean").fit(None).save(tmp_path / "bundle")
    manifest = json.loads((path / "microtex.json").read_text())
    manifest["kind_version"] = 99
    (path / "microtex.json").write_text(json.dumps(manifest))
    for load in (TextureFeaturizer.load, load_bundle):
        with pytest.raises(BundleError, match="layout version 99 is newer than this microtex"):
            load(path)


@pytest.mark.torch
@pytest.mark.parametrize("damage", ["unknown parameter", "bad value", "no onnx", "truncated onnx"])
def test_a_broken_bundle_is_refused_at_load_naming_what(tmp_path, cnn, damage):
    import hashlib
    import json

    path = TextureFeaturizer(taps="relu1_1", pool="mean").fit(None).save(tmp_path / "bundle")
    manifest = json.loads((path / "microtex.json").read_text())
    params = manifest["config"]["params"]
    if damage == "unknown parameter":
        params["n_wordz"] = 3
    elif damage == "bad value":
        params["gram_layout"] = "diagonal"
    elif damage == "no onnx":
        del manifest["files"]["backbone.onnx"]
    else:  # cut short, with a manifest that agrees: only ONNX Runtime can tell
        onnx = path / "backbone.onnx"
        onnx.write_bytes(onnx.read_bytes()[:5000])
        manifest["files"]["backbone.onnx"] = hashlib.sha256(onnx.read_bytes()).hexdigest()
    (path / "microtex.json").write_text(json.dumps(manifest))
    expected = {"unknown parameter": "unusable parameters.*n_wordz",
                "bad value": "unusable parameters.*'diagonal'",
                "no onnx": "has no backbone.onnx",
                "truncated onnx": "cannot open backbone.onnx"}[damage]  # fmt: skip
    with pytest.raises(BundleError, match=expected):
        TextureFeaturizer.load(path)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["backbone.onnx", "state.npz"])
def test_bundle_tampering_is_refused(tmp_path, vlad_featurizer, name):
    f, _ = vlad_featurizer
    path = f.save(tmp_path / "bundle")
    target = path / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        TextureFeaturizer.load(path)


@pytest.mark.torch
def test_bundle_of_graph_engine_featurizer_loads(cnn, tmp_path, image_batch):
    f = TextureFeaturizer(taps="relu1_1", pool=("mean", "gram"), engine="graph").fit(None)
    g = TextureFeaturizer.load(f.save(tmp_path / "bundle"))
    np.testing.assert_allclose(
        g.transform(image_batch), f.transform(image_batch), rtol=1e-5, atol=1e-7
    )


@pytest.mark.torch
def test_fp16_features_near_fp32_warn_on_cpu_and_survive_a_bundle(
    cnn, tmp_path, image_batch, caplog
):
    params = {"taps": SHALLOW, "pool": ("mean", "max", "gram"), "device": "cpu"}
    full = TextureFeaturizer(**params).fit(None).transform(image_batch)
    f = TextureFeaturizer(precision="fp16", **params).fit(None)
    with caplog.at_level(logging.WARNING, logger="microtex.features"):
        half = f.transform(image_batch)
    assert "precision='fp16' on the CPU" in caplog.text
    assert half.dtype == np.float32 and half.shape == full.shape
    names = list(f.get_feature_names_out())
    for tap in SHALLOW:
        for pool in ("mean", "max", "gram"):
            cols = columns_of(names, tap, pool)
            rel = np.abs(half[:, cols] - full[:, cols]).max() / np.abs(full[:, cols]).max()
            assert 1e-7 < rel < 5e-3, (tap, pool, rel)
    g = TextureFeaturizer.load(f.save(tmp_path / "fp16-bundle"))
    assert g.precision == "fp16" and g.config_.precision == "fp16"
    np.testing.assert_array_equal(g.transform(image_batch), half)


@pytest.mark.torch
def test_cpu_default_is_winograd_and_near_direct_convolution(cnn, tmp_path, image_batch):
    from microtex.engine.metadata import read_metadata

    params = {"taps": ("relu2_1", "relu3_1"), "pool": ("mean", "gram"), "device": "cpu"}
    f = TextureFeaturizer(**params).fit(None)
    fast = f.transform(image_batch)
    metadata = read_metadata(f.pipeline_.session(heads=False).path)
    assert metadata["conv_algorithm"] == "winograd"
    assert metadata["winograd_layers"] == ["conv2_2", "conv3_1"]
    exact = TextureFeaturizer(conv_algorithm="direct", **params).fit(None).transform(image_batch)
    names = list(f.get_feature_names_out())
    # relu2_1 comes before the first rewritten layer: identical; relu3_1 within 2e-5
    np.testing.assert_array_equal(
        fast[:, columns_of(names, "relu2_1", "gram")],
        exact[:, columns_of(names, "relu2_1", "gram")],
    )
    for pool in ("mean", "gram"):
        cols = columns_of(names, "relu3_1", pool)
        rel = np.abs(fast[:, cols] - exact[:, cols]).max() / np.abs(exact[:, cols]).max()
        assert 0 < rel < 2e-5, (pool, rel)
    # the bundle keeps the graph it was made with, and says which it is
    directory = f.save(tmp_path / "winograd-bundle")
    from microtex.bundle import open_bundle

    assert open_bundle(directory).config["conv_algorithm"] == "winograd"
    g = TextureFeaturizer.load(directory)
    np.testing.assert_array_equal(g.transform(image_batch), fast)


def test_auto_conv_algorithm_by_device_precision_and_depth(monkeypatch):
    from microtex.engine import session as runtime

    def algorithm(**params):
        return TextureFeaturizer(**params).fit(None).pipeline_.conv_algorithm()

    deep = TextureFeaturizer(taps="relu3_1", device="auto").fit(None)
    monkeypatch.setattr(runtime, "resolve_device", lambda device: [runtime.CPU])
    assert deep.pipeline_.conv_algorithm() == "winograd"
    assert algorithm(taps=SHALLOW) == "direct"
    assert algorithm(taps="relu3_1", precision="fp16") == "direct"
    assert algorithm(taps="relu3_1", conv_algorithm="direct") == "direct"
    monkeypatch.setattr(runtime, "resolve_device", lambda device: [(runtime.CUDA, {}), runtime.CPU])
    assert deep.pipeline_.conv_algorithm() == "direct"
    assert algorithm(taps="relu3_1", conv_algorithm="winograd") == "winograd"


def test_featurizer_pickled_before_conv_algorithm_runs_direct():
    state = TextureFeaturizer(taps="relu3_1").fit(None).__getstate__()
    del state["conv_algorithm"]
    old = TextureFeaturizer.__new__(TextureFeaturizer)
    old.__setstate__(state)
    assert old.conv_algorithm == "direct" and old.pipeline_.conv_algorithm() == "direct"
    assert old.get_params()["conv_algorithm"] == "direct"


@pytest.mark.torch
def test_cnn_featurizer_pickled_in_the_0_1_layout_keeps_its_block_pooling(cnn, image_batch):
    f = TextureFeaturizer(taps=SHALLOW, pool=("mean", "gram"), block_pooling="avg").fit(None)
    expected = f.transform(image_batch)
    state = f.__getstate__()
    del state["pipeline_"], state["params_"]
    state["pooling"] = state.pop("block_pooling")  # 0.1 named the block pooling "pooling"
    state.update(pools_=("mean", "gram"), raw_=False, taps_cnn_=SHALLOW)
    old = TextureFeaturizer.__new__(TextureFeaturizer)
    old.__setstate__(state)
    assert old.get_params()["block_pooling"] == "avg" and old.config_.block_pooling == "avg"
    np.testing.assert_array_equal(old.transform(image_batch), expected)


def test_featurizer_pickled_in_the_0_1_layout_is_rebuilt(rng):
    # microtex 0.1's earlier estimator: "pooling" was the block pooling, no conv_algorithm,
    # fitted state in pools_/raw_/taps_cnn_, no pipeline_
    images = rng.random((3, 12, 12)).astype(np.float32)
    f = TextureFeaturizer(taps="raw", pool=("mean", "vlad"), n_words=2, random_state=0)
    expected = f.fit(images).transform(images)
    state = f.__getstate__()
    for key in ("pipeline_", "params_", "conv_algorithm", "block_pooling"):
        del state[key]
    state.update(pooling="avg", pools_=("mean", "vlad"), raw_=True, taps_cnn_=())
    old = TextureFeaturizer.__new__(TextureFeaturizer)
    old.__setstate__(state)
    params = old.get_params()
    assert params["block_pooling"] == "avg" and params["pooling"] == "deprecated"
    assert params["conv_algorithm"] == "direct"
    assert not hasattr(old, "pools_") and old.pipeline_.plan.pools == ("mean", "vlad")
    np.testing.assert_array_equal(old.transform(images), expected)


def test_raw_bundle_round_trip(tmp_path, rng):
    images = rng.random((3, 12, 12)).astype(np.float32)
    f = TextureFeaturizer(taps="raw", pool=("mean", "vlad"), n_words=2, random_state=0).fit(images)
    g = TextureFeaturizer.load(f.save(tmp_path / "raw-bundle"))
    np.testing.assert_array_equal(g.transform(images), f.transform(images))


# ================================================================== scikit-learn conventions
def test_clone_params_and_not_fitted():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    f = TextureFeaturizer(taps="raw", pool=("mean", "max"), n_words=5, image_size=(8, 9))
    with pytest.raises(NotFittedError):
        check_is_fitted(f)
    with pytest.raises(NotFittedError):
        f.transform(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(NotFittedError):
        f.get_feature_names_out()
    f.fit(None)
    check_is_fitted(f)
    copy = clone(f)
    assert copy.get_params() == f.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    params = f.get_params()
    assert params["pool"] == ("mean", "max") and params["image_size"] == (8, 9)
    other = TextureFeaturizer().set_params(**params)
    assert other.get_params() == params
    assert f.set_params(n_words=7) is f and f.n_words == 7
    with pytest.raises(ValueError, match="Invalid parameter"):
        f.set_params(words=7)


def test_sklearn_estimator_checks():
    """The common checks that apply to an image transformer.

    Not run: the checks that feed tabular data (2-D float arrays, 1-D
    targets) to ``fit``/``transform`` and compare outputs (``check_transformer_general``,
    ``check_fit2d_*``, ``check_n_features_in``, ``check_estimators_dtypes``,
    ``check_fit_check_is_fitted`` with VLAD, ...): a 2-D array is one image
    here, not a table of samples, and featurizing it is rejected by design.
    ``check_dont_overwrite_parameters`` does fit on a (20, 3) table; it applies
    to the no-VLAD configurations only, because then ``fit`` reads no images.
    """
    from sklearn.utils import estimator_checks as checks

    applicable = (
        "no_attributes_set_in_init", "parameters_default_constructible", "get_params_invariance",
        "set_params", "dont_overwrite_parameters", "estimator_cloneable", "estimator_repr",
        "mixin_order", "valid_tag_types", "estimator_tags_renamed",
        "do_not_raise_errors_in_init_or_set_params", "estimators_overwrite_params",
    )  # fmt: skip
    for estimator in (TextureFeaturizer(), TextureFeaturizer(taps="raw", pool="mean,max")):
        for check in applicable:
            getattr(checks, f"check_{check}")(type(estimator).__name__, estimator)


def test_pickle_round_trip(rng):
    import pickle

    images = rng.random((2, 10, 10)).astype(np.float32)
    f = TextureFeaturizer(taps="raw", pool=("mean", "vlad"), n_words=2, random_state=0).fit(images)
    g = pickle.loads(pickle.dumps(f))
    np.testing.assert_array_equal(g.transform(images), f.transform(images))


def test_pipeline_with_raw_taps_classifies_images(rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = 20
    labels = np.arange(n) % 2
    # class 0: dim and smooth; class 1: bright and rough
    images = np.where(
        labels[:, None, None] == 0,
        0.3 + 0.05 * rng.random((n, 16, 16)),
        0.5 + 0.4 * rng.random((n, 16, 16)),
    ).astype(np.float32)
    model = make_pipeline(
        TextureFeaturizer(taps="raw", pool=("mean", "max", "gram")),
        StandardScaler(),
        LogisticRegression(),
    )
    model.fit(images, labels)
    assert list(model[0].get_feature_names_out()) == ["raw/mean/0", "raw/max/0", "raw/gram/0"]
    fresh = np.concatenate(
        [0.3 + 0.05 * rng.random((3, 16, 16)), 0.5 + 0.4 * rng.random((3, 16, 16))]
    ).astype(np.float32)
    assert model.predict(fresh).tolist() == [0, 0, 0, 1, 1, 1]
    assert model.score(images, labels) == 1.0


def test_featurize_records_cropped_rows_per_image(tmp_path):
    body = 0.3 + 0.4 * textures(1, (40, 40), seed=5)[0]
    banded = np.concatenate([body, np.ones((5, 40), np.float32)])
    table = featurize([banded, body], taps="raw", pool="mean", crop_bottom="auto")
    assert table.cropped == {"array[0]": 5}
    np.testing.assert_allclose(table.features[0], table.features[1], rtol=1e-6)
    write_png(tmp_path / "a.png", banded)
    write_png(tmp_path / "b.png", body)
    table = featurize(tmp_path, taps="raw", pool="mean", crop_bottom=3)
    assert table.cropped == {str(tmp_path / "a.png"): 3, str(tmp_path / "b.png"): 3}
    assert featurize(tmp_path, taps="raw", pool="mean").cropped == {}


# ================================================================== tiling
def test_featurize_tiles_each_image_into_patches(tmp_path):
    from microtex.io import tile

    images = textures(2, (40, 56), seed=7)
    table = featurize(list(images), taps="raw", pool="mean,max", tile=16)
    # origins: rows 0, 16 (a third tile would run past row 40), columns 0, 16, 32
    origins = [(r, c) for r in (0, 16) for c in (0, 16, 32)]
    assert table.ids == [f"array[{i}]@{r},{c}" for i in range(2) for r, c in origins]
    patches = np.concatenate([tile(image, 16)[0] for image in images])
    flat = patches.reshape(len(patches), -1).astype(np.float64)
    np.testing.assert_allclose(table.features, np.stack([flat.mean(1), flat.max(1)], 1), rtol=1e-6)
    overlapping = featurize(list(images[:1]), taps="raw", pool="mean", tile=16, tile_stride=8)
    assert len(overlapping.ids) == 4 * 6 and overlapping.ids[1] == "array[0]@0,8"
    # a file smaller than one tile is reported and skipped; an array raises
    write_png(tmp_path / "big.png", images[0])
    write_png(tmp_path / "small.png", images[0][:12, :12])
    table = featurize(tmp_path, taps="raw", pool="mean", tile=16)
    assert [i.rsplit("@", 1)[0] for i in table.ids] == [str(tmp_path / "big.png")] * 6
    assert [f.path for f in table.failures] == [str(tmp_path / "small.png")]
    assert "smaller than one 16x16 tile" in table.failures[0].reason
    with pytest.raises(ValueError, match=r"array\[0\]: image 12x12 is smaller than one 16x16 tile"):
        featurize([images[0][:12, :12]], taps="raw", pool="mean", tile=16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 0}, "tile must be a positive number of pixels, got 0"),
        ({"tile": 16.0}, "tile must be a positive number of pixels, got 16.0"),
        (
            {"tile": 16, "tile_stride": -2},
            "tile_stride must be a positive number of pixels, got -2",
        ),
        ({"tile_stride": 8}, "tile_stride=8 given without tile"),
        (
            {"tile": 4, "taps": "relu4_1"},
            "tile=4 is smaller than 8 pixels, the least that layer relu4_1 needs",
        ),
    ],
)
def test_featurize_bad_tile_options_name_the_value(kwargs, message):
    params = {"taps": "raw", "pool": "mean", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        featurize([textures(1, (32, 32))[0]], **params)


@pytest.mark.torch
def test_tiled_vlad_is_fitted_on_the_patches(cnn):
    from microtex.io import tile

    images = textures(2, (48, 32), seed=11)
    params = {
        "taps": SHALLOW,
        "pool": ("mean", "vlad"),
        "n_words": 4,
        "batch_size": 4,
        "random_state": 3,
    }
    table = featurize(list(images), tile=16, **params)
    patches = list(np.concatenate([tile(image, 16)[0] for image in images]))
    expected = TextureFeaturizer(**params).fit(patches).transform(patches)
    assert table.features.shape == expected.shape == (12, expected.shape[1])
    np.testing.assert_allclose(table.features, expected, rtol=1e-5, atol=1e-6)


def test_images_are_decoded_ahead_on_a_background_thread(tmp_path, monkeypatch):
    # reading and pre-processing run on their own thread, up to two batches ahead
    import threading
    import time

    for i, image in enumerate(textures(6, (24, 24))):
        write_png(tmp_path / f"{i}.png", image)
    decoded_on, events = [], []
    real = stream.iter_inputs

    def recording(*args, **kwargs):
        for image_id, image in real(*args, **kwargs):
            decoded_on.append(threading.current_thread().name)
            events.append(("decoded", image_id))
            yield image_id, image

    monkeypatch.setattr(stream, "iter_inputs", recording)
    f = TextureFeaturizer(taps="raw", pool="mean", batch_size=2).fit(None)
    for ids, _ in f.iter_features(tmp_path):
        events.append(("pooled", ids[0]))
        if len(ids) and ids[0].endswith("0.png"):  # the first batch: let the decoder run ahead
            time.sleep(0.5)
    assert set(decoded_on) == {"microtex-decode"}
    first_pooled = events.index(("pooled", str(tmp_path / "0.png")))
    second_pooled = events.index(("pooled", str(tmp_path / "2.png")))
    decoded_before_second = sum(kind == "decoded" for kind, _ in events[:second_pooled])
    assert first_pooled >= 2 and decoded_before_second == 6  # all three batches read ahead


@pytest.mark.parametrize(
    ("images", "shown"),
    [(None, "NoneType None"), (np.float32(0.5), "float32"), (b"a.png", "bytes b'a.png'"),
     ({"a": np.zeros((8, 8))}, "dict"), (3, "int 3")],
)  # fmt: skip
def test_what_is_not_images_is_named(images, shown):
    with pytest.raises(TypeError, match="images must be an array .* got " + re.escape(shown)):
        featurize(images, taps="raw", pool="mean")


def test_a_misspelled_path_raises_naming_it_instead_of_an_empty_table(tmp_path):
    from microtex.errors import NoImagesError

    with pytest.raises(NoImagesError, match="no image could be featurized.*micrographz") as info:
        featurize(tmp_path / "micrographz", taps="raw", pool="mean")
    assert [f.path for f in info.value.failures] == [tmp_path / "micrographz"]
    assert featurize([], taps="raw", pool="mean").features.shape == (0, 1)  # nothing asked
