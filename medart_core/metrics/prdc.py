"""Precision, recall, density and coverage (Naeem et al., 2020) with the authors' `prdc` package.

Each set is a union of balls around its points, of radius the distance to the k-th nearest
neighbour in the same set. Precision: the fraction of generated images inside the real
manifold (fidelity). Recall: the fraction of real images inside the generated manifold
(variety; a collapsed set has tiny balls and covers almost nothing). Density: how many real balls
hold each generated image, over k (about 1 for matching sets, robust to real outliers).
Coverage: the fraction of real images whose ball holds a generated image (variety, robust to
generated outliers).

Cost: `prdc` builds the full n_real x n_fake and n x n distance matrices, so time and memory are
quadratic in n (at 10,000 images of each set, three 10,000 x 10,000 float64 matrices: 2.4 GB).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

K = 5  # Naeem et al.'s recommended k


def minimum_images(k: int = K) -> int:
    """Images each set needs: a k-th neighbour other than the image itself needs k + 1 images,
    and `prdc` partitions at index k + 1, which needs one more."""
    return k + 2


def compute(real: np.ndarray, fake: np.ndarray, k: int = K) -> dict:
    """{precision, recall, density, coverage, n_real, n_fake} or {unavailable, n_real, n_fake}
    when a set is too small for the k-th neighbour."""
    from prdc import compute_prdc

    sizes = {"n_real": int(len(real)), "n_fake": int(len(fake))}
    n = min(len(real), len(fake))
    if n < minimum_images(k):
        return {**sizes, "unavailable": f"n={n} in the smaller set: PRDC with k={k} needs at least "
                                        f"{minimum_images(k)} images in each set (the k-th nearest neighbour "
                                        "other than the image itself, as the prdc package computes it)"}
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        values = compute_prdc(np.asarray(real, dtype=np.float32), np.asarray(fake, dtype=np.float32), nearest_k=k)
    return {**sizes, **{name: float(values[name]) for name in ("precision", "recall", "density", "coverage")}}


def prdc_section(real: np.ndarray, fake: np.ndarray, classes: list[tuple[str, np.ndarray, np.ndarray]],
                 feature_space: str, k: int = K) -> dict:
    """report.json's PRDC block in one feature space: over all images, then per class."""
    return {"feature_space": feature_space, "k": k, **compute(real, fake, k),
            "per_class": {label: compute(real[r], fake[f], k) for label, r, f in classes},
            "library": "prdc (Naeem et al., 2020)"}
