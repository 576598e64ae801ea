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
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": legends placed beside their panels stay in
    plt.close(fig)
    return path


def _sheet(
    items: Sequence, titles: Sequence[str], path: str | Path, columns: int, draw, panel: tuple[float, float]
) -> Path:
    """A grid of panels of ``panel`` inches (width, height), ``draw(ax, item)`` each (it may
    return the axes it drew on instead, e.g. a 3D one in the panel's place), with
    their titles wrapped to the panel's width (never cut off), saved as PNG."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(items), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    width, height = panel
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, (height + 0.35) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item, title in zip(axes.flat, items, titles):
        drawn = draw(ax, item) or ax  # a draw may put another axes (3D) in the panel's place
        drawn.set_title("\n".join(textwrap.wrap(title, max(8, int(width * 13)))), fontsize=7)
    return _save(fig, path)


def occupancy_sheet(
    grids: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, columns: int = 8, panel=(1.8, 1.8)
) -> Path:
    """Save a contact sheet of occupancy grids (depth-shaded projection along z) as PNG."""

    def draw(ax, grid):
        grid = np.asarray(grid, dtype=np.float32)
        depth = grid.shape[2]
        # The nearest occupied cell along z, brighter when closer: reads as a 3D silhouette.
        first = np.where(grid.any(axis=2), np.argmax(grid > 0.5, axis=2), depth)
        shade = np.where(first < depth, 1.0 - 0.7 * first / depth, 0.0)
        ax.imshow(shade.T, origin="lower", cmap="magma", vmin=0, vmax=1)

    return _sheet(grids, titles, path, columns, draw, panel)


def mesh_sheet(
    meshes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    titles: Sequence[str],
    path: str | Path,
    columns: int = 8,
    panel=(1.8, 1.8),
) -> Path:
    """Save a contact sheet of triangle meshes (vertices f32[V, 3], faces i32[F, 3], optional
    colors u8[V, 3|4]), each framed on itself and shaded from one light at a three-quarter
    view: the meshes themselves, not their voxels."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    light = np.array([0.4, -0.6, 0.7])
    light /= np.linalg.norm(light)

    def draw(ax_2d, mesh):
        vertices, faces, colors = mesh
        fig = ax_2d.figure
        ax = fig.add_subplot(ax_2d.get_subplotspec(), projection="3d")
        ax_2d.remove()
        triangles = vertices[faces]
        normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
        base = colors[faces].mean(axis=1)[:, :3] / 255.0 if colors is not None else np.full((len(faces), 3), 0.7)
        shade = 0.35 + 0.65 * np.abs(normals @ light)[:, None]  # both sides lit: winding may vary
        ax.add_collection3d(Poly3DCollection(triangles, facecolors=np.clip(base * shade, 0, 1), linewidths=0))
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-6)
        ax.set(**{f"{a}lim": (c - half, c + half) for a, c in zip("xyz", centre)})
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=25, azim=-55)
        ax.set_axis_off()
        return ax

    return _sheet(meshes, titles, path, columns, draw, panel)


def image_sheet(
    images: Sequence[np.ndarray], titles: Sequence[str], path: str | Path, columns: int = 8, panel=(1.8, 1.8)
) -> Path:
    """Save a contact sheet of RGB(A) images (uint8[H, W, C]) as PNG; RGBA over a checkerboard.
    ``panel``: each image's room in inches (width, height); a strip of views wants a wide one."""

    def draw(ax, image):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 4:
            h, w = image.shape[:2]
            checker = (((np.arange(h)[:, None] // 8) + (np.arange(w)[None] // 8)) % 2) * 40 + 200
            alpha = image[..., 3:4] / 255.0
            image = (image[..., :3] * alpha + checker[..., None] * (1 - alpha)).astype(np.uint8)
        ax.imshow(image)

    return _sheet(images, titles, path, columns, draw, panel)


def curves(
    series: dict[str, tuple | dict[str, tuple]],
    path: str | Path,
    title: str = "",
    log_y: bool = True,
    reference: dict[str, float] | None = None,
) -> Path:
    """Save line plots as PNG, one panel per ``name -> (x, y)`` (e.g. learning curves) or per
    ``name -> {label: (x, y)}`` (several lines, legend beside the panel, not over the data).
    A line given as ``(x, y, low, high)`` draws each point with its interval (several such
    lines side by side, not on top of each other); a panel with one x value (one round) is
    centred on it with a unit-wide axis, not squeezed to a dot. ``reference``: panel name ->
    a y value drawn as a dashed line (e.g. 0 for gains)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max(len(series), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, lines) in zip(axes.flat, series.items()):
        lines = lines if isinstance(lines, dict) else {"": lines}
        positive, xs = True, set()
        with_interval = [label for label, line in lines.items() if len(line) == 4]
        for label, (x, y, *interval) in lines.items():
            y = np.asarray(y, dtype=float)
            xs.update(x)
            if interval:
                low, high = (np.asarray(v, dtype=float) for v in interval)
                dodge = 0.1 * (with_interval.index(label) - (len(with_interval) - 1) / 2)
                ax.errorbar(
                    np.asarray(x, dtype=float) + dodge,
                    y,
                    yerr=[y - low, high - y],
                    lw=1.2,
                    marker="o",
                    ms=4,
                    capsize=4,
                    label=label or None,
                )
                positive &= bool(np.all(low > 0))
            else:
                ax.plot(x, y, lw=1.2, marker="o" if len(y) < 12 else None, ms=4, label=label or None)
            positive &= bool(len(y)) and bool(np.all(y > 0))
        if log_y and positive:
            ax.set_yscale("log")
        if reference and name in reference:
            ax.axhline(reference[name], color="grey", lw=1, ls="--")
        if len(xs) == 1:
            only = next(iter(xs))
            ax.set_xlim(only - 0.5, only + 0.5)
            ax.set_xticks([only])
        elif xs and all(float(v).is_integer() for v in xs):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds, steps: no 0.5
        if len(lines) > 1:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # not over the bars
    for ax in axes:
        ax.tick_params(labelsize=7)
    return _save(fig, path)
