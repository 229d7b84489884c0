"""Set-to-set distances: Frechet distance and KID, with their uncertainty.

- Point estimates come from the libraries: torch-fidelity's `fid_statistics_to_metric` and
  `kid_features_to_metric` on features we extracted, and torchmetrics' FrechetInceptionDistance /
  KernelInceptionDistance metric classes (with their resizing and uint8 conventions) for FID/KID.
- Bootstrap confidence intervals re-evaluate the Frechet distance hundreds of times, so they use
  an exact low-rank identity, tr sqrt(S1 S2) = nuclear norm of A B^T (S1 = A^T A, S2 = B^T B), which
  costs an n x n SVD instead of a D x D general eigenproblem; a test checks it against the library.
- Small sets: FD is biased upward when n is small (and its covariance is singular when n <= D);
  `sample_size_warnings` says so rather than letting a number pass as meaningful.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from medart_core.errors import MedArtError

logger = logging.getLogger(__name__)

FID_RELIABLE_N = 2048  # the usual advice for Inception FID (Chong & Forsyth, "Effectively Unbiased FID", 2020)
MIN_N = 50  # below this a set-level distance is mostly noise
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's TF-ported FID Inception


def frechet_distance(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torch-fidelity's function)."""
    import torch
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    _check_pair(features_1, features_2, minimum=2)
    stats = [fid_features_to_statistics(torch.from_numpy(np.asarray(f, dtype=np.float64))) for f in (features_1, features_2)]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID])


def frechet_distance_lowrank(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """The same Frechet distance through centred data matrices (exact; fast when n < D or repeated)."""
    x, y = np.asarray(features_1, dtype=np.float64), np.asarray(features_2, dtype=np.float64)
    a = (x - x.mean(0)) / math.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / math.sqrt(len(y) - 1)
    diff = x.mean(0) - y.mean(0)
    if min(len(a), len(b)) <= a.shape[1]:
        trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:
        w, v = np.linalg.eigh(a.T @ a)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ (b.T @ b) @ root), 0, None)).sum()
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * trace_sqrt)


def bootstrap_interval(features_1: np.ndarray, features_2: np.ndarray, replicates: int = 100,
                       seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the Frechet distance, both sets resampled with replacement.

    It shows sampling noise, not the small-n bias (resampling adds duplicates, so it leans high).
    """
    if replicates < 2 or min(len(features_1), len(features_2)) < 3:
        return None
    rng = np.random.default_rng(seed)
    values = [frechet_distance_lowrank(features_1[rng.integers(0, len(features_1), len(features_1))],
                                       features_2[rng.integers(0, len(features_2), len(features_2))])
              for _ in range(replicates)]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def kid_subset_size(n_1: int, n_2: int, preferred: int = 1000) -> int:
    """KID's subset size: the usual 1000, or the smaller set's size for small sets."""
    return max(2, min(preferred, n_1, n_2))


def kernel_inception_distance(features_1: np.ndarray, features_2: np.ndarray, subsets: int = 100,
                              subset_size: int | None = None, seed: int = 0) -> dict:
    """KID (unbiased polynomial-kernel MMD^2) mean and std over random subsets (torch-fidelity)."""
    import torch
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    _check_pair(features_1, features_2, minimum=2)
    size = subset_size or kid_subset_size(len(features_1), len(features_2))
    out = kid_features_to_metric(torch.from_numpy(np.asarray(features_1, dtype=np.float64)),
                                 torch.from_numpy(np.asarray(features_2, dtype=np.float64)),
                                 kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"mean": float(out[KEY_METRIC_KID_MEAN]), "std": float(out[KEY_METRIC_KID_STD]),
            "subsets": subsets, "subset_size": size}


def set_distances(real: np.ndarray, fake: np.ndarray, bootstrap: int, kid_subsets: int, seed: int) -> dict:
    """FD with its bootstrap interval and KID for one pair of feature sets, with warnings."""
    if min(len(real), len(fake)) < 2:
        return {"n_real": len(real), "n_fake": len(fake), "skipped": "fewer than 2 images in a set",
                "warnings": sample_size_warnings(len(real), len(fake), real.shape[1] if real.ndim == 2 else 0)}
    return {
        "n_real": len(real), "n_fake": len(fake),
        "fd": frechet_distance(real, fake),
        "fd_ci95": bootstrap_interval(real, fake, bootstrap, seed),
        "kid": kernel_inception_distance(real, fake, subsets=kid_subsets, seed=seed),
        "warnings": sample_size_warnings(len(real), len(fake), real.shape[1]),
        # n <= D: singular covariance, FD biased upward; KID (unbiased) is then the figure to read.
        "fd_reliable": fd_reliable(len(real), len(fake), real.shape[1]),
    }


def fd_reliable(n_real: int, n_fake: int, dim: int) -> bool:
    """False when the smaller set has no more images than the feature dimension (singular covariance)."""
    return min(n_real, n_fake) > dim


def sample_size_warnings(n_real: int, n_fake: int, dim: int, inception: bool = False) -> list[str]:
    """Plain-language reasons not to trust a distance computed on these set sizes."""
    n = min(n_real, n_fake)
    notes = []
    if n < MIN_N:
        notes.append(f"only {n} images in the smaller set (< {MIN_N}): FD and KID are dominated by sampling noise")
    if not fd_reliable(n_real, n_fake, dim):
        notes.append(f"n={n} <= feature dimension {dim}: the covariance is singular and FD is biased upward; "
                     "compare FD only between runs with the same n, or rely on KID (unbiased)")
    if inception and n < FID_RELIABLE_N:
        notes.append(f"Inception FID at n={n} (< {FID_RELIABLE_N}) is biased upward and not comparable with "
                     "published numbers at 10k/50k images")
    return notes


def _check_pair(features_1, features_2, minimum: int) -> None:
    if len(features_1) < minimum or len(features_2) < minimum:
        raise MedArtError(f"a distance between sets needs at least {minimum} images in each, "
                          f"got {len(features_1)} and {len(features_2)}")
    if np.shape(features_1)[1:] != np.shape(features_2)[1:]:
        raise MedArtError(f"feature shapes differ: {np.shape(features_1)} vs {np.shape(features_2)}")


class LibraryFidKid:
    """torchmetrics' FrechetInceptionDistance and KernelInceptionDistance fed uint8 batches.

    `feature` is 2048 (the standard Inception-v3 pool features; weights from torch-fidelity) or
    any module taking uint8 images, which torchmetrics accepts in place of Inception. Both metrics
    share one forward pass per batch.
    """

    def __init__(self, feature, n_real: int, n_fake: int, kid_subsets: int = 100, seed: int = 0,
                 inception_weights: str | None = None):
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        module = load_inception(inception_weights) if feature == 2048 else feature
        shared = _SharedForward(module)
        self.seed = seed
        self.subset_size = kid_subset_size(n_real, n_fake)
        self.fid = FrechetInceptionDistance(feature=shared, normalize=False)
        self.kid = KernelInceptionDistance(feature=shared, subsets=kid_subsets, subset_size=self.subset_size,
                                           normalize=False)
        self.kid_subsets = kid_subsets
        self._torch = torch

    def update(self, images, real: bool) -> None:
        self.fid.update(images, real=real)
        self.kid.update(images, real=real)

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """The features the KID metric kept (the same the FID saw): real, fake."""
        cat = self._torch.cat
        return (cat(self.kid.real_features).double().numpy(), cat(self.kid.fake_features).double().numpy())

    def compute(self) -> dict:
        self._torch.manual_seed(self.seed)  # torchmetrics' KID draws its subsets from the global RNG
        kid_mean, kid_std = self.kid.compute()
        return {"fid": float(self.fid.compute()),
                "kid": {"mean": float(kid_mean), "std": float(kid_std), "subsets": self.kid_subsets,
                        "subset_size": self.subset_size}}


def _SharedForward(module):
    """Wraps a feature module so that two metrics updated with the same batch run it once."""
    import torch

    class SharedForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module
            self.num_features = int(getattr(module, "num_features", 0)) or None
            self._last = (None, None)

        def forward(self, images):
            if self._last[0] is not images:
                self._last = (images, self.module(images))
            return self._last[1]

    shared = SharedForward()
    if shared.num_features is None:
        del shared.num_features  # torchmetrics then probes the output size itself
    return shared


def load_inception(weights_path: str | None = None):
    """torchmetrics' Inception-v3 (torch-fidelity's port of the TF FID network), or a MedArtError
    that says the weights could not be loaded (offline machines cannot download them)."""
    from pathlib import Path

    if weights_path is not None and not Path(weights_path).is_file():
        raise MedArtError(f"--inception-weights {weights_path}: file not found")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        module = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                    feature_extractor_weights_path=weights_path)
    except ModuleNotFoundError as err:
        raise MedArtError(f"FID/KID need torch-fidelity: pip install torch-fidelity ({err})") from err
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise MedArtError(f"the FID Inception weights ({INCEPTION_WEIGHTS}) could not be loaded: {err}. "
                          "Put the file in ~/.cache/torch/hub/checkpoints/ or pass --inception-weights PATH") from err
    module.num_features = 2048
    module.description = "Inception-v3 pool3 (torch-fidelity/torchmetrics FID network), 2048-d"
    return module
