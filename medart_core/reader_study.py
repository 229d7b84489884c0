"""Building a reader study (a blinded visual Turing test): which real and synthetic images go in,
who reads them, and the blinded copy a reader receives.

Real images come from the review store's test split (else from all its images); synthetic ones
are generated now from descriptions of the class, or taken from a `python -m medart_core
generate` folder. Either way the synthetic files are kept under the app's home as PNGs that keep
their SYNTHETIC text chunks (medart_core/synthetic.py): the only unmarked copies are the ones
`blinded_copy` makes for one reader and one trial, deleted after the answer.
"""

from __future__ import annotations

import random
import secrets
import shutil
from pathlib import Path
from typing import Callable

from medart_core.errors import MedArtError
from medart_core.store.studies import Reader, Studies, StudyImage, check_study_name
from medart_core.text_limits import whole_number

MAX_PER_CLASS = 500
# synthesize(prompts, seeds) -> [(PIL image, generation record)], the record as the generate CLI writes it
Synthesize = Callable[[list[str], list[int]], list[tuple[object, dict]]]


def parse_readers(readers) -> list[tuple[str, str | None]]:
    """[(user, expert level)] from user names, each optionally "user:level" (a user name holds
    no ':'), e.g. ["dana:radiologist, 10 years", "erin"]. Refuses empty and repeated names."""
    from medart_core.accounts import check_user_name

    if isinstance(readers, str):
        readers = readers.splitlines()
    parsed, seen = [], set()
    for item in readers or []:
        if not isinstance(item, str):
            raise MedArtError(f"a reader is a user name (text), got {type(item).__name__}")
        if not item.strip():
            continue
        user, _, level = item.partition(":")
        user = check_user_name(user)
        if user in seen:
            raise MedArtError(f"reader {user!r} is invited twice")
        seen.add(user)
        parsed.append((user, " ".join(level.split()) or None))
    if not parsed:
        raise MedArtError("invite at least one reader (user names, one per line; 'name:expert level' optional)")
    return parsed


def check_count(value, what: str) -> int:
    number = whole_number(value, what)
    if not 1 <= number <= MAX_PER_CLASS:
        raise MedArtError(f"{what} must be 1 to {MAX_PER_CLASS}, got {str(number)[:20]}")
    return number


def choose_classes(store, classes) -> list[str]:
    known = store.labels()
    if not classes:
        if not known:
            raise MedArtError("the review store holds no labelled images to study")
        return known
    classes = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise MedArtError(f"no class {unknown[0]!r} in the review store; classes: {', '.join(known)}")
    return list(dict.fromkeys(classes))


def real_images(store, classes: list[str], n: int, seed: int) -> list[StudyImage]:
    """n real images per class, drawn with the seed from the test split (else from all images);
    a class with fewer than n is refused with its count."""
    chosen = []
    for label in classes:
        pool = store.entries(label=label, split="test") or store.entries(label=label)
        if len(pool) < n:
            raise MedArtError(f"class {label!r} has {len(pool)} real image(s), fewer than the {n} asked per class")
        for entry in sorted(random.Random(f"{seed}/real/{label}").sample(pool, n), key=lambda e: e.key):
            chosen.append(StudyImage("real", label, entry.text, entry.path, image_key=entry.key,
                                     modality=entry.extra.get("modality")))
    return chosen


def class_descriptions(store, label: str) -> list[str]:
    """The class's descriptions to generate from: approved ones first, then the rest, in key order."""
    entries = sorted(store.entries(label=label), key=lambda e: (e.status != "approved", e.key))
    return list(dict.fromkeys(e.text for e in entries))


def modalities(store) -> dict[str, str]:
    found = {}
    for entry in store.entries():
        if entry.extra.get("modality"):
            found.setdefault(entry.label, entry.extra["modality"])
    return found


def synthetic_from_folder(folder, classes: list[str], n: int, seed: int, into: Path,
                          modality: dict[str, str]) -> list[StudyImage]:
    """n images per class from a generate folder (metadata.jsonl with text and label), copied
    into the study's folder. Every one must carry the SYNTHETIC text chunks: a folder of real
    images passed by mistake is refused rather than shown as synthetic."""
    from medart_core.data import scan_imagefolder
    from medart_core.synthetic import is_marked_synthetic

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MedArtError(f"synthetic_dir {str(folder)[:300]} is not a folder (give a `python -m medart_core "
                          "generate --out` folder)")
    records = scan_imagefolder(folder)
    chosen = []
    for label in classes:
        pool = sorted((r for r in records if r.label == label), key=lambda r: r.file_name)
        if len(pool) < n:
            raise MedArtError(f"class {label!r} has {len(pool)} synthetic image(s) in {folder}, fewer than the {n} "
                              "asked per class")
        for record in random.Random(f"{seed}/synthetic/{label}").sample(pool, n):
            if not is_marked_synthetic(record.path):
                raise MedArtError(f"{record.path} has no SYNTHETIC text chunk: only images made by Med-Art's "
                                  "generate go into a study as synthetic")
            kept = into / f"{label}-{len(chosen):04d}.png"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.path, kept)
            chosen.append(StudyImage("synthetic", label, record.text or "", kept,
                                     seed=record.row.get("seed"), modality=modality.get(label)))
    return chosen


def synthetic_generated(store, classes: list[str], n: int, seed: int, into: Path, synthesize: Synthesize,
                        modality: dict[str, str], progress=None) -> list[StudyImage]:
    """n images per class generated now from the class's descriptions (cycled), seeds seed, seed+1, ...;
    each saved as a marked synthetic PNG."""
    from medart_core.synthetic import save_synthetic_png

    chosen = []
    for done, label in enumerate(classes):
        if progress is not None:
            progress(done, len(classes), label)
        texts = class_descriptions(store, label)
        prompts, seeds = [texts[i % len(texts)] for i in range(n)], [seed + i for i in range(n)]
        for (image, record), prompt, s in zip(synthesize(prompts, seeds), prompts, seeds):
            path = save_synthetic_png(image, into / f"{label}-{len(chosen):04d}.png", record | {"label": label})
            chosen.append(StudyImage("synthetic", label, prompt, path, seed=s, modality=modality.get(label)))
    return chosen


def study_size(images: list[StudyImage]) -> int:
    """The side every copy is served at: the largest side in the study, so no image loses pixels."""
    from PIL import Image

    size = 0
    for image in images:
        with Image.open(image.path) as opened:
            size = max(size, *opened.size)
    return size


def blinded_copy(source: str | Path, size: int, path: str | Path) -> Path:
    """A fresh PNG of the pixels only: decoded to 8-bit RGB, centre-cropped to a square and resampled
    (Lanczos) to size x size, the same for real and synthetic images; written from a new image
    object, so no text chunk, EXIF, ICC profile or other metadata of the source comes along."""
    import numpy as np
    from PIL import Image, ImageOps

    from medart_core.data import atomic_path, load_rgb

    fitted = ImageOps.fit(load_rgb(source), (size, size), method=Image.Resampling.LANCZOS)
    pixels = Image.fromarray(np.asarray(fitted, dtype=np.uint8))
    with atomic_path(path) as tmp:
        pixels.save(tmp, format="PNG")
    return Path(path)


def create_study(store, name: str, real_per_class, synthetic_per_class, readers: list[Reader], seed, *,
                 home: Path, author: str, classes=None, synthetic_dir=None, ask_match: bool = False,
                 synthesize: Synthesize | None = None, progress=None) -> dict:
    """Choose the images (refusing bad counts before any generation), keep the synthetic files under
    `home`/studies/, store the study with a seeded order per reader. Returns {"study", "trials"}."""
    studies = Studies(store)
    name = check_study_name(name)
    if name in studies.names():
        raise MedArtError(f"a study named {name!r} exists already; choose another name")
    n_real, n_synthetic = check_count(real_per_class, "real_per_class"), check_count(synthetic_per_class,
                                                                                      "synthetic_per_class")
    seed = whole_number(seed, "seed")
    classes = choose_classes(store, classes)
    real = real_images(store, classes, n_real, seed)
    into = Path(home) / "studies" / secrets.token_hex(6) / "synthetic"  # a neutral folder: the name is not known yet
    modality = modalities(store)
    try:
        if synthetic_dir:
            synthetic = synthetic_from_folder(synthetic_dir, classes, n_synthetic, seed, into, modality)
        else:
            if synthesize is None:
                raise MedArtError("no model to generate synthetic images with: load one (--model) or give "
                                  "synthetic_dir")
            synthetic = synthetic_generated(store, classes, n_synthetic, seed, into, synthesize, modality, progress)
        images = real + synthetic
        trials = studies.create(name, seed=seed, classes=classes, ask_match=ask_match, size=study_size(images),
                                readers=readers, images=images, author=author)
    except BaseException:
        shutil.rmtree(into.parent, ignore_errors=True)
        raise
    return {"study": name, "trials": trials}
