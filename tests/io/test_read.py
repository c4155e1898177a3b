"""Tests of microtex.io.read: ImageInfo, option checks, folders, lazy and stacked batches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from microtex import io
from microtex.errors import ImageReadError

from _io_helpers import save, valid_bytes

tifffile = pytest.importorskip("tifffile")


def test_image_info(tmp_path):
    path = save(np.zeros((40, 30, 3), np.uint8), tmp_path / "rgb.png")
    image, info = io.read_image_with_info(path, crop_bottom=4, size=(9, 6))
    assert info == io.ImageInfo(
        path=str(path),
        format="PNG",
        mode="RGB",
        bit_depth=8,
        n_frames=1,
        original_shape=(40, 30),
        rows_cropped=4,
        shape=(9, 6),
    )
    assert image.shape == (9, 6)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("value", [-1, 1.5, "top", "AUTO", True, 20, 25])
def test_bad_crop_bottom(tmp_path, value):
    path = save(np.zeros((20, 6), np.uint8), tmp_path / "z.png")
    with pytest.raises(ValueError, match=str(value)):
        io.read_image(path, crop_bottom=value)


@pytest.mark.parametrize("value", [0, -3, 2.5, "big", (10,), (0, 5), (4, 5, 6), True])
def test_bad_size(tmp_path, value):
    path = save(np.zeros((20, 6), np.uint8), tmp_path / "z.png")
    with pytest.raises(ValueError, match="size") as caught:
        io.read_image(path, size=value)
    assert repr(value) in str(caught.value)


# --------------------------------------------------------------------------- batches


def _folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    save(np.full((8, 10), 51, np.uint8), folder / "b.PNG")
    save(np.full((8, 10), 102, np.uint8), folder / "a.png")
    tifffile.imwrite(folder / "c.TIFF", np.full((8, 10), 65535, np.uint16))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")
    (folder / "sub.png").mkdir()
    return folder


def test_expand_paths(tmp_path):
    folder = _folder(tmp_path)
    assert [p.name for p in io.expand_paths(folder)] == ["a.png", "b.PNG", "c.TIFF"]
    extra = tmp_path / "extra.bmp"
    mixed = io.expand_paths([extra, str(folder), folder / "notes.txt"])
    assert mixed == [
        extra,
        folder / "a.png",
        folder / "b.PNG",
        folder / "c.TIFF",
        folder / "notes.txt",
    ]
    assert io.expand_paths(str(extra)) == [extra]
    assert io.expand_paths([]) == []


def test_iter_images_skip_reports_bad_file(tmp_path, caplog):
    folder = _folder(tmp_path)
    bad = folder / "ab_truncated.png"
    bad.write_bytes(valid_bytes(tmp_path, ".png")[:100])
    failures: list[io.ReadFailure] = []
    with caplog.at_level(logging.WARNING, logger="microtex.io"):
        results = list(io.iter_images(folder, on_error="skip", failures=failures))
    assert [p.name for p, _, _ in results] == ["a.png", "b.PNG", "c.TIFF"]
    assert [float(img[0, 0]) for _, img, _ in results] == pytest.approx([0.4, 0.2, 1.0])
    assert [f.path for f in failures] == [bad] and failures[0].reason
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in r.getMessage() and failures[0].reason in r.getMessage() for r in warned)


def test_iter_images_raise_names_bad_file_and_is_lazy(tmp_path):
    folder = _folder(tmp_path)
    bad = folder / "ab_text.png"
    bad.write_text("not an image")
    stream = io.iter_images(folder, on_error="raise")
    path, _image, _info = next(stream)
    assert path.name == "a.png"
    with pytest.raises(ImageReadError, match="ab_text.png"):
        next(stream)
    lazy = io.iter_images([tmp_path / "missing.png"])  # nothing read until iterated
    with pytest.raises(ImageReadError, match="missing.png"):
        next(lazy)


def test_iter_images_checks_options_eagerly(tmp_path):
    with pytest.raises(ValueError, match="ignore"):
        io.iter_images([tmp_path], on_error="ignore")
    with pytest.raises(ValueError, match="-2"):
        io.iter_images([tmp_path], crop_bottom=-2)


def test_read_images_stacks(tmp_path):
    folder = _folder(tmp_path)
    batch = io.read_images(folder)
    assert batch.images.shape == (3, 8, 10) and batch.images.dtype == np.float32
    assert batch.images.flags.c_contiguous
    np.testing.assert_allclose(batch.images[:, 0, 0], [0.4, 0.2, 1.0], rtol=1e-6)
    assert [p.name for p in batch.paths] == ["a.png", "b.PNG", "c.TIFF"]
    assert [i.format for i in batch.infos] == ["PNG", "PNG", "TIFF"]
    assert batch.failures == []


def test_read_images_shape_mismatch_and_resize(tmp_path):
    folder = _folder(tmp_path)
    save(np.zeros((9, 10), np.uint8), folder / "d.png")
    (folder / "e.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"d\.png.*size="):
        io.read_images(folder, on_error="skip")
    batch = io.read_images(folder, size=(4, 5), on_error="skip")
    assert batch.images.shape == (4, 4, 5)
    assert [f.path.name for f in batch.failures] == ["e.png"]
    with pytest.raises(ImageReadError, match="e.png"):
        io.read_images(folder, size=(4, 5))
    empty = io.read_images([folder / "e.png"], size=(4, 5), on_error="skip")
    assert empty.images.shape == (0, 4, 5) and len(empty.failures) == 1


def test_an_image_too_short_for_the_crop_is_skipped_and_reported(tmp_path):
    short = save(np.zeros((6, 20), np.uint8), tmp_path / "a_short.png")
    tall = save(np.full((40, 20), 128, np.uint8), tmp_path / "b_tall.png")
    failures = []
    read = list(io.iter_images(tmp_path, crop_bottom=10, on_error="skip", failures=failures))
    assert [p for p, _, _ in read] == [tall] and read[0][1].shape == (30, 20)
    assert [f.path for f in failures] == [short]
    assert "crop_bottom=10 must be smaller than the image height 6" in failures[0].reason
    with pytest.raises(ValueError, match="crop_bottom=10 must be smaller"):
        list(io.iter_images(tmp_path, crop_bottom=10, on_error="raise"))


def test_a_broken_link_in_a_folder_is_reported_not_skipped_silently(tmp_path):
    good = save(np.zeros((8, 8), np.uint8), tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    assert io.expand_paths(tmp_path) == [good, tmp_path / "b.png"]
    failures = []
    read = [p for p, _, _ in io.iter_images(tmp_path, on_error="skip", failures=failures)]
    assert read == [good]
    assert [f.path for f in failures] == [tmp_path / "b.png"]
    assert "no such file" in failures[0].reason


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet"])
def test_file_names_that_are_not_utf8_survive_every_table_format(tmp_path, suffix):
    import os

    from microtex.io import FeatureTable

    name = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes, as old SEM software writes them
    table = FeatureTable(np.ones((2, 1), np.float32), ["raw/mean/0"], [name, "plain.png"])
    back = FeatureTable.read(table.write(tmp_path / f"f{suffix}"))
    assert [str(i) for i in back.ids] == [name, "plain.png"]
    assert os.fsencode(str(back.ids[0])) == b"caf\xe9-\xff.png"
