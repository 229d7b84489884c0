"""Leakage between splits, the first thing a medical reviewer checks: does any image, or any
source volume or patient, stand in more than one split?

  - images: the same pixels (a hash of the decoded image), a near-duplicate or a mirror image,
    found with the memorisation audit's own similarity (pixel correlation at 32x32, each image
    and its left-right mirror, `memorization.nearest_with_mirrors`);
  - groups: a `source_file` (one per DICOM series / NIfTI volume / source image) or a `patient`
    pseudonym (`convert`) with images in two splits: neighbouring slices of one volume, or two
    scans of one patient, are not independent, whatever their pixels say.
Paths in the findings are relative to each set's folder (`ImageSet.relative_path`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict

import numpy as np

from medart_core.metrics.sets import ImageSet

GROUP_COLUMNS = ("source_file", "patient")
SPACE = "pixel correlation at 32x32, each image and its left-right mirror"


def _read(image_set: ImageSet, batch_size: int, progress: bool) -> dict:
    """Pixel features, their mirrors and a hash of every decoded image, in one reading pass."""
    from medart_core.metrics.features import extract, mirrored, pixel_features

    hashes = [""] * len(image_set)

    def visit(indices, batch):
        for index, image in zip(indices, batch):
            hashes[index] = hashlib.sha256(str(tuple(image.shape)).encode() + image.numpy().tobytes()).hexdigest()

    pixels = pixel_features()
    found = extract(image_set, {"pixels": pixels, "mirrored": mirrored(pixels)}, batch_size=batch_size,
                    progress=progress, visit=visit)
    return {**found, "hashes": hashes}


def _shared_images(a: ImageSet, fa: dict, b: ImageSet, fb: dict, threshold: float) -> list[dict]:
    """Each image of `b` whose nearest image of `a` (or its mirror) is the same pixels or at or
    above `threshold`."""
    from medart_core.metrics.memorization import nearest_with_mirrors

    by_hash = defaultdict(list)
    for index, digest in enumerate(fa["hashes"]):
        by_hash[digest].append(index)
    index, similarity, mirror = nearest_with_mirrors(fb["pixels"], fa["pixels"], fa["mirrored"])
    found = []
    for j in range(len(b)):
        exact = by_hash.get(fb["hashes"][j])
        if exact:
            kind, i, sim, is_mirror = "exact", exact[0], 1.0, False
        elif similarity[j] >= threshold:
            kind, i, sim, is_mirror = ("mirrored" if mirror[j] else "near-duplicate"), int(index[j]), float(similarity[j]), bool(mirror[j])
        else:
            continue
        found.append({"kind": kind, "split_a": a.name, "file_a": a.relative_path(i), "split_b": b.name,
                      "file_b": b.relative_path(j), "similarity": sim, "mirrored": is_mirror})
    return sorted(found, key=lambda row: -row["similarity"])


def _shared_groups(sets: list[ImageSet], column: str) -> list[dict]:
    """Values of `column` with images in more than one set, and how many in each."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for image_set in sets:
        for record in image_set.records:
            value = record.row.get(column)
            if value not in (None, ""):
                counts[str(value)][image_set.name] = counts[str(value)].get(image_set.name, 0) + 1
    return [{"value": value, "images": per_set} for value, per_set in sorted(counts.items()) if len(per_set) > 1]


def check_leakage(sets: list[ImageSet], copy_threshold: float = 0.95, batch_size: int = 32,
                  progress: bool = True) -> dict:
    """What the sets (splits) share: images (exact, near-duplicate, mirrored) and source volumes or
    patients. `leaks` is True when anything is shared."""
    features = {image_set.name: _read(image_set, batch_size, progress) for image_set in sets}
    images = []
    for a, b in itertools.combinations(sets, 2):
        images += _shared_images(a, features[a.name], b, features[b.name], copy_threshold)
    groups = {column: _shared_groups(sets, column) for column in GROUP_COLUMNS}
    kinds = {kind: sum(row["kind"] == kind for row in images) for kind in ("exact", "near-duplicate", "mirrored")}
    return {
        "sets": {image_set.name: len(image_set) for image_set in sets},
        "copy_threshold": copy_threshold, "space": SPACE,
        "n_shared_images": kinds, "shared_images": images,
        "columns_checked": {column: any(column in r.row for s in sets for r in s.records) for column in GROUP_COLUMNS},
        **{f"shared_{column}": rows for column, rows in groups.items()},
        "leaks": bool(images or any(groups.values())),
    }


def summary_lines(result: dict) -> list[str]:
    """A few lines a reviewer reads first: what leaks, with examples."""
    sets = " / ".join(f"{name} ({n})" for name, n in result["sets"].items())
    if not result["leaks"]:
        checked = [c for c, present in result["columns_checked"].items() if present]
        return [f"no leakage between {sets}: no shared image (exact, near-duplicate at {SPACE} >= "
                f"{result['copy_threshold']}, or mirrored)" + (f" and no shared {' or '.join(checked)}" if checked else "")]
    lines = [f"LEAKAGE between {sets}:"]
    kinds = result["n_shared_images"]
    if sum(kinds.values()):
        lines.append(f"- {sum(kinds.values())} images stand in two splits: {kinds['exact']} exact, "
                     f"{kinds['near-duplicate']} near-duplicates, {kinds['mirrored']} mirrored "
                     f"({SPACE} >= {result['copy_threshold']})")
        for row in result["shared_images"][:5]:
            lines.append(f"  - {row['split_b']}: {row['file_b']} ~ {row['split_a']}: {row['file_a']} "
                         f"({row['kind']}, {row['similarity']:.3f})")
    for column in GROUP_COLUMNS:
        rows = result[f"shared_{column}"]
        if rows:
            lines.append(f"- {len(rows)} {column} value(s) have images in more than one split:")
            for row in rows[:5]:
                lines.append(f"  - {row['value']}: " + ", ".join(f"{n} in {name}" for name, n in row["images"].items()))
    return lines
