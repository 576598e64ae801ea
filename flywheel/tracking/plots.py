"""Images people would rather look at than read: contact sheets and curves (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _save(fig, path: str | Path) -> Path:
    """Lay out, write as PNG (folders created) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sheet(items: Sequence, titles: Sequence[str], path: str | Path, columns: int, draw) -> Path:
    """A grid of small panels, ``draw(ax, item)`` each, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(items), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.95 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item, title in zip(axes.flat, items, titles):
        draw(ax, item)
        ax.set_title(title, fontsize=6)
    return _save(fig, path)


def occupancy_sheet(grids: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, columns: int = 8) -> Path:
    """Save a contact sheet of occupancy grids (depth-shaded projection along z) as PNG."""

    def draw(ax, grid):
        grid = np.asarray(grid, dtype=np.float32)
        depth = grid.shape[2]
        # The nearest occupied cell along z, brighter when closer: reads as a 3D silhouette.
        first = np.where(grid.any(axis=2), np.argmax(grid > 0.5, axis=2), depth)
        shade = np.where(first < depth, 1.0 - 0.7 * first / depth, 0.0)
        ax.imshow(shade.T, origin="lower", cmap="magma", vmin=0, vmax=1)

    return _sheet(grids, titles, path, columns, draw)


def image_sheet(images: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, columns: int = 8) -> Path:
    """Save a contact sheet of RGB(A) images (uint8[H, W, C]) as PNG; RGBA over a checkerboard."""

    def draw(ax, image):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 4:
            h, w = image.shape[:2]
            checker = (((np.arange(h)[:, None] // 8) + (np.arange(w)[None] // 8)) % 2) * 40 + 200
            alpha = image[..., 3:4] / 255.0
            image = (image[..., :3] * alpha + checker[..., None] * (1 - alpha)).astype(np.uint8)
        ax.imshow(image)

    return _sheet(images, titles, path, columns, draw)


def curves(series: dict[str, tuple | dict[str, tuple]], path: str | Path, title: str = "", log_y: bool = True) -> Path:
    """Save line plots as PNG, one panel per ``name -> (x, y)`` (e.g. learning curves) or per
    ``name -> {label: (x, y)}`` (several lines with a legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(series), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, lines) in zip(axes.flat, series.items()):
        lines = lines if isinstance(lines, dict) else {"": lines}
        positive = True
        for label, (x, y) in lines.items():
            y = np.asarray(y, dtype=float)
            ax.plot(x, y, lw=1.2, marker="o" if len(y) < 12 else None, ms=3, label=label or None)
            positive &= bool(len(y)) and bool(np.all(y > 0))
        if log_y and positive:
            ax.set_yscale("log")
        if len(lines) > 1:
            ax.legend(fontsize=6)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def rankings_report(decisions, annotators, path: str | Path) -> Path:
    """A round's decisions (counts), winner scores and annotator quality, side by side.
    ``decisions`` / ``annotators``: frames of flywheel.feedback.aggregate.judge_round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    counts = decisions["decision"].value_counts()
    axes[0].bar(counts.index, counts.values, color="#4c72b0")
    axes[0].set_title("decisions", fontsize=9)
    axes[1].hist(decisions["score"].dropna(), bins=20, range=(0.5, 1), color="#55a868")
    axes[1].set_title("winner score (mean P[beats others])", fontsize=9)
    annotators.set_index("annotator_id")[["majority_agreement", "weight"]].plot.bar(ax=axes[2], fontsize=7)
    axes[2].set_title("annotators", fontsize=9)
    axes[2].set_ylim(0, 1)
    for ax in axes:
        ax.tick_params(labelsize=7)
    return _save(fig, path)
