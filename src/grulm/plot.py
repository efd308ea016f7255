"""Training curves as PNG files (matplotlib's file-only Agg backend, no display needed).

Every plot is written under a temporary name and renamed, so a reader never sees half a PNG.
Characters of a title that the font lacks (a corpus named ``日本語.txt``) are drawn as boxes,
without matplotlib's warning per glyph (which would print a line of Python source).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def save_perplexity_plot(
    path: str | os.PathLike, curves: Mapping[str, Sequence[float]], title: str = ""
) -> Path:
    """Plot perplexity per epoch, one line per curve (e.g. ``{"train": [...], "val": [...]}``).

    ``values[i]`` belongs to epoch ``i + 1``; NaN marks an epoch without a value (validation
    every k epochs), and the line joins the epochs that have one.
    """
    with _axes(path, title) as ax:
        for label, values in curves.items():
            points = [(epoch, v) for epoch, v in enumerate(values, start=1) if math.isfinite(v)]
            ax.plot([e for e, _ in points], [v for _, v in points], label=label,
                    marker="." if len(points) < len(values) else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("perplexity")
        ax.set_yscale("log")
    return Path(path)


def save_curves_plot(
    path: str | os.PathLike, curves: Mapping[str, Sequence[tuple[float, float]]], *,
    xlabel: str, ylabel: str, title: str = "",
) -> Path:  # fmt: skip
    """Plot one line of ``(x, y)`` points per label (e.g. validation loss against seconds of
    training, one line per model), with a marker at every point."""
    with _axes(path, title) as ax:
        for label, points in curves.items():
            ax.plot([x for x, _ in points], [y for _, y in points], label=label, marker=".")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    return Path(path)


@contextmanager
def _axes(path: str | os.PathLike, title: str, *, width: float = 6.0,
          curves: bool = True) -> Iterator:  # fmt: skip
    """Axes to draw on; on leaving, the title (and for ``curves`` the grid and legend) are
    added and the figure is written to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(width, 4), dpi=100)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from",
                                    category=UserWarning)
            yield ax
            if curves:
                ax.grid(True, which="both", alpha=0.3)
                ax.legend()
            if title:
                ax.set_title(title)
            fig.tight_layout()
            tmp = path.with_name(f".{path.name}.part")
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    os.replace(tmp, path)


def save_heatmap(
    path: str | os.PathLike, values, tokens: Sequence[str], title: str = ""
) -> Path:
    """Draw ``values`` (T, H), e.g. a gate per step and unit, as units (rows) × tokens
    (columns), each column labelled with its token; written atomically as a PNG."""
    grid = [list(row) for row in zip(*values.tolist(), strict=True)]  # (H, T)
    width = min(max(6.0, 0.12 * len(tokens) + 1.5), 40.0)
    with _axes(path, title, width=width, curves=False) as ax:
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.figure.colorbar(image, ax=ax)
        ax.set_xticks(range(len(tokens)), ["␣" if t == " " else t for t in tokens],
                      fontsize=7, fontfamily="monospace")
        ax.set_ylabel("unit")
    return Path(path)
