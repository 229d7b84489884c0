"""Colour statistics: per-channel mean, std and histogram of a set, and their distances.

This is the quantity HLDF's colour loss trains on (per-channel mean and std against real
images), so it shows directly whether over-saturated or shifted colours were fixed.
"""

from __future__ import annotations

import numpy as np

CHANNELS = ("red", "green", "blue")


class ColorStats:
    """Per-image channel moments and histograms, gathered batch by batch (values scaled to 0..1)."""

    def __init__(self, n: int, bins: int = 32):
        self.bins = bins
        self.mean = np.zeros((n, 3))
        self.mean_sq = np.zeros((n, 3))
        self.hist = np.zeros((n, 3, bins))

    def add(self, indices: list[int], batch) -> None:
        """`batch` is a uint8 Nx3xHxW tensor of the images at `indices`."""
        import torch

        n, _, h, w = batch.shape
        x = batch.double() / 255.0
        self.mean[indices] = x.mean(dim=(2, 3)).numpy()
        self.mean_sq[indices] = (x * x).mean(dim=(2, 3)).numpy()
        bin_index = (batch.long() * self.bins) // 256
        offsets = (torch.arange(n * 3).view(n, 3, 1, 1)) * self.bins
        counts = torch.bincount((bin_index + offsets).flatten(), minlength=n * 3 * self.bins)
        self.hist[indices] = counts.view(n, 3, self.bins).double().numpy() / (h * w)

    def summary(self, indices=None) -> dict:
        """Channel mean and pooled std over the chosen images (each image weighted equally), and
        the mean normalised histogram."""
        idx = slice(None) if indices is None else np.asarray(indices, dtype=int)
        mean, mean_sq, hist = self.mean[idx], self.mean_sq[idx], self.hist[idx]
        if len(mean) == 0:
            return {"n": 0}
        mu = mean.mean(0)
        std = np.sqrt(np.clip(mean_sq.mean(0) - mu * mu, 0, None))
        return {"n": int(len(mean)), "mean": dict(zip(CHANNELS, mu.tolist())), "std": dict(zip(CHANNELS, std.tolist())),
                "histogram": hist.mean(0)}


def summarise_files(paths) -> dict:
    """ColorStats summary of image files, each read as RGB at its own size: for callers that
    hold paths rather than an ImageSet (the app's Compare tab, the experiments)."""
    from medart_core.data import load_rgb
    from medart_core.metrics.sets import to_uint8_tensor

    paths = list(paths)
    stats = ColorStats(len(paths))
    for index, path in enumerate(paths):
        stats.add([index], to_uint8_tensor(load_rgb(path))[None])
    return stats.summary()


def color_distance(real: dict, fake: dict) -> dict:
    """|difference| of channel means and stds, their average over channels (`distance`, the
    colour-loss quantity), and the 1-D Wasserstein distance between channel histograms (0..1 units)."""
    from scipy.stats import wasserstein_distance

    if not real.get("n") or not fake.get("n"):
        return {"skipped": "a set has no images"}
    bins = real["histogram"].shape[1]
    centres = (np.arange(bins) + 0.5) / bins
    out = {"mean_abs_diff": {}, "std_abs_diff": {}, "histogram_wasserstein": {}}
    for c, name in enumerate(CHANNELS):
        out["mean_abs_diff"][name] = abs(real["mean"][name] - fake["mean"][name])
        out["std_abs_diff"][name] = abs(real["std"][name] - fake["std"][name])
        out["histogram_wasserstein"][name] = float(wasserstein_distance(
            centres, centres, real["histogram"][c] + 1e-12, fake["histogram"][c] + 1e-12))
    out["distance"] = float(np.mean([out["mean_abs_diff"][n] + out["std_abs_diff"][n] for n in CHANNELS]))
    out["histogram_wasserstein_mean"] = float(np.mean(list(out["histogram_wasserstein"].values())))
    return out


def public(summary: dict) -> dict:
    """A summary without its histogram array (for report.json)."""
    return {k: v for k, v in summary.items() if k != "histogram"}
