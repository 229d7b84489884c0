"""Which images are compared: the held-out real set, the synthetic set and the training set.

Images are read once per pass with `medart_core.data.load_rgb` and handed out as uint8 NCHW
batches at their own size, because the feature extractors (like torchmetrics' Inception) do
their own resizing: that is part of each metric's convention.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from medart_core.data import ImageRecord, load_rgb, scan_imagefolder, split_folders
from medart_core.errors import MedArtError

logger = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """A named list of images with their class labels (None where a set has no labels)."""

    name: str
    root: Path
    split: str | None
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str | None]:
        return [record.label for record in self.records]

    @property
    def has_labels(self) -> bool:
        return bool(self.records) and all(label is not None for label in self.labels)

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(label for label in self.labels if label is not None).items()))

    def subset(self, indices, name: str | None = None) -> "ImageSet":
        return ImageSet(name or self.name, self.root, self.split, [self.records[i] for i in indices])

    def relative_path(self, index: int) -> str:
        """Image `index`'s path relative to the set's folder (its split folder included)."""
        record = self.records[index]
        return f"{record.split}/{record.file_name}" if record.split else record.file_name

    def describe(self) -> dict:
        return {"path": str(self.root), "split": self.split, "n": len(self), "classes": self.class_counts()}


def _split_names(root: Path) -> set[str | None]:
    return {name for name, _ in split_folders(root)}


def load_set(name: str, root: str | Path, prefer: tuple[str, ...]) -> ImageSet:
    """The images of `root`: its first split folder among `prefer` when it has split folders,
    else all of it. Refuses an empty set."""
    root = Path(root)
    splits = _split_names(root)
    split = None
    if splits != {None}:
        split = next((s for s in prefer if s in splits), None)
        if split is None:
            raise MedArtError(f"{root} has split folders {sorted(splits)} but none of {list(prefer)} "
                              f"(needed for the {name} images)")
    records = scan_imagefolder(root, split=split)
    if not records:
        raise MedArtError(f"{root}{'/' + split if split else ''} holds no images (the {name} set)")
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise MedArtError(f"{len(missing)} images listed in the {name} set's metadata are missing, e.g. {missing[0]}")
    return ImageSet(name, root, split, records)


def resolve_sets(real: str | Path, fake: str | Path, train: str | Path | None) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    """(held-out real, synthetic, training) sets from the command-line folders.

    --real with split folders gives its test (else validation) split as the held-out set and,
    when --train is not given, its train split as the training set.
    """
    real_root = Path(real)
    real_set = load_set("real", real_root, prefer=("test", "validation"))
    fake_set = load_set("synthetic", fake, prefer=("train", "test", "validation"))
    train_set = None
    if train is not None:
        train_set = load_set("training", train, prefer=("train",))
    elif "train" in _split_names(real_root):
        train_set = load_set("training", real_root, prefer=("train",))
    if train_set is not None:
        held_out = {r.path.resolve() for r in real_set.records}
        overlap = sum(r.path.resolve() in held_out for r in train_set.records)
        if overlap:
            raise MedArtError(f"{overlap} images are in both the held-out real set and the training set; "
                              "the real set must be held out (use the test split)")
    return real_set, fake_set, train_set


def to_uint8_tensor(image):
    """A PIL RGB image as a uint8 3xHxW tensor."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def iter_batches(image_set: ImageSet, batch_size: int = 32, progress: bool = True) -> Iterator[tuple[list[int], "object"]]:
    """(indices, uint8 Nx3xHxW tensor) for consecutive images of the same size: each image is
    read once and kept at its own resolution."""
    import torch
    from tqdm.auto import tqdm

    indices: list[int] = []
    tensors = []
    for index, record in enumerate(tqdm(image_set.records, desc=f"reading {image_set.name}", unit="img",
                                        disable=not progress, leave=False)):
        tensor = to_uint8_tensor(load_rgb(record.path))
        if tensors and (tensor.shape != tensors[0].shape or len(tensors) == batch_size):
            yield indices, torch.stack(tensors)
            indices, tensors = [], []
        indices.append(index)
        tensors.append(tensor)
    if tensors:
        yield indices, torch.stack(tensors)


def resize_uint8(batch, size: int):
    """A uint8 batch resized to size x size (bilinear with antialiasing), as float in 0..255."""
    import torch.nn.functional as F

    batch = batch.float()
    if batch.shape[-2:] == (size, size):
        return batch
    return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def load_resized(image_set: ImageSet, size: int, progress: bool = True):
    """All images of a set as one uint8 Nx3xSxS tensor (small sizes only: classifier training)."""
    import torch

    out = torch.empty((len(image_set), 3, size, size), dtype=torch.uint8)
    for indices, batch in iter_batches(image_set, progress=progress):
        out[indices] = resize_uint8(batch, size).round().clamp(0, 255).to(torch.uint8)
    return out
