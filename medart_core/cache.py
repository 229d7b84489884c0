"""On-disk caches that let training (and repeated generation) skip T5 and the VAE encoder.

T5-XXL dominates the cost of a PixArt-alpha step; with the text encoder frozen its output for a
caption never changes, and neither does the VAE's latent distribution of a (center-cropped)
image. Both are computed once and kept as safetensors shards:

    <cache_dir>/text-<key>/shard-00000.safetensors     "<sha256 of prompt>.embeds" / ".mask"
    <cache_dir>/latents-<key>/shard-00000.safetensors  "<sha256 of image file>.mean" / ".std" /
                                                       ".flip_mean" / ".flip_std" / ".rgb_mean" / ".rgb_std"
                                                       (DC-AE: ".latent" / ".flip_latent" for the four)

`<key>` hashes everything that changes the numbers (model id, component config, weight files'
sizes and times for a local folder, the snapshot commit of a hub model, dtype, quantisation,
adapters; for latents also resolution and crop mode), so changing any of them starts a new folder; an edited image has a new content
hash and is re-encoded. Latents are stored as the VAE's Gaussian (mean and std), not a sample,
so every epoch still draws a fresh latent from the same distribution; Sana's DC-AE encodes
deterministically (no latent distribution), so its latent itself is stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from medart_core.errors import MedArtError

logger = logging.getLogger(__name__)

DEFAULT_CACHE_FOLDER = ".medart-cache"  # inside the dataset folder unless cache_dir is given
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_commit_hash", "transformers_version", "_diffusers_version"}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _weight_files_signature(folder: Path) -> list:
    """Sizes and modification times of a local component's weight files: re-saving a model in
    the same folder changes them (hashing 20 GB of T5 on every start would not be worth it)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json", ".model"):
            stat = path.stat()
            found.append([path.name, stat.st_size, stat.st_mtime_ns])
    return found


def hub_snapshot_commit(model_id: str) -> str:
    """The commit of the snapshot a hub id resolves to in the local Hugging Face cache (what
    `from_pretrained` loaded: refs/main -> snapshots/<commit>/), or "" when it is not cached. The
    configs' `_commit_hash` stays out of the key: only transformers' components carry one."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(str(model_id), "model_index.json")
    except ValueError:  # not a valid repo id
        return ""
    if not isinstance(found, str):
        logger.warning("%s is not in the local Hugging Face cache: its cache key cannot name the revision, so "
                       "an updated checkpoint would reuse old cached latents and embeddings", model_id)
        return ""
    return Path(found).parent.name


def component_key(model_id: str, subfolder: str, module, **extra) -> str:
    """A short hash of everything that makes a component's outputs what they are."""
    config = module.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS and k != "quantization_config"}
    source = Path(str(model_id)).expanduser()
    local = source.is_dir()
    description = {
        "model": str(source.resolve()) if local else str(model_id),
        "component": subfolder,
        "config": config,
        "weights": _weight_files_signature(source / subfolder) if local else [],
        **({} if local else {"revision": hub_snapshot_commit(str(model_id))}),
        **{k: str(v) for k, v in extra.items()},
    }
    blob = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TensorShardStore:
    """Named groups of tensors in safetensors shards under one folder; written, never rewritten.

    `entry -> {field: tensor}`; new entries go into a new shard file (written under a temporary
    name and renamed, so an interrupted run leaves no half-written shard).
    """

    def __init__(self, folder: str | Path, description: dict | None = None):
        self.folder = Path(folder)
        self.description = description or {}
        self._where: dict[str, Path] = {}
        self._open: dict[Path, object] = {}
        self.refresh()

    def refresh(self) -> None:
        from safetensors import safe_open

        self._where.clear()
        self._open.clear()
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            handle = safe_open(str(shard), framework="pt")
            self._open[shard] = handle
            for name in handle.keys():
                self._where[name.rsplit(".", 1)[0]] = shard

    def __getstate__(self) -> dict:  # DataLoader workers started by spawn get a copy: reopen there
        return {"folder": self.folder, "description": self.description}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["description"])

    def __contains__(self, entry: str) -> bool:
        return entry in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, entry: str, fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
        handle = self._open[self._where[entry]]
        return {f: handle.get_tensor(f"{entry}.{f}") for f in fields}

    def fields(self, entry: str) -> set[str]:
        """The field names stored for `entry`."""
        handle = self._open[self._where[entry]]
        return {name.rsplit(".", 1)[1] for name in handle.keys() if name.rsplit(".", 1)[0] == entry}

    def add(self, entries: dict[str, dict[str, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        if not entries:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.description and not (self.folder / "cache.json").is_file():
                (self.folder / "cache.json").write_text(json.dumps(self.description, indent=1, default=str))
            number = len(list(self.folder.glob("shard-*.safetensors")))
            shard = self.folder / f"shard-{number:05d}.safetensors"
            while shard.exists():
                number += 1
                shard = self.folder / f"shard-{number:05d}.safetensors"
            tensors = {f"{entry}.{name}": t.detach().to("cpu").contiguous()
                       for entry, fields in entries.items() for name, t in fields.items()}
            partial = shard.with_name(f".{shard.name}.{os.getpid()}.partial")
            save_file(tensors, str(partial))
            os.replace(partial, shard)
        except OSError as err:
            raise MedArtError(f"cannot write the cache in {self.folder} ({err}); set a writable cache folder "
                              "(training: cache_dir, generation: --embedding-cache)") from err
        self.refresh()


class EmbeddingStore:
    """Persistent T5 embeddings (and attention masks) of prompts for one text-encoder setup."""

    FIELDS = ("embeds", "mask")

    def __init__(self, root: str | Path, key: str):
        self.shards = TensorShardStore(Path(root) / f"text-{key}", {"kind": "T5 prompt embeddings", "key": key})

    def get(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        name = sha256_text(prompt)
        if name not in self.shards:
            return None
        found = self.shards.get(name, self.FIELDS)
        return found["embeds"], found["mask"]

    def add(self, prompts: list[str], embeds: torch.Tensor, mask: torch.Tensor) -> None:
        self.shards.add({sha256_text(p): {"embeds": embeds[i], "mask": mask[i]} for i, p in enumerate(prompts)})


def text_cache_key(pipe, model_id: str, *, max_tokens: int, clean_caption: bool, adapters: str = "",
                   quantization: str = "none") -> str:
    """What makes T5's output for a prompt what it is: the model, its dtype and quantisation, any
    T5 adapter, the tokenizer and the token budget."""
    adapter_files = _weight_files_signature(Path(adapters)) if adapters else []
    return component_key(model_id, "text_encoder", pipe.text_encoder, dtype=pipe.text_encoder.dtype,
                         quantization=quantization, adapters=[adapters, adapter_files],
                         tokens=max_tokens, clean_caption=clean_caption, vocab=len(pipe.tokenizer))


def latent_cache_key(model_id: str, vae, *, resolution: int, center_crop: bool) -> str:
    return component_key(model_id, "vae", vae, dtype=vae.dtype, resolution=resolution,
                         crop="center" if center_crop else "random")
