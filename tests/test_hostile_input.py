"""Hostile and careless input, generated: every case ends in a clear error naming the
offending file or value, and a batch reports a bad file and goes on.

Files that claim huge sizes are headers only (a few hundred bytes): the limits
refuse them from the header, which ``tracemalloc`` checks, so nothing here
allocates more than a few MB. The corruption fuzz is seeded, so a failure
replays. The whole module runs in a few seconds.
"""

from __future__ import annotations

import io as stdio
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

import microtex
from microtex import io
from microtex.cli.main import main
from microtex.errors import ImageReadError, ImageTooLargeError, NoImagesError
from microtex.io.table import FeatureTable

tifffile = pytest.importorskip("tifffile")

SEED = 20261129


# ---------------------------------------------------------------- files that lie about their size
def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (with a valid CRC) claims ``width`` x ``height`` 8-bit gray pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG with its frame header (SOF0) rewritten to ``width`` x ``height``."""
    buffer = stdio.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    """A small valid BMP with its info header rewritten to ``width`` x ``height``."""
    buffer = stdio.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="BMP")
    data = bytearray(buffer.getvalue())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_claiming(width: int, height: int, *, samples: int = 1, bits: int = 8,
                  sample_format: int = 1) -> bytes:  # fmt: skip
    """A little-endian TIFF IFD for ``width`` x ``height`` pixels with a few bytes of data."""
    entries = []  # (tag, type, count, value or bytes stored after the IFD)
    extra = b""
    n_entries = 11 if samples > 1 else 10
    after_ifd = 8 + 2 + 12 * n_entries + 4

    def values(tag, kind, items):
        nonlocal extra
        fmt = {3: "<H", 4: "<I"}[kind]
        raw = b"".join(struct.pack(fmt, v) for v in items)
        if len(raw) <= 4:
            entries.append((tag, kind, len(items), raw.ljust(4, b"\x00")))
        else:
            entries.append((tag, kind, len(items), struct.pack("<I", after_ifd + len(extra))))
            extra += raw

    data_offset = after_ifd + 64  # past the out-of-line values
    values(256, 4, [width])
    values(257, 4, [height])
    values(258, 3, [bits] * samples)
    values(259, 3, [1])  # no compression
    values(262, 3, [2 if samples >= 3 else 1])  # RGB or min-is-black
    values(273, 4, [data_offset])
    values(277, 3, [samples])
    values(278, 4, [height])
    values(279, 4, [min(2**32 - 1, width * height * samples * bits // 8)])
    if samples > 1:
        values(338, 3, [2] * (samples - 3))  # extra samples: unassociated alpha
    values(339, 3, [sample_format] * samples)
    entries.sort()
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries
    ) + struct.pack("<I", 0)
    body = b"II*\x00" + struct.pack("<I", 8) + ifd + extra
    return body.ljust(data_offset, b"\x00") + b"\x00" * 64


HUGE = {
    "claims-100000x100000.png": (png_claiming(100_000, 100_000), "DecompressionBomb"),
    "claims-65000x65000.jpg": (jpeg_claiming(65_000, 65_000), "DecompressionBomb"),
    "claims-30000x30000.bmp": (bmp_claiming(30_000, 30_000), "DecompressionBomb"),
    "claims-60000x60000.tif": (tiff_claiming(60_000, 60_000), "DecompressionBomb"),
    # 67 M pixels, under the pixel limit, but 4 float64 samples: 2.15 GB decoded
    "claims-8200x8200-rgba-float64.tif": (
        tiff_claiming(8200, 8200, samples=4, bits=64, sample_format=3),
        "would take 2,151,680,000 bytes, more than the limit",
    ),
}


@pytest.fixture
def huge_files(tmp_path):
    folder = tmp_path / "huge"
    folder.mkdir()
    for name, (data, _) in HUGE.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("name", sorted(HUGE))
def test_a_file_claiming_a_huge_size_is_refused_from_its_header(huge_files, name):
    assert len(HUGE[name][0]) < 2048  # a header (and a BMP's palette), not data
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError) as info:
            io.read_image(huge_files / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert name in str(info.value) and HUGE[name][1] in str(info.value)
    assert peak < 20 << 20, f"decoding was attempted: {peak / 2**20:.0f} MB allocated"


def test_huge_claims_in_a_folder_are_reported_and_the_good_image_featurized(huge_files):
    good = np.random.default_rng(SEED).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(good).save(huge_files / "good.png")
    table = microtex.featurize(huge_files, taps="raw", pool="mean", on_error="skip")
    assert [os.path.basename(i) for i in table.ids] == ["good.png"]
    assert sorted(os.path.basename(str(f.path)) for f in table.failures) == sorted(HUGE)


# ---------------------------------------------------------------- corrupted files, seeded
def _valid_files() -> dict[str, bytes]:
    rng = np.random.default_rng(SEED)
    gray = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    files = {}
    for name, array, fmt, options in [
        ("gray.png", gray, "PNG", {}),
        ("rgb.jpg", rgb, "JPEG", {"quality": 90}),
        ("gray.bmp", gray, "BMP", {}),
        ("rgb.tif", rgb, "TIFF", {}),
    ]:
        buffer = stdio.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        files[name] = buffer.getvalue()
    buffer = stdio.BytesIO()
    tifffile.imwrite(buffer, rng.integers(0, 65536, (40, 48), dtype=np.uint16))
    files["gray16.tif"] = buffer.getvalue()
    buffer = stdio.BytesIO()
    tifffile.imwrite(buffer, rng.normal(0, 5, (40, 48)).astype(np.float32))
    files["float.tif"] = buffer.getvalue()
    return files


def _mutations(data: bytes, rng: np.random.Generator, n: int):
    """``n`` corrupted copies: truncations, flipped bytes, garbage spliced in, a zeroed run."""
    for k in range(n):
        kind = k % 4
        if kind == 0:
            yield data[: int(rng.integers(1, len(data)))]
        elif kind == 1:
            out = bytearray(data)
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                out[at] ^= int(rng.integers(1, 256))
            yield bytes(out)
        elif kind == 2:
            at = int(rng.integers(0, len(data)))
            yield data[:at] + rng.bytes(int(rng.integers(1, 64))) + data[at:]
        else:
            at = int(rng.integers(0, max(1, len(data) - 32)))
            yield data[:at] + b"\x00" * 32 + data[at + 32 :]


@pytest.mark.parametrize("name", sorted(_valid_files()))
def test_corrupted_files_decode_to_a_valid_image_or_a_read_error_naming_them(tmp_path, name):
    rng = np.random.default_rng([SEED, sum(name.encode())])
    data = _valid_files()[name]
    outcomes = {"image": 0, "error": 0}
    for k, mutated in enumerate(_mutations(data, rng, 100)):
        path = tmp_path / f"{k:02d}-{name}"
        path.write_bytes(mutated)
        try:
            image = io.read_image(path)
        except ImageReadError as exc:  # anything else fails the test
            assert path.name in str(exc) and exc.reason
            outcomes["error"] += 1
            continue
        assert image.dtype == np.float32 and image.ndim == 2 and image.size > 0
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
        outcomes["image"] += 1
    assert outcomes["error"] >= 10, outcomes  # truncations alone fail in every format


def test_a_folder_of_corrupted_files_is_featurized_to_the_end(tmp_path, capsys):
    rng = np.random.default_rng(SEED)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, data in _valid_files().items():
        for k, mutated in enumerate(_mutations(data, rng, 8)):
            (folder / f"{k}-{name}").write_bytes(mutated)
        (folder / f"ok-{name}").write_bytes(data)
    n_files = len(list(folder.iterdir()))
    output = tmp_path / "f.csv"
    code = main(["featurize", str(folder), "-o", str(output), "--raw", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = FeatureTable.read(output)
    skipped = [line for line in err.splitlines() if line.startswith("microtex: skipped ")]
    assert len(table.ids) + len(skipped) == n_files  # each file: a row or one report
    assert {f"ok-{name}" for name in _valid_files()} <= {os.path.basename(i) for i in table.ids}
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv", "mixed"]  # no leftovers


# ---------------------------------------------------------------- a folder of everything at once
def test_one_hostile_folder_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    texture = np.random.default_rng(SEED).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(texture).save(folder / "good.png")
    Image.fromarray(texture).save(folder / os.fsdecode(b"caf\xe9.png"))  # not UTF-8
    Image.fromarray(texture[:4]).save(folder / "short.png")  # too short for the crop
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((folder / "good.png").read_bytes()[:100])
    (folder / "text.tif").write_text("not an image")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "bomb.tif").write_bytes(tiff_claiming(60_000, 60_000))
    for suffix in (".csv", ".parquet", ".npz"):
        output = tmp_path / f"f{suffix}"
        code = main(["featurize", str(folder), "-o", str(output), "--raw", "--crop-bottom", "8",
                     "--no-progress"])  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 0, err
        table = FeatureTable.read(output)
        assert sorted(os.fsencode(os.path.basename(i)) for i in table.ids) == [
            b"caf\xe9.png", b"good.png"]  # fmt: skip
        for name, why in [
            ("short.png", "crop_bottom=8 must be smaller than the image height 4"),
            ("empty.png", "file is empty"),
            ("truncated.png", ""),
            ("text.tif", "not a PNG, JPEG, TIFF or BMP image"),
            ("gone.png", "no such file"),
            ("bomb.tif", "DecompressionBombError"),
        ]:
            lines = [line for line in err.splitlines() if f"{name}:" in line]
            assert len(lines) == 1 and why in lines[0], (name, err)
        assert "featurized 2 images (6 skipped)" in out


# ---------------------------------------------------------------- the API's inputs
@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (None, TypeError, "got NoneType None"),
        (np.float32(3.0), TypeError, "got float32"),
        (np.array(3.0), TypeError, "got ndarray"),
        (b"/data/a.png", TypeError, "got bytes b'/data/a.png'"),
        ({"a": 1}, TypeError, "got dict"),
        ({"a.png"}, TypeError, "got set"),
        (3.5, TypeError, "got float 3.5"),
        (np.zeros((2, 8, 8), np.int64), TypeError, "unsupported image dtype int64"),
        (np.zeros((2, 8, 8), np.complex64), TypeError, "unsupported image dtype complex64"),
        (np.zeros(8, np.float32), ValueError, r"shape \(8,\)"),
        (np.zeros((2, 3, 8, 8), np.float32), ValueError, r"\(n, 1, height, width\)"),
        (np.full((1, 8, 8), np.nan, np.float32), ValueError, "64 NaN"),
        (np.full((1, 8, 8), np.inf, np.float32), ValueError, "64 infinite"),
        ([np.zeros((8, 8)), "a.png"], TypeError, "mix of paths and arrays"),
        ("/no/such/dir/a.png", NoImagesError, r"/no/such/dir/a.png': no such file"),
    ],
)  # fmt: skip
def test_bad_api_input_raises_naming_the_value(images, error, message):
    with pytest.raises(error, match=message):
        microtex.featurize(images, taps="raw", pool="mean")


def test_a_misspelled_path_with_skip_is_an_error_not_an_empty_table():
    with pytest.raises(NoImagesError, match=r"'/no/such/file.png': no such file"):
        microtex.featurize("/no/such/file.png", taps="raw", on_error="skip")


def test_an_array_too_large_for_max_pixels_raises_before_the_network(tmp_path):
    # raw-only plans run no network and have no bound; a CNN plan refuses it
    images = np.zeros((1, 64, 64), np.float32)
    assert microtex.featurize(images, taps="raw", max_pixels=10).features.shape == (1, 2)
    with pytest.raises(ImageTooLargeError, match=r"array\[0\]: image 64x64 \(4,096 pixels\)"):
        microtex.featurize(images, taps="relu1_1", pool="mean", max_pixels=4000)


# ---------------------------------------------------------------- the CLI's options
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image-size", "0"], "a (height, width) pair of positive ints, got 0"),
        (["--image-size", "100000"], "size 100000 is too large: sides are at most 65535"),
        (["--image-size", "20x"], "image size must be N (short side) or HxW, got '20x'"),
        (["--max-pixels", "-5"], "max pixels must be a positive integer or 'auto', got -5"),
        (["--tile", "0"], "value must be a positive integer, got 0"),
        (["--batch-size", "1.5"], "got '1.5'"),
        (["--threads", "0"], "got 0"),
        (["--crop-bottom", "-3"], "-3"),
        (["--taps", "relu9_9"], "unknown layer 'relu9_9'"),
        (["--pool", "mean,median"], "median"),
        (["--weights", "/no/such/weights.pth"], "/no/such/weights.pth"),
        (["--tile-stride", "4"], "tile_stride=4 given without tile"),
        (["--save-bundle", "OUTPUT_DIR_FILE"], "file' exists and is not a directory"),
    ],
)
def test_bad_cli_options_exit_2_naming_the_value(tmp_path, capsys, argv, message):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    argv = [str(tmp_path / "file") if a == "OUTPUT_DIR_FILE" else a for a in argv]
    try:
        code = main(["featurize", str(tmp_path / "a.png"), "-o", str(tmp_path / "f.npz"),
                     "--no-progress", *argv])  # fmt: skip
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert not (tmp_path / "f.npz").exists()


@pytest.mark.parametrize("kind", ["directory", "under-a-file", "read-only"])
def test_an_output_that_cannot_be_written_is_refused_before_reading(tmp_path, capsys, kind):
    if kind == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    target = {"directory": tmp_path / "out.csv", "under-a-file": tmp_path / "a.png" / "f.csv",
              "read-only": tmp_path / "ro" / "f.csv"}[kind]  # fmt: skip
    if kind == "directory":
        target.mkdir()
    if kind == "read-only":
        target.parent.mkdir()
        target.parent.chmod(0o500)
    code = main(["featurize", str(tmp_path / "a.png"), "-o", str(target), "--raw"])
    err = capsys.readouterr().err
    assert code == 2 and str(target) in err and ".tmp" not in err, err
