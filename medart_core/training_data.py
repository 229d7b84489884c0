"""Image-caption data for fine-tuning: an imagefolder (or a review-store export) as tensors.

Random choices (flips, caption dropout) are not made here but in the training loop from a
per-step generator, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from medart_core.data import load_rgb, scan_imagefolder, split_folders
from medart_core.errors import MedArtError


class ImageCaptionDataset(Dataset):
    """(pixels in [-1, 1] at `resolution`, caption) pairs from the `train/` split (or the root)."""

    def __init__(self, root: str | Path, resolution: int, *, center_crop: bool = True):
        from torchvision.transforms import v2

        splits = [name for name, _ in split_folders(root)]
        split = "train" if "train" in splits else None
        self.records = [r for r in scan_imagefolder(root, split=split) if r.split in (split, None)]
        if not self.records:
            raise MedArtError(f"no images found in {root}" + (" (train/ split)" if split else ""))
        missing_text = [r.file_name for r in self.records if not (isinstance(r.text, str) and r.text.strip())]
        if missing_text:
            raise MedArtError(
                f"{len(missing_text)} images in {root} have no caption in the `text` column "
                f"(e.g. {missing_text[0]}); caption them first (python -m medart_core caption)"
            )
        crop = v2.CenterCrop(resolution) if center_crop else v2.RandomCrop(resolution)
        self.transform = v2.Compose([
            v2.Resize(resolution, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            crop,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {"pixels": self.transform(load_rgb(record.path)), "text": record.text.strip(), "index": index}


class ResumableShuffleSampler(Sampler[int]):
    """An endless stream of sample indices: a fresh permutation per epoch, seeded by (seed, epoch),
    every `num_replicas`-th one for this process, starting after `start` indices (resume)."""

    def __init__(self, size: int, *, seed: int, rank: int = 0, num_replicas: int = 1, start: int = 0):
        if size < num_replicas:
            raise MedArtError(f"{size} training images cannot be shared among {num_replicas} processes")
        self.size, self.seed, self.rank, self.num_replicas, self.start = size, seed, rank, num_replicas, start

    def _indices(self):
        for epoch in itertools.count():
            permutation = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield from permutation[self.rank :: self.num_replicas].tolist()

    def __iter__(self):
        return itertools.islice(self._indices(), self.start, None)
