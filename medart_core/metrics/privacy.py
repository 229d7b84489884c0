"""Privacy as medical generative benchmarks measure it (after CheXGenBench, 2025): several images
per training prompt, and how close each prompt's images come to *that prompt's own* training
images (the patient it described) versus the rest of the training set.

A prompt is re-identified in a space when, over all its images and all training images (each as
it is and mirrored, as training shows them), the closest training image is one of its own and at
or above that space's threshold: its images give its patient away. Two spaces, the memorisation
audit's own (`memorization.nearest_with_mirrors`):
  - pixels (correlation at 32x32): a copy;
  - features (the domain classifier's or EfficientNet's): a likeness a copy search misses.
The reference for "no memorisation" is the nearest-training similarity of held-out real images:
they are not in the training set, so that is how close a new image of the same anatomy comes.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from medart_core.errors import MedArtError
from medart_core.metrics.memorization import distribution, nearest_with_mirrors, similarities_with_mirrors
from medart_core.metrics.sets import ImageSet

SPACES = ("pixel", "feature")


def training_prompts(train_set: ImageSet) -> list[dict]:
    """Every distinct training text, in first-seen order, with the most common label of its images."""
    labels: dict[str, Counter] = defaultdict(Counter)
    for record in train_set.records:
        if isinstance(record.text, str) and record.text.strip():
            labels[record.text.strip()][record.label] += 1
    if not labels:
        raise MedArtError(f"the training set ({train_set.root}) has no texts: privacy needs its metadata's \"text\"")
    return [{"text": text, "label": counts.most_common(1)[0][0]} for text, counts in labels.items()]


def _read(image_set: ImageSet, feature_module, mirrors: bool, batch_size: int, progress: bool) -> dict:
    from medart_core.metrics.features import extract, mirrored, pixel_features

    pixels = pixel_features()
    extractors = {"pixel": pixels, "feature": feature_module}
    if mirrors:
        extractors.update(pixel_mirrored=mirrored(pixels), feature_mirrored=mirrored(feature_module))
    return extract(image_set, extractors, batch_size=batch_size, progress=progress)


def _closest(matrix: tuple[np.ndarray, np.ndarray], rows: np.ndarray, columns: np.ndarray) -> dict | None:
    """The closest (generated row, training column) pair of a precomputed (similarity, mirrored)
    matrix restricted to `rows` x `columns`: indices, similarity, mirrored."""
    if len(rows) == 0 or len(columns) == 0:
        return None
    block = matrix[0][np.ix_(rows, columns)]
    r, c = np.unravel_index(int(np.argmax(block)), block.shape)
    return {"query": int(r), "train": int(columns[c]), "similarity": float(block[r, c]),
            "mirrored": bool(matrix[1][rows[r], columns[c]])}


def privacy_report(train_set: ImageSet, fake_set: ImageSet, held_out: ImageSet | None, feature_module, *,
                   copy_threshold: float = 0.95, feature_threshold: float | None = None, batch_size: int = 32,
                   progress: bool = True) -> dict:
    """Per-prompt re-identification in pixel and feature space, with the held-out reference.

    `feature_threshold` None: the largest nearest-training feature similarity of a held-out real
    image (no new real image came closer), which needs `held_out`.
    """
    train = _read(train_set, feature_module, True, batch_size, progress)
    fake = _read(fake_set, feature_module, False, batch_size, progress)
    reference = {}
    if held_out is not None:
        real = _read(held_out, feature_module, False, batch_size, progress)
        for space in SPACES:
            reference[space] = nearest_with_mirrors(real[space], train[space], train[f"{space}_mirrored"])[1]
    if feature_threshold is None:
        if held_out is None:
            raise MedArtError("no held-out real images (a test/ split) to set the feature threshold from; "
                              "give --feature-threshold")
        feature_threshold = float(reference["feature"].max())
    thresholds = {"pixel": copy_threshold, "feature": feature_threshold}

    train_texts = np.array([(r.text or "").strip() for r in train_set.records])
    fake_texts = [(r.text or "").strip() for r in fake_set.records]
    everything = np.arange(len(train_set))
    matrices = {space: similarities_with_mirrors(fake[space], train[space], train[f"{space}_mirrored"])
                for space in SPACES}
    prompts, unmatched = [], 0
    for text, label in _prompts_of(fake_set, fake_texts):
        own = np.flatnonzero(train_texts == text)
        mine = np.array([i for i, t in enumerate(fake_texts) if t == text])
        if len(own) == 0:
            unmatched += len(mine)
            continue
        row = {"text": text, "label": label, "n_generated": len(mine), "n_own": len(own)}
        others = np.setdiff1d(everything, own)
        for space in SPACES:
            nearest_own = _closest(matrices[space], mine, own)
            nearest_other = _closest(matrices[space], mine, others)
            if nearest_other is not None:  # the sheet's third image: the closest other image to *this* image
                beside = _closest(matrices[space], mine[[nearest_own["query"]]], others)
                nearest_own["beside"] = {"train": train_set.relative_path(beside["train"]), "train_index": beside["train"],
                                         "similarity": beside["similarity"], "mirrored": beside["mirrored"]}
            for found in (nearest_own, nearest_other):
                if found is not None:
                    found["generated_index"] = int(mine[found.pop("query")])
                    found["generated"] = fake_set.relative_path(found["generated_index"])
                    found["train_index"] = found["train"]
                    found["train"] = train_set.relative_path(found["train"])
            own_sim = nearest_own["similarity"]
            other_sim = nearest_other["similarity"] if nearest_other else -1.0
            row[space] = {"own": nearest_own, "other": nearest_other, "nearest_is_own": own_sim >= other_sim,
                          "reidentified": own_sim >= other_sim and own_sim >= thresholds[space]}
        row["reidentified"] = any(row[space]["reidentified"] for space in SPACES)
        prompts.append(row)
    if not prompts:
        raise MedArtError(f"none of the {len(fake_set)} generated images has the text of a training image: privacy "
                          "compares each prompt's images with the training images of that prompt")

    report = {
        "n_prompts": len(prompts), "n_generated": int(sum(p["n_generated"] for p in prompts)),
        "n_generated_unmatched": unmatched, "n_training": len(train_set),
        "n_held_out": len(held_out) if held_out is not None else 0,
        "thresholds": {**thresholds, "feature_from": "held-out max" if held_out is not None and
                       feature_threshold == float(reference["feature"].max()) else "given"},
        **_summary(prompts),
        "held_out_reference": {space: distribution(values) for space, values in reference.items()},
        "per_class": {label: _summary([p for p in prompts if p["label"] == label])
                      for label in sorted({p["label"] for p in prompts if p["label"] is not None})},
        "prompts": prompts,
    }
    generated = {}
    for space in SPACES:  # per image, any training image: the held-out reference's counterpart
        generated[space] = matrices[space][0].max(axis=1)
        report["nearest_similarity"][space]["generated"] = distribution(generated[space])
        report["nearest_similarity"][space]["held_out"] = report["held_out_reference"].get(space, {"n": 0})
    report["_reference"], report["_generated"] = reference, generated
    return report


def _prompts_of(fake_set: ImageSet, texts: list[str]) -> list[tuple[str, str | None]]:
    seen: dict[str, str | None] = {}
    for text, record in zip(texts, fake_set.records):
        seen.setdefault(text, record.label)
    return list(seen.items())


def _summary(prompts: list[dict]) -> dict:
    """reidentified_fraction (either space) and by space; nearest-similarity quantiles per prompt."""
    n = len(prompts)
    return {
        "n_prompts": n,
        "reidentified_fraction": sum(p["reidentified"] for p in prompts) / n if n else 0.0,
        "reidentified_fraction_by_space": {s: sum(p[s]["reidentified"] for p in prompts) / n if n else 0.0
                                           for s in SPACES},
        "n_reidentified": int(sum(p["reidentified"] for p in prompts)),
        "nearest_similarity": {s: {"own": distribution(np.array([p[s]["own"]["similarity"] for p in prompts])),
                                   "other": distribution(np.array([p[s]["other"]["similarity"] for p in prompts
                                                                   if p[s]["other"]]))}
                               for s in SPACES},
    }


def worst_cases(report: dict, count: int) -> list[dict]:
    """The prompts whose images came closest to their own training images in pixel space."""
    ranked = sorted(report["prompts"], key=lambda p: -p["pixel"]["own"]["similarity"])
    return ranked[:count]


def render_markdown(report: dict) -> str:
    """report.md: the headline figures a reviewer reads, then per class, then the worst prompts."""

    def q(dist: dict) -> str:
        return f"{dist['p50']:.3f} [{dist['p5']:.3f}, {dist['max']:.3f}]" if dist.get("n") else "n/a"

    t = report["thresholds"]
    lines = ["# Med-Art privacy report", "",
             f"- training set `{report['inputs']['data']}`: {report['n_training']} images, {report['n_prompts']} distinct "
             f"prompts; {report['n_generated']} generated images in `{report['inputs']['synthetic']}`"
             + (f" ({report['n_generated_unmatched']} more have no training prompt and are not scored)"
                if report["n_generated_unmatched"] else "") + f"; {report['n_held_out']} held-out real images",
             f"- feature space: {report['inputs']['feature_space']}",
             f"- thresholds: pixel correlation {t['pixel']:.3g}, feature cosine {t['feature']:.4g} ({t['feature_from']})",
             "", "## Re-identification", "",
             f"**{report['n_reidentified']} of {report['n_prompts']} prompts** ({report['reidentified_fraction']:.1%}) are "
             "re-identified: their closest training image, over all their images, is one of their own and at or above "
             "the threshold (pixel: "
             f"{report['reidentified_fraction_by_space']['pixel']:.1%}, feature: "
             f"{report['reidentified_fraction_by_space']['feature']:.1%}).", "",
             "| space | own (per prompt) median [p5, max] | other (per prompt) | generated image, any | held-out real, any |",
             "|---|---|---|---|---|"]
    for space in SPACES:
        near = report["nearest_similarity"][space]
        lines.append(f"| {space} | {q(near['own'])} | {q(near['other'])} | {q(near['generated'])} | {q(near['held_out'])} |")
    lines += ["", "## Per class", "", "| class | prompts | re-identified | pixel | feature | own pixel median | own feature median |",
              "|---|---|---|---|---|---|---|"]
    for label, row in report["per_class"].items():
        by = row["reidentified_fraction_by_space"]
        lines.append(f"| {label} | {row['n_prompts']} | {row['reidentified_fraction']:.2f} | {by['pixel']:.2f} | "
                     f"{by['feature']:.2f} | {q(row['nearest_similarity']['pixel']['own'])} | "
                     f"{q(row['nearest_similarity']['feature']['own'])} |")
    lines += ["", "## Closest prompts (pixel space)", "", "| prompt | generated | own training image | r | nearest other | r |",
              "|---|---|---|---|---|---|"]
    for row in report["worst_cases"]:
        own, beside = row["pixel"]["own"], row["pixel"]["own"].get("beside") or {}
        lines.append(f"| {row['text'][:60]} | `{own['generated']}` | `{own['train']}`{' (mirrored)' if own['mirrored'] else ''} "
                     f"| {own['similarity']:.3f} | `{beside.get('train', '')}` | {beside.get('similarity', float('nan')):.3f} |")
    lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in report["plots"].items()] + [""]
    return "\n".join(lines)
