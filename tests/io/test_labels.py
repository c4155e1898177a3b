"""Labels CSV files: paths relative to the CSV, groups, and the errors of a bad file."""

from __future__ import annotations

import pytest

from microtex.io.labels import read_labels


@pytest.fixture
def folder(tmp_path):
    for name in ["a.png", "b.png", "c.png", "d.png"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    return tmp_path


def write(folder, text):
    path = folder / "labels.csv"
    path.write_text(text)
    return path


def test_paths_are_relative_to_the_csv_and_groups_are_read(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # not the CSV's folder
    path = write(folder, f"label,path,specimen\nx,a.png,S1\nx,{folder / 'b.png'},S1\n"
                         "y,c.png,S2\ny,d.png,S2\n")  # fmt: skip
    table = read_labels(path, groups="specimen")
    assert table.paths == [folder / n for n in ["a.png", "b.png", "c.png", "d.png"]]
    assert table.labels.tolist() == ["x", "x", "y", "y"]
    assert table.groups.tolist() == ["S1", "S1", "S2", "S2"]
    assert table.counts() == {"x": 2, "y": 2}
    assert read_labels(path).groups is None


@pytest.mark.parametrize(
    ("text", "groups", "message"),
    [
        ("path,class\na.png,x\n", None,
         r"has no column 'label'; its columns are \['path', 'class'\]"),
        ("path,label\na.png,x\nb.png,y\n", "specimen", "has no column 'specimen'"),
        ("path,label\na.png,x\nnope.png,y\n", None, r"labels.csv:3: no such image '.*nope.png'"),
        ("path,label\na.png,x\nb.png,x\n", None, "every image is labelled 'x'"),
        ("path,label,s\na.png,x,S1\nb.png,x,S1\nc.png,y,S2\n", "s",
         "group 'S2' of column 's' has only one image"),
        ("path,label\na.png,x\na.png,y\n", None,
         r"labels.csv:3: .*a.png' is listed twice \(line 2\)"),
        ("path,label\na.png,\n", None, r"labels.csv:2: empty 'label'"),
        ("path,label\n", None, "lists no images"),
        ("path,label\na.png,x\nsub,y\n", None, r"labels.csv:3: is a directory, not an image"),
    ],
)  # fmt: skip
def test_a_bad_labels_file_is_refused_naming_the_problem(folder, text, groups, message):
    with pytest.raises(ValueError, match=message):
        read_labels(write(folder, text), groups=groups)


def test_a_missing_labels_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read labels file .*missing.csv"):
        read_labels(tmp_path / "missing.csv")
