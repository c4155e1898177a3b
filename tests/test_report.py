"""Figures are written atomically and closed: pyplot would otherwise keep every one alive."""

from __future__ import annotations

from microtex import report


def test_a_saved_figure_is_written_and_closed(tmp_path):
    plt = report._pyplot()
    before = set(plt.get_fignums())
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = report._save(fig, tmp_path / "line.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plt.get_fignums()) == before
    assert not [p for p in tmp_path.iterdir() if p.name != "line.png"]  # no temporary left
