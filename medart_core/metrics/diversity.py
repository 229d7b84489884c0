"""Diversity: mean pairwise MS-SSIM among the images of a class (torchmetrics), generated vs real.

RoentGen and MINIM report it: a generator that repeats itself has pairs that look alike, so its
mean MS-SSIM is high (1.0 for copies). The real images of the same class give the reference,
because some classes (neighbouring MRI slices) are alike by nature; the ratio generated / real
above 1 means less variety than the data.

Cost stays linear in the set size: at most `pairs` (default 1,000) distinct pairs per class,
drawn with a seed. Images are compared at one size (the generated images' smallest side, at most
`MAX_SIZE`) so that real and generated images are measured alike; torchmetrics' 5 scales need
more than 160 px, so smaller images use fewer scales (see `msssim_settings`).
"""

from __future__ import annotations

import numpy as np

MAX_SIZE = 256  # 5 scales of MS-SSIM fit; larger images cost memory, not information about variety
DEFAULT_PAIRS = 1000
KERNEL_SIZE = 11  # the Gaussian window of SSIM (Wang et al.), kept at every size
DEFAULT_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, torchmetrics' default


def msssim_settings(size: int) -> dict:
    """The most scales (at most 5) that torchmetrics accepts at size x size with an 11-px window.

    torchmetrics needs size // (scales - 1)**2 > kernel - 1: 5 scales from 176 px, 4 from 99 px,
    3 from 44 px, 2 from 11 px. Fewer scales keep the first weights of Wang et al., renormalised
    to sum to 1, so the coarsest scales (which small images do not have) are the ones left out.
    """
    for scales in (5, 4, 3, 2):
        if size // max(1, scales - 1) ** 2 > KERNEL_SIZE - 1 and size >= 2 ** scales:
            betas = np.array(DEFAULT_BETAS[:scales])
            return {"image_size": size, "scales": scales, "kernel_size": KERNEL_SIZE,
                    "betas": [round(float(b), 6) for b in betas / betas.sum()]}
    raise ValueError(f"images of {size} px are too small for MS-SSIM with an {KERNEL_SIZE}-px window (need 22 px)")


class Thumbnails:
    """uint8 copies of every image of a set at size x size, filled batch by batch during the
    evaluation's single reading pass (the `visit` hook), so no image is read twice."""

    def __init__(self, n: int, size: int):
        import torch

        self.size = size
        self.images = torch.zeros((n, 3, size, size), dtype=torch.uint8)

    def add(self, indices, batch) -> None:
        from medart_core.metrics.sets import resize_uint8

        self.images[indices] = resize_uint8(batch, self.size).round().clamp(0, 255).to(self.images.dtype)


def sample_pairs(n: int, cap: int, seed: int) -> np.ndarray:
    """All i < j pairs of n images when there are at most `cap`, else `cap` distinct ones drawn
    with the seed (rejection over random pairs: no n^2 list is built)."""
    total = n * (n - 1) // 2
    if total <= cap:
        return np.array(np.triu_indices(n, 1)).T.reshape(-1, 2)
    rng = np.random.default_rng(seed)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < cap:
        i, j = rng.integers(0, n, size=(2, 2 * (cap - len(chosen))))
        for a, b in zip(np.minimum(i, j), np.maximum(i, j)):
            if a != b and len(chosen) < cap:
                chosen.add((int(a), int(b)))
    return np.array(sorted(chosen))


def mean_pairwise_msssim(images, settings: dict, cap: int = DEFAULT_PAIRS, seed: int = 0,
                         batch_size: int = 250) -> tuple[float | None, int]:
    """(mean MS-SSIM over sampled pairs, number of pairs) of a uint8 Nx3xSxS tensor; (None, 0)
    for fewer than two images."""
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    pairs = sample_pairs(len(images), cap, seed) if len(images) >= 2 else np.zeros((0, 2), dtype=int)
    if not len(pairs):
        return None, 0
    values = []
    for start in range(0, len(pairs), batch_size):
        chunk = torch.from_numpy(pairs[start:start + batch_size])
        # float32: torch's float64 convolutions are ~10x slower on CPU, and a mean of similarities needs no more.
        a, b = (images[chunk[:, c]].float() / 255.0 for c in (0, 1))
        values.append(msssim(a, b, data_range=1.0, kernel_size=settings["kernel_size"],
                             betas=tuple(settings["betas"]), reduction="none"))
    return float(torch.cat(values).mean()), len(pairs)


def diversity_section(real_images, fake_images, classes: list[tuple[str, np.ndarray, np.ndarray]],
                      settings: dict, cap: int = DEFAULT_PAIRS, seed: int = 0) -> dict:
    """report.json's `diversity`: per class (label, real indices, generated indices) the mean
    pairwise MS-SSIM of the generated and of the real images and their ratio; overall the mean
    over the classes where both exist. Without classes the whole sets are one class, "all"."""
    per_class = {}
    for label, real_index, fake_index in classes:
        fake_value, fake_pairs = mean_pairwise_msssim(fake_images[fake_index], settings, cap, seed)
        real_value, real_pairs = mean_pairwise_msssim(real_images[real_index], settings, cap, seed)
        row = {"ms_ssim": fake_value, "real_ms_ssim": real_value, "pairs": fake_pairs, "real_pairs": real_pairs,
               "n": int(len(fake_index)), "n_real": int(len(real_index))}
        if fake_value is None or real_value is None:
            row["unavailable"] = (f"needs 2 images in each set, has {len(fake_index)} generated and "
                                  f"{len(real_index)} real")
        row["ratio"] = fake_value / real_value if fake_value is not None and real_value else None
        per_class[label] = row
    usable = [row for row in per_class.values() if "unavailable" not in row]
    section = {"ms_ssim": None, "real_ms_ssim": None, "ratio": None, "pairs": sum(r["pairs"] for r in usable),
               "real_pairs": sum(r["real_pairs"] for r in usable), "classes": len(usable), "max_pairs_per_class": cap,
               "library": "torchmetrics multiscale_structural_similarity_index_measure", **settings}
    if usable:
        section["ms_ssim"] = float(np.mean([r["ms_ssim"] for r in usable]))
        section["real_ms_ssim"] = float(np.mean([r["real_ms_ssim"] for r in usable]))
        section["ratio"] = section["ms_ssim"] / section["real_ms_ssim"] if section["real_ms_ssim"] else None
    section["per_class"] = per_class
    return section


def comparison_size(paths) -> int:
    """The size both sets are compared at: the smallest side among the generated images (read
    from the file headers only), at most MAX_SIZE. Raises ValueError when MS-SSIM cannot run."""
    from PIL import Image

    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, SyntaxError, ValueError):
            continue  # the reading pass refuses a broken image by name, with the project's one-line error
    if not sides:
        raise ValueError("no readable generated image to take the comparison size from")
    size = min(min(sides), MAX_SIZE)
    msssim_settings(size)  # too small: the ValueError says why
    return size
