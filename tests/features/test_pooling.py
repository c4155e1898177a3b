"""microtex.pooling: C++ kernels against NumPy references and DESIGN.md §4 golden values."""

from __future__ import annotations

import numpy as np
import pytest

from microtex.features import pooling
from microtex.features.pooling import gram, max_pool, mean_pool
from microtex.features.vlad import fit_vlad_dictionary, vlad_encode

from _helpers import reference_gram

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-5, np.float64: 1e-11}


# ------------------------------------------------------------------ references
def ref_matrix(acts):
    n, c = acts.shape[:2]
    return np.asarray(acts, dtype=np.float64).reshape(n, c, -1)


def ref_vlad(acts, words, intra=True, ssr=True, l2=True):
    F = ref_matrix(acts)
    words = np.asarray(words, dtype=np.float64)
    tol = 100 * np.finfo(np.asarray(acts).dtype).eps
    out = []
    for sample in F:
        X = sample.T  # (M, c)
        d = ((X[:, None, :] - words[None]) ** 2).sum(-1)
        assign = d.argmin(1)
        v = np.zeros_like(words)
        for k in range(len(words)):
            members = X[assign == k]
            S = members.sum(0)
            v[k] = S - len(members) * words[k]
            # residual at rounding level counts as empty (documented kernel rule)
            if np.linalg.norm(v[k]) <= tol * (
                np.linalg.norm(S) + len(members) * np.linalg.norm(words[k])
            ):
                v[k] = 0
        if intra:
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            v = v / np.where(norms > 0, norms, 1)
        v = v.ravel()
        if ssr:
            v = np.sign(v) * np.sqrt(np.abs(v))
        if l2 and np.linalg.norm(v) > 0:
            v = v / np.linalg.norm(v)
        out.append(v)
    return np.array(out)


def layouts(x):
    """The same activations as C-contiguous, Fortran, and two strided views."""
    yield "C", x
    yield "F", np.asfortranarray(x)
    big = np.zeros(x.shape[:2] + (x.shape[2] * 2, x.shape[3] * 3), dtype=x.dtype)
    big[:, :, ::2, ::3] = x
    yield "strided", big[:, :, ::2, ::3]
    flipped = np.ascontiguousarray(x[:, ::-1, ::-1, :])
    yield "negative", flipped[:, ::-1, ::-1, :]


# (2, 70, 5, 7) and (1, 97, 3, 4) take the outer-product Gram path (positions <= channels)
SHAPES = [
    (3, 7, 9, 11),
    (2, 16, 5, 5),
    (1, 1, 1, 1),
    (4, 1, 6, 3),
    (2, 13, 1, 1),
    (1, 40, 17, 33),
    (2, 70, 5, 7),
    (1, 97, 3, 4),
]


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


# ------------------------------------------------------------------ mean / max
@pytest.mark.parametrize("shape", SHAPES)
def test_mean_max_match_numpy(shape, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    for name, view in layouts(x):
        for n_threads in (1, 2, 3):
            m = mean_pool(view, n_threads=n_threads)
            mx = max_pool(view, n_threads=n_threads)
            assert m.dtype == dtype and mx.dtype == dtype and m.shape == shape[:2]
            np.testing.assert_allclose(
                m, ref_matrix(x).mean(-1), rtol=RTOL[dtype], atol=RTOL[dtype], err_msg=name
            )
            np.testing.assert_array_equal(
                mx, x.reshape(shape[0], shape[1], -1).max(-1), err_msg=name
            )


def test_mean_max_hand_computed():
    x = np.array([[[[1, 2], [3, -4]], [[0, 0], [0, 5]]]], dtype=np.float32)
    np.testing.assert_array_equal(mean_pool(x), [[0.5, 1.25]])
    np.testing.assert_array_equal(max_pool(x), [[3.0, 5.0]])


def test_mean_is_accurate_over_many_positions():
    # 2**22 values of 0.1 in float32: a naive float32 running sum drifts by ~1e-3 relative
    x = np.full((1, 1, 2048, 2048), 0.1, dtype=np.float32)
    assert abs(float(mean_pool(x)[0, 0]) - float(np.float32(0.1))) < 1e-7
    assert max_pool(x)[0, 0] == np.float32(0.1)


def test_max_of_all_negative_values():
    x = -np.arange(1, 25, dtype=np.float64).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(max_pool(x), [[-1.0, -13.0]])


# ------------------------------------------------------------------ gram
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalization", ["sum", "spatial", "lubbers"])
@pytest.mark.parametrize("layout", ["full", "triu"])
def test_gram_matches_numpy(shape, normalization, layout, dtype):
    rng = np.random.default_rng(1)
    x = rng.random(shape).astype(dtype)
    expected = reference_gram(x, normalization, layout)
    for name, view in layouts(x):
        for n_threads in (1, 2):
            g = gram(view, normalization, layout, n_threads=n_threads)
            assert g.dtype == dtype and g.shape == expected.shape
            np.testing.assert_allclose(g, expected, rtol=RTOL[dtype] * 5, atol=0, err_msg=name)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 200, 8, 8),  # one sample, few positions: threads take rows of the triangle
        (1, 20, 100, 100),  # one sample, many positions: threads take ranges of positions
        (2, 37, 40, 43),  # fewer samples than threads, odd sizes, position chunks with tails
        (5, 70, 30, 31),  # whole samples per thread
        (1, 400, 20, 20),  # many channels: rows of the triangle in strips, over two position chunks
        (3, 350, 9, 30),  # many channels, whole samples (or rows at 4 threads) in strips
    ],
)
@pytest.mark.parametrize("layout", ["full", "triu"])
def test_gram_work_sharing_matches_numpy(shape, layout, dtype):
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    expected = reference_gram(x, "sum", layout)
    for n_threads in (1, 2, 3, 4):
        g = gram(x, "sum", layout, n_threads=n_threads)
        np.testing.assert_allclose(
            g, expected, rtol=RTOL[dtype] * 5, atol=0, err_msg=f"{n_threads} threads"
        )


def test_gram_golden_values():
    # F = [[1, 2], [3, 4]] : G = [[5, 11], [11, 25]], M = 2, C = 2
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 2)
    np.testing.assert_array_equal(gram(x, "sum", "full"), [[5, 11, 11, 25]])
    np.testing.assert_array_equal(gram(x, "spatial", "full"), [[2.5, 5.5, 5.5, 12.5]])
    np.testing.assert_array_equal(gram(x, "lubbers", "full"), [[5 / 8, 11 / 8, 11 / 8, 25 / 8]])
    np.testing.assert_allclose(gram(x, "sum", "triu"), [[5, 11 * np.sqrt(2), 25]], rtol=1e-15)
    np.testing.assert_allclose(
        gram(x, "spatial", "triu"), [[2.5, 5.5 * np.sqrt(2), 12.5]], rtol=1e-15
    )
    # the default is spatial normalization, triu layout
    np.testing.assert_array_equal(gram(x), gram(x, "spatial", "triu"))


def test_gram_triu_distance_equals_frobenius():
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 1, 12, 6, 7))
    ga, gb = gram(a, "sum", "triu"), gram(b, "sum", "triu")
    fa, fb = gram(a, "sum", "full"), gram(b, "sum", "full")
    assert ga.shape == (1, 78) and fa.shape == (1, 144)
    np.testing.assert_allclose(np.linalg.norm(ga - gb), np.linalg.norm(fa - fb), rtol=1e-12)


def test_gram_lubbers_distance_is_lubbers_d():
    # d_ij^2 = ||G_i - G_j||_F^2 / (4 N^2 M^2)  (Lubbers et al.)
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 1, 5, 4, 6))
    N, M = 5, 24
    Ga = a.reshape(N, M) @ a.reshape(N, M).T
    Gb = b.reshape(N, M) @ b.reshape(N, M).T
    d2 = ((Ga - Gb) ** 2).sum() / (4 * N**2 * M**2)
    d2_ours = ((gram(a, "lubbers", "triu") - gram(b, "lubbers", "triu")) ** 2).sum()
    np.testing.assert_allclose(d2_ours, d2, rtol=1e-12)


def test_gram_float32_accumulates_in_double():
    # 2**20 positions of value 1/3: float32 running sums lose ~4 digits here
    x = np.full((1, 2, 1024, 1024), 1 / 3, dtype=np.float32)
    g = gram(x, "spatial", "full")
    expected = float(np.float32(1 / 3)) ** 2
    naive = np.cumsum(np.full(2**20, np.float32(1 / 3) ** 2, dtype=np.float32))[-1] / 2**20
    assert abs(naive - expected) / expected > 1e-3  # what a float32 running sum does
    np.testing.assert_allclose(g, expected, rtol=1e-5)  # float32 tiles, float64 across tiles


def test_gram_large_layer_shapes():
    # the VGG shapes of a 224 x 224 image, smaller batch: checks chunking over positions
    rng = np.random.default_rng(4)
    for c, s in [(64, 224), (512, 14)]:
        x = rng.random((1, c, s, s), dtype=np.float32)
        g = gram(x, "spatial", "full")
        np.testing.assert_allclose(g, reference_gram(x, "spatial", "full"), rtol=1e-5)


# ------------------------------------------------------------------ vlad
@pytest.mark.parametrize(
    "shape,n_words",
    [
        ((3, 16, 9, 11), 5),
        ((1, 64, 30, 30), 32),
        ((2, 3, 1, 1), 2),
        ((1, 1, 5, 5), 2),
        ((4, 33, 7, 9), 13),
        ((2, 12, 6, 6), 3),
        ((1, 6, 40, 40), 4),
    ],
)
@pytest.mark.parametrize(
    "flags", [(True, True, True), (False, False, False), (True, False, True), (False, True, False)]
)
def test_vlad_matches_numpy(shape, n_words, flags, dtype):
    rng = np.random.default_rng(5)
    x = rng.random(shape).astype(dtype)
    words = fit_vlad_dictionary(x, n_words, random_state=0)
    assert words.shape == (n_words, shape[1]) and words.dtype == dtype
    expected = ref_vlad(x, words, *flags)
    intra, ssr, l2 = flags
    for name, view in layouts(x):
        for n_threads in (1, 2):
            v = vlad_encode(
                view,
                words,
                intra_normalize=intra,
                signed_sqrt=ssr,
                l2_normalize=l2,
                n_threads=n_threads,
            )
            assert v.dtype == dtype and v.shape == (shape[0], n_words * shape[1])
            np.testing.assert_allclose(
                v, expected, rtol=0, atol=(1e-4 if dtype == np.float32 else 1e-10), err_msg=name
            )


def test_vlad_many_channels_on_strided_input(dtype):
    # many channels, two position chunks (1640 positions) and a tail of
    # channel rows (130 is no multiple of 4 or 8), through every kind of view
    rng = np.random.default_rng(12)
    x = rng.random((2, 130, 40, 41)).astype(dtype)
    words = fit_vlad_dictionary(x, 7, random_state=0)
    for flags in [(True, True, True), (False, False, False)]:
        expected = ref_vlad(x, words, *flags)
        # unnormalized sums of ~230 positions reach ~5: float32 rounding ~1e-4 there
        atol = (1e-4 if dtype == np.float32 else 1e-10) * max(1.0, float(np.abs(expected).max()))
        for name, view in layouts(x):
            for n_threads in (1, 2):
                v = vlad_encode(
                    view,
                    words,
                    intra_normalize=flags[0],
                    signed_sqrt=flags[1],
                    l2_normalize=flags[2],
                    n_threads=n_threads,
                )
                np.testing.assert_allclose(
                    v, expected, rtol=0, atol=atol, err_msg=f"{name} {flags}"
                )


def test_gram_strips_on_strided_input(dtype):
    # many channels and a few position chunks, read through every kind of view
    rng = np.random.default_rng(8)
    x = rng.random((2, 340, 7, 40)).astype(dtype)
    for layout in ("full", "triu"):
        expected = reference_gram(x, "spatial", layout)
        for name, view in layouts(x):
            for n_threads in (1, 2):
                g = gram(view, "spatial", layout, n_threads=n_threads)
                np.testing.assert_allclose(g, expected, rtol=RTOL[dtype] * 5, atol=0, err_msg=name)


def test_vlad_dictionary_may_change_between_calls(dtype):
    # the kernels keep the last packed dictionary: a new one, or the same
    # array changed in place, must be seen
    rng = np.random.default_rng(9)
    x = rng.random((2, 24, 10, 10)).astype(dtype)
    words = rng.random((6, 24)).astype(dtype)
    other = rng.random((6, 24)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for w in (words, other, words):
        np.testing.assert_allclose(vlad_encode(x, w), ref_vlad(x, w, True, True, True), atol=tol)
    words[2] += 0.5
    np.testing.assert_allclose(
        vlad_encode(x, words), ref_vlad(x, words, True, True, True), atol=tol
    )


def test_vlad_hand_computed():
    # one channel, pixels 0, 1, 9, 11; words 0 and 10
    x = np.array([0.0, 1.0, 9.0, 11.0]).reshape(1, 1, 1, 4)
    words = np.array([[0.0], [10.0]])
    raw = vlad_encode(x, words, intra_normalize=False, signed_sqrt=False, l2_normalize=False)
    np.testing.assert_array_equal(raw, [[1.0, 0.0]])  # (0-0)+(1-0), (9-10)+(11-10)
    x = np.array([0.0, 4.0, 9.0, 8.0]).reshape(1, 1, 1, 4)
    raw = vlad_encode(x, words, intra_normalize=False, signed_sqrt=False, l2_normalize=False)
    np.testing.assert_array_equal(raw, [[4.0, -3.0]])
    ssr = vlad_encode(x, words, intra_normalize=False, signed_sqrt=True, l2_normalize=False)
    np.testing.assert_allclose(ssr, [[2.0, -np.sqrt(3.0)]], rtol=1e-15)
    full = vlad_encode(x, words)  # intra: [1, -1] -> ssr: [1, -1] -> l2
    np.testing.assert_allclose(full, [[1 / np.sqrt(2), -1 / np.sqrt(2)]], rtol=1e-15)


def test_vlad_two_channel_words_and_layout():
    # word-major layout: [word0 channels..., word1 channels...]
    x = np.zeros((1, 2, 1, 3))
    x[0, :, 0, 0] = [1, 1]
    x[0, :, 0, 1] = [5, 6]
    x[0, :, 0, 2] = [7, 4]
    words = np.array([[0.0, 0.0], [6.0, 5.0]])
    raw = vlad_encode(x, words, intra_normalize=False, signed_sqrt=False, l2_normalize=False)
    np.testing.assert_array_equal(raw, [[1, 1, 0, 0]])  # (1,1)-(0,0) ; (5,6)+(7,4)-2*(6,5)


def test_vlad_tie_goes_to_first_word():
    x = np.array([5.0]).reshape(1, 1, 1, 1)
    words = np.array([[4.0], [6.0]])
    raw = vlad_encode(x, words, intra_normalize=False, signed_sqrt=False, l2_normalize=False)
    np.testing.assert_array_equal(raw, [[1.0, 0.0]])


def test_fit_vlad_dictionary_finds_clusters_and_is_reproducible():
    rng = np.random.default_rng(6)
    centers = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=np.float64)
    pts = centers[rng.integers(0, 4, 4000)] + rng.normal(0, 0.1, (4000, 3))
    acts = pts.T.reshape(1, 3, 40, 100).copy()
    words = fit_vlad_dictionary(acts, 4, random_state=1)
    order = np.lexsort(words.T[::-1])
    np.testing.assert_allclose(words[order], centers[np.lexsort(centers.T[::-1])], atol=0.02)
    again = fit_vlad_dictionary(acts, 4, random_state=1)
    np.testing.assert_array_equal(words, again)
    # several batches and a vector budget
    words_b = fit_vlad_dictionary(
        [acts[:, :, :20], acts[:, :, 20:]], 4, max_vectors=1000, random_state=2, method="minibatch"
    )
    np.testing.assert_allclose(np.sort(words_b, axis=0), np.sort(centers, axis=0), atol=0.1)


def test_fit_vlad_dictionary_with_duplicate_vectors_logs_not_warns(caplog):
    acts = np.zeros((1, 2, 4, 4), dtype=np.float32)
    acts[0, :, 0, 0] = 1.0
    words = fit_vlad_dictionary(acts, 4, random_state=0)
    assert words.shape == (4, 2)
    assert any("VLAD dictionary" in r.message for r in caplog.records)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "fn", [mean_pool, max_pool, gram, lambda a: vlad_encode(a, np.zeros((2, a.shape[1]), a.dtype))]
)
def test_bad_input_is_rejected_clearly(fn):
    good = np.ones((1, 2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\)"):
        fn(good[0])
    with pytest.raises(TypeError, match="int8"):
        fn(good.astype(np.int8))
    with pytest.raises(TypeError, match="float16"):
        fn(good.astype(np.float16))
    with pytest.raises(ValueError, match="empty batch"):
        fn(good[:0])
    bad = good.copy()
    bad[0, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"sample\(s\) 0.*NaN"):
        fn(bad)
    bad[0, 1, 2, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        fn(bad)


def test_nan_reported_for_the_right_sample():
    x = np.ones((4, 2, 3, 3))
    x[2, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"sample\(s\) 2;"):
        max_pool(x)


def test_bad_options_and_dictionaries():
    x = np.ones((1, 3, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="'frobenius'"):
        gram(x, normalization="frobenius")
    with pytest.raises(ValueError, match="'lower'"):
        gram(x, layout="lower")
    with pytest.raises(ValueError, match="width 4 but the activations have 3 channels"):
        vlad_encode(x, np.zeros((8, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        vlad_encode(x, np.zeros(8, np.float32))
    with pytest.raises(TypeError, match="int64"):
        vlad_encode(x, np.zeros((8, 3), np.int64))
    with pytest.raises(ValueError, match="NaN"):
        vlad_encode(x, np.full((8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        mean_pool(x, n_threads=0)
    with pytest.raises(ValueError, match="cannot fit 8 VLAD words from only 4"):
        fit_vlad_dictionary(x, 8)
    with pytest.raises(ValueError, match="n_words"):
        fit_vlad_dictionary(x, 0)
    with pytest.raises(ValueError, match="'spectral'"):
        fit_vlad_dictionary(x, 2, method="spectral")
    with pytest.raises(ValueError, match="channel counts"):
        fit_vlad_dictionary([x, np.ones((1, 4, 2, 2), np.float32)], 2)


def test_big_endian_is_rejected_not_cast():
    x = np.ones((1, 2, 2, 2), dtype=">f4")
    with pytest.raises(TypeError, match=">f4"):
        gram(x)


def test_n_pooled_features_matches_outputs():
    x = np.random.default_rng(7).random((2, 6, 4, 4)).astype(np.float32)
    words = fit_vlad_dictionary(x, 3, random_state=0)
    assert gram(x).shape[1] == pooling.n_pooled_features("gram", 6)
    assert gram(x, layout="full").shape[1] == pooling.n_pooled_features("gram", 6, layout="full")
    assert vlad_encode(x, words).shape[1] == pooling.n_pooled_features("vlad", 6, n_words=3)
    assert mean_pool(x).shape[1] == pooling.n_pooled_features("max", 6)
    with pytest.raises(ValueError, match="'median'"):
        pooling.n_pooled_features("median", 6)


def test_default_threads_env(monkeypatch):
    monkeypatch.setenv("MICROTEX_NUM_THREADS", "3")
    assert pooling.default_threads() == 3
    monkeypatch.setenv("MICROTEX_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="'zero'"):
        pooling.default_threads()


def test_concurrent_callers_get_the_same_numbers():
    # kernels release the GIL; callers that find the worker pool busy use threads of their own
    import threading

    rng = np.random.default_rng(8)
    batches = [rng.random((2, 24, 20, 30)).astype(np.float32) for _ in range(6)]
    words = fit_vlad_dictionary(batches[0], 4, random_state=0)
    expected = [
        (gram(b, n_threads=2), vlad_encode(b, words, n_threads=2), mean_pool(b, n_threads=2))
        for b in batches
    ]
    results = [None] * len(batches)

    def work(i):
        for _ in range(5):
            results[i] = (
                gram(batches[i], n_threads=2),
                vlad_encode(batches[i], words, n_threads=2),
                mean_pool(batches[i], n_threads=2),
            )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_kernels_work_in_a_forked_child():
    import multiprocessing as mp

    x = np.random.default_rng(9).random((1, 70, 20, 20)).astype(np.float32)
    before = gram(x, n_threads=2)  # starts the worker pool in this process
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        after = pool.apply(gram, (x,), {"n_threads": 2})
    np.testing.assert_array_equal(after, before)


def test_unpickled_arrays_are_accepted():
    # an array that went through pickle has an equal, but not identical, dtype object
    import pickle

    x = pickle.loads(
        pickle.dumps(np.random.default_rng(10).random((1, 3, 4, 4)).astype(np.float32))
    )
    np.testing.assert_allclose(gram(x, "sum", "full"), reference_gram(x, "sum", "full"), rtol=1e-6)
    words = pickle.loads(pickle.dumps(np.zeros((2, 3), np.float32)))
    assert vlad_encode(x, words).shape == (1, 6)
