"""PNG figures of the report, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ImageOps

from medart_core.metrics.color import CHANNELS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # a file backend: works on headless machines
    import matplotlib.pyplot as plt

    return plt


def color_histograms(real: dict, fake: dict, path: Path, title: str = "colour histograms") -> Path:
    """Real vs generated histogram of each channel."""
    plt = _pyplot()
    bins = real["histogram"].shape[1]
    centres = (np.arange(bins) + 0.5) / bins
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
    for c, (ax, name) in enumerate(zip(axes, CHANNELS)):
        ax.plot(centres, real["histogram"][c], color=name, label=f"real (n={real['n']})")
        ax.plot(centres, fake["histogram"][c], color=name, linestyle="--", label=f"generated (n={fake['n']})")
        ax.set_title(f"{name}: mean {real['mean'][name]:.3f} vs {fake['mean'][name]:.3f}")
        ax.set_xlabel("intensity (0..1)")
    axes[0].set_ylabel("fraction of pixels")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def similarity_histograms(fake_pixel, fake_feature, path: Path, threshold: float, real_pixel=None,
                          feature_name: str = "features") -> Path:
    """Nearest-training-image similarity of generated (and held-out real) images, with the
    near-copy threshold."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    bins = np.linspace(min(-0.05, float(np.min(fake_pixel)) if len(fake_pixel) else 0), 1.0, 41)
    axes[0].hist(fake_pixel, bins=bins, alpha=0.6, label="generated", density=True)
    if real_pixel is not None and len(real_pixel):
        axes[0].hist(real_pixel, bins=bins, alpha=0.6, label="held-out real", density=True)
    axes[0].axvline(threshold, color="red", linestyle="--", label=f"near-copy threshold {threshold}")
    axes[0].set_title("nearest training image: pixel correlation")
    axes[0].legend(fontsize=8)
    axes[1].hist(fake_feature, bins=40, alpha=0.8, color="tab:green")
    axes[1].set_title(f"nearest training image: cosine in {feature_name}")
    for ax in axes:
        ax.set_xlabel("similarity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def contact_sheet(rows: list[dict], load, path: Path, thumb: float = 1.6) -> Path:
    """One row per pair: generated image, nearest training image in pixels, nearest in features.

    `rows` hold fake / train_pixel / train_feature images as PIL images (via `load`) with their
    similarities; flagged near-copies get a red title.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(3 * thumb + 1, len(rows) * thumb + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        cells = [("generated" + (f" [{row['label']}]" if row.get("label") else ""), row["fake_path"], False),
                 (f"pixel r={row['pixel_similarity']:.3f}" + (f" ssim={row['ssim']:.2f}" if "ssim" in row else ""),
                  row["train_pixel_path"], row.get("train_pixel_mirrored", False)),
                 (f"feature cos={row['feature_similarity']:.3f}", row["train_feature_path"],
                  row.get("train_feature_mirrored", False))]
        for c, (title, image_path, mirror) in enumerate(cells):
            ax = axes[r][c]
            image = load(image_path)
            # A match with a training image's mirror is shown mirrored, as it was matched.
            ax.imshow(ImageOps.mirror(image) if mirror else image)
            title += " (mirrored)" if mirror else ""
            ax.set_title(title, fontsize=7, color="red" if row["flagged"] and c < 2 else "black")
            ax.axis("off")
    fig.suptitle("closest generated / training pairs (red: flagged near-copy)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def bar_chart(values: dict[str, float], path: Path, title: str, ylabel: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(values) + 2), 3.2))
    ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def class_samples(rows: list[dict], load, path: Path, thumb: float = 1.1) -> Path:
    """One row per class: held-out real images, then generated images asked for that class, each
    titled with what the real-trained classifier called it (green: the asked class, red: not)."""
    plt = _pyplot()
    columns = max(len(row["real"]) + len(row["fake"]) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * thumb + 1.2, len(rows) * (thumb + 0.25) + 0.5),
                             squeeze=False)
    for r, row in enumerate(rows):
        cells = [(image_path, "real", "black") for image_path in row["real"]]
        cells += [(image_path, f"→ {predicted}", "green" if predicted == row["label"] else "red")
                  for image_path, predicted in row["fake"]]
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(cells):
                image_path, title, colour = cells[c]
                ax.imshow(load(image_path))
                ax.set_title(title, fontsize=6, color=colour)
        axes[r][0].text(-0.1, 0.5, row["label"], transform=axes[r][0].transAxes, fontsize=7, ha="right",
                        va="center")
    fig.suptitle("held-out real (left) and generated (right, marked with the classifier's call)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_rows(rows: list[list[dict]], load, path: Path, title: str, thumb: float = 1.6) -> Path:
    """A grid of images, one list of cells per row; a cell is {"path", "title", "red", "mirrored"}
    (mirrored: shown flipped left-right, as it was matched)."""
    plt = _pyplot()
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * thumb + 1, len(rows) * thumb + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                cell = row[c]
                image = load(cell["path"])
                ax.imshow(ImageOps.mirror(image) if cell.get("mirrored") else image)
                ax.set_title(cell["title"] + (" (mirrored)" if cell.get("mirrored") else ""), fontsize=7,
                             color="red" if cell.get("red") else "black")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def privacy_histograms(series: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float], path: Path) -> Path:
    """Per space (pixel, feature), histograms of the named similarity series (e.g. each prompt's
    closest own and other training image, held-out real images' nearest) and the threshold."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.4), squeeze=False)
    for ax, (space, named) in zip(axes[0], series.items()):
        values = [v for v in named.values() if len(v)]
        low = min(-0.05, min(float(np.min(v)) for v in values)) if values else 0.0
        bins = np.linspace(low, 1.0, 41)
        for name, v in named.items():
            if len(v):
                ax.hist(v, bins=bins, alpha=0.5, density=True, label=f"{name} (n={len(v)})")
        ax.axvline(thresholds[space], color="red", linestyle="--", label=f"threshold {thresholds[space]:.4g}")
        ax.set_title(f"nearest training image: {space} similarity")
        ax.set_xlabel("similarity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def grouped_bars(rows: dict[str, tuple], names: tuple[str, ...], path: Path, title: str, ylabel: str) -> Path:
    """One group of bars per class (e.g. real vs generated MS-SSIM, or precision / recall / coverage), 0..1."""
    plt = _pyplot()
    labels = list(rows)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) * len(names) / 2 + 2), 3.4))
    for n, name in enumerate(names):
        values = [rows[label][n] if rows[label][n] is not None else 0.0 for label in labels]
        ax.bar(np.arange(len(labels)) + (n - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
