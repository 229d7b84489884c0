"""Image-caption data for fine-tuning: an imagefolder (or a review-store export) as tensors.

The sampler gives every item its sample seed (medart_core.training_draws: from the seed, the
micro-step and the item's global position in the batch); the random crop is drawn from it here,
flips, caption dropout and noise in the training loop, so a resumed run, or the same batch split
over another number of processes, sees exactly the samples an uninterrupted single run would.

`cache_latents` turns an ImageCaptionDataset into a CachedLatentDataset: items then carry the VAE
latent distribution of the image and of its mirror image, and the image's colour statistics,
instead of pixels (see medart_core.cache for the files).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from medart_core.cache import TensorShardStore, latent_cache_key, sha256_file
from medart_core.data import load_rgb, scan_imagefolder, split_folders
from medart_core.errors import MedArtError
from medart_core.training_draws import CROP, sample_generator, sample_seed

logger = logging.getLogger(__name__)


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
        unreadable = []
        for record in self.records:  # one decode each now, rather than a crash hours into training
            try:
                load_rgb(record.path)
            except MedArtError as err:
                unreadable.append(str(err))
        if unreadable:
            raise MedArtError(f"{len(unreadable)} training images cannot be read; fix or remove them from the "
                              f"metadata first: " + "; ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else ""))
        self.resolution, self.center_crop = resolution, center_crop
        resize = v2.Resize(resolution, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        self.transform = v2.Compose([
            resize,
            *([v2.CenterCrop(resolution)] if center_crop else []),  # a random crop is drawn per sample
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        """`key`: an index, or (index, sample seed) as ResumableShuffleSampler yields them."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        record = self.records[index]
        pixels = self.transform(load_rgb(record.path))
        if not self.center_crop:
            pixels = self.random_crop(pixels, seed)
        item = {"pixels": pixels, "text": record.text.strip(), "index": index}
        return item if seed is None else {**item, "sample_seed": seed}

    def random_crop(self, pixels: torch.Tensor, seed: int | None) -> torch.Tensor:
        """A square crop at a place drawn from the sample's seed (the global RNG without one)."""
        generator = sample_generator(seed, CROP) if seed is not None else None
        height, width = pixels.shape[-2:]
        top = int(torch.randint(0, height - self.resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - self.resolution + 1, (1,), generator=generator))
        return pixels[..., top: top + self.resolution, left: left + self.resolution]


# What the cache keeps of an image: a KL VAE's latent Gaussian (PixArt), or a deterministic
# encoder's latent itself (Sana's DC-AE: `EncoderOutput.latent`, no `latent_dist`); both also of the
# mirror image, and the image's colour statistics.
DISTRIBUTION_FIELDS = ("mean", "std", "flip_mean", "flip_std")
DETERMINISTIC_FIELDS = ("latent", "flip_latent")
COLOUR_FIELDS = ("rgb_mean", "rgb_std")


def encode_latents(vae, pixels: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Unscaled latents of `pixels`: a draw from a KL VAE's latent distribution (one generator per
    image), or a deterministic encoder's latent (DC-AE), which draws nothing."""
    output = vae.encode(pixels)
    distribution = getattr(output, "latent_dist", None)
    return output.latent if distribution is None else distribution.sample(generator=generators)


def encode_latent_fields(vae, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The cached fields of a batch of images, (B, ...) each (see DISTRIBUTION_FIELDS)."""
    plain, flipped = vae.encode(pixels), vae.encode(pixels.flip(-1))
    if getattr(plain, "latent_dist", None) is None:
        return {"latent": plain.latent, "flip_latent": flipped.latent}
    return {"mean": plain.latent_dist.mean, "std": plain.latent_dist.std, "flip_mean": flipped.latent_dist.mean,
            "flip_std": flipped.latent_dist.std}


class CachedLatentDataset(Dataset):
    """The records of an ImageCaptionDataset with, per image, its cached latents (see
    DISTRIBUTION_FIELDS) and its per-channel colour mean and std in [0, 1]."""

    def __init__(self, images: ImageCaptionDataset, store: TensorShardStore, hashes: list[str],
                 fields: tuple[str, ...] = DISTRIBUTION_FIELDS):
        self.records, self.store, self.hashes, self.fields = images.records, store, hashes, fields
        self.resolution = images.resolution

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        """`key`: an index, or (index, sample seed) as ResumableShuffleSampler yields them; latent
        fields come as `latent_<field>` (`latent_mean`, ..., or `latent_latent`, `latent_flip_latent`)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        found = self.store.get(self.hashes[index], self.fields + COLOUR_FIELDS)
        item = {**{f"latent_{name}": found[name] for name in self.fields},
                "rgb_mean": found["rgb_mean"], "rgb_std": found["rgb_std"],
                "text": self.records[index].text.strip(), "index": index}
        return item if seed is None else {**item, "sample_seed": seed}


def sample_cached_latents(batch: dict, flip: torch.Tensor, generator: list[torch.Generator], device):
    """Each image's latents from the cache (the mirror image's where `flip`), one generator per
    image: the same random numbers, in the same order, as `encode_latents` on the pixels (a
    draw from the cached Gaussian; none for a deterministic encoder's cached latent)."""
    from diffusers.utils.torch_utils import randn_tensor

    flip = flip.to(device)[:, None, None, None]
    if "latent_latent" in batch:
        return torch.where(flip, batch["latent_flip_latent"].to(device), batch["latent_latent"].to(device))
    mean = torch.where(flip, batch["latent_flip_mean"].to(device), batch["latent_mean"].to(device))
    std = torch.where(flip, batch["latent_flip_std"].to(device), batch["latent_std"].to(device))
    return mean + std * randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


def cache_latents(images: ImageCaptionDataset, vae, cache_dir: str | Path, model_id: str, *,
                  batch_size: int = 8, shard_entries: int = 256) -> CachedLatentDataset:
    """Encode every image not yet cached (new, edited: keyed by file content) and return the
    cached view. Needs center crops: a random crop cached once would be the same crop forever."""
    from medart_core.losses import image_channel_statistics

    if not images.center_crop:
        raise MedArtError("latents can only be cached with center_crop true (a cached random crop would be "
                          "the same crop every epoch); set cache false or center_crop true")
    key = latent_cache_key(model_id, vae, resolution=images.resolution, center_crop=True)
    store = TensorShardStore(Path(cache_dir) / f"latents-{key}",
                             {"kind": "VAE latent distributions", "model": model_id,
                              "resolution": images.resolution, "crop": "center"})
    hashes = [sha256_file(r.path) for r in images.records]
    todo = [i for i in dict((h, i) for i, h in enumerate(hashes)).values() if hashes[i] not in store]
    if todo:
        logger.info("caching the latents of %d images in %s", len(todo), store.folder)
    device = next(vae.parameters()).device
    pending: dict = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start: start + batch_size]
        pixels = torch.stack([images[i]["pixels"] for i in chunk]).to(device, vae.dtype)
        with torch.no_grad():
            fields = encode_latent_fields(vae, pixels)
        fields["rgb_mean"], fields["rgb_std"] = image_channel_statistics(pixels.float() / 2 + 0.5)
        pending.update({hashes[i]: {name: value[j] for name, value in fields.items()} for j, i in enumerate(chunk)})
        if len(pending) >= shard_entries or start + batch_size >= len(todo):
            store.add(pending)
            pending = {}
    return CachedLatentDataset(images, store, hashes, latent_fields(store, hashes))


def latent_fields(store: TensorShardStore, hashes: list[str]) -> tuple[str, ...]:
    """Which latent fields a latent cache holds (its key names the VAE, so one kind per folder)."""
    if hashes and "latent" in store.fields(hashes[0]):
        return DETERMINISTIC_FIELDS
    return DISTRIBUTION_FIELDS


class ResumableShuffleSampler(Sampler[tuple[int, int]]):
    """An endless stream of (index, sample seed) keys for this process, starting after `start`.

    One global stream of indices (a fresh permutation per epoch, seeded by (seed, epoch)) is cut
    into global batches of `batch_size * num_replicas`; process `rank` takes every
    `num_replicas`-th index, so global batch m holds the same images, each with the same seed
    (from m and its position in the global batch), however many processes share it."""

    def __init__(self, size: int, *, seed: int, rank: int = 0, num_replicas: int = 1, start: int = 0,
                 batch_size: int = 1):
        if size < num_replicas:
            raise MedArtError(f"{size} training images cannot be shared among {num_replicas} processes")
        self.size, self.seed, self.rank, self.num_replicas, self.start = size, seed, rank, num_replicas, start
        self.global_batch = batch_size * num_replicas

    def _global_stream(self):
        for epoch in itertools.count():
            permutation = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield from permutation.tolist()

    def __iter__(self):
        first = self.start * self.num_replicas + self.rank
        for position, index in zip(itertools.count(first, self.num_replicas),
                                   itertools.islice(self._global_stream(), first, None, self.num_replicas)):
            micro_step, place = divmod(position, self.global_batch)
            yield index, sample_seed(self.seed, micro_step, place)
