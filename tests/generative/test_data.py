"""The patch dataset (microtex.generative.data): patches, flips, scaling, conditions, split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from microtex.errors import NoImagesError
from microtex.generative.data import (
    PatchSet,
    load_patch_set,
    patches_from_image,
    read_conditions,
    split_sources,
)

from _helpers import run_python


def save_gray(path, pixels):
    """Write uint8 pixels as an 8-bit grayscale PNG."""
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path):
    """Four 8×12 images with distinct pixels (a: 0..95, b: 100..195, ...) and a conditions CSV."""
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate("abcd"):
        save_gray(images / f"{name}.png", (np.arange(96) + 40 * i).reshape(8, 12))
    write_csv(images / "conditions.csv",
              "path,ln_t,T_kK\na.png,1.0,0.5\nb.png,2.0,0.5\nc.png,3.0,0.75\nd.png,4.0,0.75\n")
    return images


def test_patches_flips_and_scaling_are_exact_on_a_hand_made_image():
    image = (np.arange(30, dtype=np.float32) / 29).reshape(5, 6)
    patches, origins, flipped = patches_from_image(image, 4, 2)
    # a 5×6 image has room for origins (0, 0) and (0, 2) only: rows 4.. and cols 6.. are left out
    assert origins.tolist() == [[0, 0], [0, 2], [0, 0], [0, 2]]
    assert flipped.tolist() == [False, False, True, True]
    assert patches.dtype == np.float32 and patches.shape == (4, 4, 4)
    expected = [image[0:4, 0:4], image[0:4, 2:6]]
    expected += [window[:, ::-1] for window in expected]
    np.testing.assert_array_equal(patches, np.stack(expected) * np.float32(2) - np.float32(1))
    assert patches[0, 0, 0] == -1.0 and patches[1, 0, 3] == pytest.approx(2 * 5 / 29 - 1)
    assert patches[2, 0, 0] == patches[0, 0, 3]  # the mirror's first column is the last one
    unflipped, _, _ = patches_from_image(image, 4, 2, flips=False)
    np.testing.assert_array_equal(unflipped, patches[:2])


def test_load_patch_set_cuts_scales_and_labels_every_patch(folder):
    patch_set = load_patch_set(folder / "conditions.csv", "ln_t,T_kK", patch_size=4, stride=4)
    # 8×12 with patch 4, stride 4: 2 × 3 origins, times 2 with the mirrors, for 4 images
    assert patch_set.patches.shape == (48, 1, 4, 4) and patch_set.patches.dtype == np.float32
    assert [p.name for p in patch_set.sources] == ["a.png", "b.png", "c.png", "d.png"]
    assert patch_set.source.tolist() == np.repeat(np.arange(4), 12).tolist()
    assert patch_set.condition_names == ("ln_t", "T_kK") and patch_set.n_conditions == 2
    assert patch_set.conditions.dtype == np.float32 and patch_set.conditions.shape == (48, 2)
    np.testing.assert_array_equal(patch_set.conditions[12:24], [[2.0, 0.5]] * 12)
    # patch 7 of image b: the mirror of its origin (0, 4); pixels (100 + 12 r + c) / 255
    pixels = (np.arange(96) + 40).reshape(8, 12)[0:4, 4:8][:, ::-1]
    expected = np.float32(2) * (pixels.astype(np.float32) / np.float32(255)) - np.float32(1)
    np.testing.assert_allclose(patch_set.patches[12 + 7, 0], expected, rtol=0, atol=1e-6)
    assert patch_set.origins[12 + 7].tolist() == [0, 4] and patch_set.flipped[12 + 7]
    assert patch_set.failures == () and patch_set.validation_sources == ()


@pytest.mark.parametrize("validation", [0.5, ["b.png", "d.png"], [1, 3]])
def test_the_split_never_puts_a_source_on_both_sides(folder, validation):
    patch_set = load_patch_set(folder / "conditions.csv", "ln_t", patch_size=4, stride=2)
    split = patch_set.split(validation, seed=3)
    train, held = split.train_indices, split.validation_indices
    assert len(train) + len(held) == len(split) and len(held) > 0 and len(train) > 0
    assert set(split.source[train].tolist()).isdisjoint(split.source[held].tolist())
    assert sorted(set(split.source[held].tolist())) == list(split.validation_sources)
    assert len(split.validation_sources) == 2
    if not isinstance(validation, float):
        assert split.validation_sources == (1, 3)
    # the training side's condition range leaves the held-out images out (ln_t = 1, 2, 3, 4)
    trained = [1.0 + i for i in range(4) if i not in split.validation_sources]
    assert split.condition_range() == [[min(trained), max(trained)]]
    assert patch_set.split(validation, seed=3).validation_sources == split.validation_sources


def test_a_fraction_split_is_seeded_and_keeps_both_sides_non_empty():
    draws = {tuple(split_sources(10, 0.3, seed=seed)[1].tolist()) for seed in range(8)}
    assert len(draws) > 1 and all(len(d) == 3 for d in draws)  # the seed matters
    assert [len(side) for side in split_sources(3, 0.01)] == [2, 1]  # at least one held out
    assert [len(side) for side in split_sources(3, 0.99)] == [1, 2]  # at least one trained on
    train, held = split_sources(10, 0.3, seed=5)
    assert sorted(train.tolist() + held.tolist()) == list(range(10))


@pytest.mark.parametrize(("n", "validation", "message"), [
    (1, 0.2, "at least 2 source images, got 1"),
    (4, 1.0, r"fraction must be in \(0, 1\)"),
    (4, [0, 1, 2, 3], "at least one source image on each side"),
    (4, [], "at least one source image on each side"),
    (4, [4], "out of range"),
    (4, [1, 1], "repeated"),
])  # fmt: skip
def test_bad_splits_are_refused(n, validation, message):
    with pytest.raises(ValueError, match=message):
        split_sources(n, validation)


def test_fewer_than_two_source_images_is_refused_with_the_reasons(folder, tmp_path):
    csv = write_csv(tmp_path / "one.csv", "path,ln_t\na.png,1.0\nmissing.png,2.0\n")
    patch_set = load_patch_set(csv, "ln_t", image_dir=folder, patch_size=4, stride=4)
    assert len(patch_set.sources) == 1
    with pytest.raises(ValueError, match=r"2 source images, got 1; .*missing.png: no such"):
        patch_set.split(0.5)


def test_a_validation_name_must_be_one_source(folder):
    patch_set = load_patch_set(folder / "conditions.csv", "ln_t", patch_size=4, stride=4)
    with pytest.raises(ValueError, match=r"'e.png' is not a source image; the sources are \["):
        patch_set.split(["e.png"])
    split = patch_set.split([folder / "c.png"])  # a path works too
    assert split.validation_sources == (2,)
    for wrong in (1, "c.png"):  # one image is a list of one
        with pytest.raises(ValueError, match="a fraction in \\(0, 1\\) or a list of images"):
            patch_set.split(wrong)


@pytest.mark.parametrize(("row", "message"), [
    ("b.png,nan", r"conditions.csv:3: ln_t is 'nan'; conditions must be finite"),
    ("b.png,NaN", r"conditions.csv:3: ln_t is 'NaN'; conditions must be finite"),
    ("b.png,inf", r"conditions.csv:3: ln_t is 'inf'; conditions must be finite"),
    ("b.png,fast", r"conditions.csv:3: ln_t is 'fast', not a number"),
    ("b.png,", r"conditions.csv:3: empty 'ln_t'"),
    (",2.0", r"conditions.csv:3: empty 'path'"),
    ("a.png,2.0", r"conditions.csv:3: .*a.png' is listed twice \(line 2\)"),
])  # fmt: skip
def test_bad_condition_values_name_the_line(tmp_path, row, message):
    csv = write_csv(tmp_path / "conditions.csv", f"path,ln_t\na.png,1.5\n{row}\nc.png,3\n")
    with pytest.raises(ValueError, match=message):
        read_conditions(csv, "ln_t")


def test_conditions_file_problems_are_named(tmp_path):
    csv = write_csv(tmp_path / "conditions.csv", "path,ln_t\na.png,1.5\n")
    with pytest.raises(ValueError, match=r"has no column 'T'; its columns are \['path', 'ln_t'\]"):
        read_conditions(csv, "ln_t,T")
    with pytest.raises(ValueError, match="has no column 'file'"):
        read_conditions(csv, "ln_t", path_column="file")
    with pytest.raises(ValueError, match="repeated condition column"):
        read_conditions(csv, ["ln_t", "ln_t"])
    with pytest.raises(ValueError, match="at least one condition column"):
        read_conditions(csv, " , ")
    with pytest.raises(ValueError, match="lists no images"):
        read_conditions(write_csv(tmp_path / "empty.csv", "path,ln_t\n"), "ln_t")
    with pytest.raises(ValueError, match="cannot read conditions file"):
        read_conditions(tmp_path / "nowhere.csv", "ln_t")


def test_paths_are_relative_to_the_image_folder_or_the_csv(folder, tmp_path):
    csv = write_csv(tmp_path / "elsewhere.csv",
                    f"path,ln_t\nb.png,2\n{folder / 'a.png'},1\n")  # fmt: skip
    table = read_conditions(csv, "ln_t", base=folder)
    assert table.paths == [folder / "b.png", folder / "a.png"]
    assert table.values.tolist() == [[2.0], [1.0]] and table.columns == ("ln_t",)
    assert read_conditions(csv, "ln_t").paths[0] == tmp_path / "b.png"


def test_unreadable_small_and_unlisted_images_are_reported_and_skipped(folder, tmp_path, caplog):
    save_gray(folder / "small.png", np.zeros((3, 40)))
    save_gray(folder / "unlisted.png", np.zeros((8, 8)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    csv = write_csv(tmp_path / "conditions.csv",
                    "path,ln_t\na.png,1\nsmall.png,2\nmissing.png,3\nbroken.png,4\nb.png,5\n")
    with caplog.at_level(logging.WARNING, logger="microtex.io"):
        patch_set = load_patch_set(csv, "ln_t", image_dir=folder, patch_size=4, stride=4)
    assert [p.name for p in patch_set.sources] == ["a.png", "b.png"]
    np.testing.assert_array_equal(patch_set.source_conditions, [[1.0], [5.0]])
    reasons = {f.path.name: f.reason for f in patch_set.failures}
    # c.png and d.png are in the folder but not in this CSV
    assert set(reasons) == {"small.png", "missing.png", "broken.png", "unlisted.png", "c.png",
                            "d.png"}  # fmt: skip
    assert reasons["small.png"] == "3×40 is smaller than one 4×4 patch"
    assert reasons["missing.png"] == "no such file"
    assert "not listed in" in reasons["unlisted.png"]
    assert "skipping" in caplog.text and "small.png" in caplog.text
    with pytest.raises(NoImagesError, match="no image listed") as caught:
        load_patch_set(csv, "ln_t", image_dir=folder, patch_size=16, stride=4)
    # three unlisted, two unreadable, and a, b and small too small for 16×16
    assert len(caught.value.failures) == 8


def test_crop_bottom_reaches_the_reader(tmp_path):
    pixels = np.full((12, 8), 60, np.uint8)
    pixels[8:] = 255  # an info band of four white rows
    for name in ("a.png", "b.png"):
        save_gray(tmp_path / name, pixels)
    csv = write_csv(tmp_path / "c.csv", "path,x\na.png,0\nb.png,1\n")
    cropped = load_patch_set(csv, "x", patch_size=4, stride=4, crop_bottom=4)
    assert len(cropped) == 2 * 2 * 2 * 2  # 8×8 left: 2 × 2 origins, mirrors, two images
    assert float(cropped.patches.max()) == pytest.approx(2 * 60 / 255 - 1, abs=1e-6)
    whole = load_patch_set(csv, "x", patch_size=4, stride=4)
    assert len(whole) == 3 * 2 * 2 * 2 and float(whole.patches.max()) == 1.0
    assert cropped.describe()["crop_bottom"] == 4


def test_describe_is_a_json_record_of_the_set(folder):
    split = load_patch_set(folder / "conditions.csv", "ln_t", patch_size=4, stride=4).split([0])
    record = json.loads(json.dumps(split.describe()))
    assert record["condition_names"] == ["ln_t"] and record["patch_size"] == 4
    assert record["n_patches"] == 48 and record["n_validation_patches"] == 12
    assert [s["side"] for s in record["sources"]] == ["validation", "train", "train", "train"]
    assert record["sources"][2]["conditions"] == [3.0] and record["sources"][2]["patches"] == 12
    assert record["condition_range"] == [[2.0, 4.0]] and record["flips"] is True
    assert isinstance(split, PatchSet) and len(split) == 48


def test_the_data_module_imports_no_torch():
    code = "import sys, microtex.generative.data\nassert 'torch' not in sys.modules\n"
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
