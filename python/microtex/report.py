"""Figures and the numbers behind them: PNG plots (matplotlib, headless), JSON and CSV, atomic."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

import numpy as np

from microtex._files import atomic_path, atomic_write_text

__all__ = ["csv_text", "write_json", "pca_scatter", "montage"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - declared dependency
        raise ImportError("plots need matplotlib: pip install matplotlib") from None
    return plt


def write_json(path, payload) -> pathlib.Path:
    """Write ``payload`` as indented JSON, atomically (temporary name, then rename)."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def csv_text(header, rows) -> str:
    """A CSV table (``csv`` module quoting, ``\\n`` line ends) of a header and rows.

    Values are written as ``str`` does (floats exactly, as ``repr``), None as
    an empty cell.

    Examples
    --------
    >>> print(csv_text(["a", "b"], [[1, None], ["x,y", 0.5]]), end="")
    a,b
    1,
    "x,y",0.5
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    """Write ``fig`` as a PNG atomically and close it (pyplot keeps open figures alive)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def pca_scatter(
    coords: np.ndarray, labels, label_names: dict, path, *, title: str = "", explained=None
) -> pathlib.Path:
    """Scatter of 2-D coordinates coloured by class, saved as PNG."""
    plt = _pyplot()
    coords = np.asarray(coords)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, label in enumerate(np.unique(labels)):
        m = labels == label
        ax.scatter(
            coords[m, 0],
            coords[m, 1],
            s=28,
            color=plt.cm.tab10(i % 10),
            label=label_names.get(label, str(label)),
            edgecolors="k",
            linewidths=0.3,
        )
    xlabel, ylabel = "PC 1", "PC 2"
    if explained is not None:
        xlabel += f" ({100 * explained[0]:.1f}% of variance)"
        ylabel += f" ({100 * explained[1]:.1f}% of variance)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, pathlib.Path(path))


def montage(images, titles, path, *, columns: int = 4) -> pathlib.Path:
    """Grid of grayscale images in [0, 1] with titles, saved as PNG."""
    plt = _pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    return _save(fig, pathlib.Path(path))
