"""Figures and the numbers behind them: PNG plots (matplotlib, headless), JSON and CSV, atomic."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

import numpy as np

from microtex._files import atomic_path, atomic_write_text

__all__ = ["csv_text", "write_json", "pca_scatter", "montage", "heat_overlay", "line_plot",
           "value_scatters", "thumbnail_scatter"]


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


def heat_overlay(image, heat, path, *, titles: tuple[str, str] = ("", ""),
                 alpha: float = 0.5) -> pathlib.Path:  # fmt: skip
    """A grayscale image beside itself overlaid with a heat map (and its colour bar), as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(image, cmap="gray", vmin=0, vmax=1)
    shown = axes[1].imshow(heat, cmap="inferno", alpha=alpha)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return _save(fig, pathlib.Path(path))


def line_plot(x, series: dict, path, *, xlabel: str, ylabel: str, title: str = "",
              ylim=None) -> pathlib.Path:  # fmt: skip
    """Lines with optional error bars: ``series`` maps a name to ``y`` or ``(y, yerr)``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    for name, values in series.items():
        y, yerr = values if isinstance(values, tuple) else (values, None)
        ax.errorbar(x, y, yerr=yerr, marker="o", markersize=4, capsize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, pathlib.Path(path))


def value_scatters(panels, path, *, columns: int = 3, title: str = "") -> pathlib.Path:
    """Scatter panels of 2-D points coloured by a value each.

    ``panels`` is a list of ``(coords (n, 2), values (n,), panel title, colour
    label[, colour map])``; numeric values get a colour bar (``"twilight"`` suits
    angles, whose ends meet), others a legend of categories.
    """
    plt = _pyplot()
    n = len(panels)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (coords, values, panel_title, label, *cmap) in zip(axes.ravel(), panels):
        coords = np.asarray(coords)
        values = np.asarray(values)
        if values.dtype.kind in "fiu":
            points = ax.scatter(coords[:, 0], coords[:, 1], c=values, s=12,
                                cmap=cmap[0] if cmap else "viridis")  # fmt: skip
            fig.colorbar(points, ax=ax, label=label)
        else:
            categories = np.unique(values)
            palette = plt.cm.tab10 if len(categories) <= 10 else plt.cm.tab20
            for i, category in enumerate(categories):
                m = values == category
                ax.scatter(coords[m, 0], coords[m, 1], s=12, color=palette(i % palette.N),
                           label=str(category),
                           marker="os^Dv"[(i // palette.N) % 5])  # fmt: skip
            ax.legend(fontsize=7, frameon=False, title=label, title_fontsize=7)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, pathlib.Path(path))


def thumbnail_scatter(coords, images, path, *, size: float = 0.06,
                      title: str = "") -> pathlib.Path:  # fmt: skip
    """Grayscale images in [0, 1] drawn at their 2-D coordinates (a map of a data set).

    ``size`` is a thumbnail's longer side as a fraction of the plot's larger
    extent; each keeps its aspect ratio.
    """
    plt = _pyplot()
    coords = np.asarray(coords, dtype=np.float64)[:, :2]
    fig, ax = plt.subplots(figsize=(8, 8))
    low, high = coords.min(axis=0), coords.max(axis=0)
    half = 0.5 * size * max(float((high - low).max()), np.finfo(float).tiny)
    for (x, y), image in zip(coords, images):
        height, width = np.shape(image)[:2]
        dx, dy = half * width / max(height, width), half * height / max(height, width)
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="bilinear",
                  extent=(x - dx, x + dx, y - dy, y + dy), zorder=2)  # fmt: skip
    ax.set_xlim(low[0] - 2 * half, high[0] + 2 * half)
    ax.set_ylim(low[1] - 2 * half, high[1] + 2 * half)
    ax.set_aspect("equal")
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, pathlib.Path(path))
