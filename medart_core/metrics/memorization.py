"""Memorisation audit: is a generated image a near-copy of a training (patient) image?

For every generated image, the nearest training image by cosine similarity in two spaces:
  - pixels (correlation of 32x32 thumbnails), which catches copies that a classifier's features
    would call merely "same class"; its threshold flags near-copies;
  - the chosen feature space, reported beside it (semantic closeness, not identity).
Held-out real images give the reference: their nearest training images are by definition not
copies, so a generated image above that distribution deserves a look even under the threshold.

Training flips images (`random_flip`, and the latent cache stores every image's mirror), so a
generator can learn a training image's mirror as well as the image: each training image is
compared as it is and mirrored (left-right), and every match says which of the two it was.
"""

from __future__ import annotations

import numpy as np


def _unit(features: np.ndarray) -> np.ndarray:
    return features / np.clip(np.linalg.norm(features, axis=1, keepdims=True), 1e-12, None)


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(index, cosine similarity) of each query's most similar reference row."""
    q, r = _unit(queries), _unit(references)
    index = np.empty(len(q), dtype=int)
    similarity = np.empty(len(q))
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ r.T
        index[start:start + chunk] = sims.argmax(1)
        similarity[start:start + chunk] = sims.max(1)
    return index, similarity


def nearest_with_mirrors(queries: np.ndarray, references: np.ndarray,
                         mirrored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, similarity, matched the mirror) of each query's most similar reference, where
    `mirrored[i]` holds the features of reference i flipped left-right (None: no mirrors)."""
    if mirrored is None:
        index, similarity = nearest(queries, references)
        return index, similarity, np.zeros(len(index), dtype=bool)
    index, similarity = nearest(queries, np.concatenate([references, mirrored]))
    return index % len(references), similarity, index >= len(references)


def similarities_with_mirrors(queries: np.ndarray, references: np.ndarray,
                              mirrored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, matched the mirror): queries x references matrices of the cosine similarity to
    each reference or its mirror, whichever is closer; for searches within subsets of the
    references (privacy: a prompt's own training images vs the rest), one matrix product."""
    q = _unit(queries)
    direct, flipped = q @ _unit(references).T, q @ _unit(mirrored).T
    return np.maximum(direct, flipped), flipped > direct


def distribution(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"n": 0}
    q = np.percentile(values, [5, 25, 50, 75, 95, 99])
    return {"n": int(len(values)), "mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
            **{f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95, 99), q)}}


def audit(fake_pixels, train_pixels, fake_features, train_features, fake_labels, threshold: float,
          real_pixels=None, real_features=None, train_pixels_mirrored=None, train_features_mirrored=None) -> dict:
    """Nearest training image (or its mirror, when the `*_mirrored` features are given) of every
    generated one, near-copy flags and per-class counts.

    Returns the plain-data report section plus `pairs`: one row per generated image, sorted from
    the most to the least similar in pixel space (the contact sheet's order).
    """
    pixel_index, pixel_sim, pixel_mirror = nearest_with_mirrors(fake_pixels, train_pixels, train_pixels_mirrored)
    feature_index, feature_sim, feature_mirror = nearest_with_mirrors(fake_features, train_features,
                                                                      train_features_mirrored)
    flagged = pixel_sim >= threshold
    report = {
        "threshold": threshold, "space": "pixel correlation at 32x32",
        "mirrors": train_pixels_mirrored is not None,
        "n_generated": int(len(pixel_sim)), "n_training": int(len(train_pixels)),
        "n_flagged": int(flagged.sum()), "fraction_flagged": float(flagged.mean()) if len(flagged) else 0.0,
        "n_flagged_mirrored": int((flagged & pixel_mirror).sum()),
        "pixel_similarity": distribution(pixel_sim), "feature_similarity": distribution(feature_sim),
    }
    if real_pixels is not None and len(real_pixels):
        _, real_pixel_sim, _ = nearest_with_mirrors(real_pixels, train_pixels, train_pixels_mirrored)
        reference = {"pixel_similarity": distribution(real_pixel_sim)}
        report["above_held_out_max"] = int((pixel_sim > real_pixel_sim.max()).sum())
        if real_features is not None:
            _, real_feature_sim, _ = nearest_with_mirrors(real_features, train_features, train_features_mirrored)
            reference["feature_similarity"] = distribution(real_feature_sim)
        report["held_out_reference"] = reference
        report["_reference_pixel_sim"] = real_pixel_sim
    per_class = {}
    for label in sorted({str(l) for l in fake_labels if l is not None}):
        mask = np.array([str(l) == label for l in fake_labels])
        per_class[label] = {"n": int(mask.sum()), "n_flagged": int(flagged[mask].sum()),
                            "max_pixel_similarity": float(pixel_sim[mask].max())}
    report["per_class"] = per_class
    order = np.argsort(-pixel_sim, kind="stable")
    report["pairs"] = [{"fake": int(i), "train_pixel": int(pixel_index[i]), "pixel_similarity": float(pixel_sim[i]),
                        "train_pixel_mirrored": bool(pixel_mirror[i]),
                        "train_feature": int(feature_index[i]), "feature_similarity": float(feature_sim[i]),
                        "train_feature_mirrored": bool(feature_mirror[i]), "flagged": bool(flagged[i])} for i in order]
    report["_fake_pixel_sim"], report["_fake_feature_sim"] = pixel_sim, feature_sim
    return report
