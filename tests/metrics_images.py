"""Small real-image datasets for the evaluation tests, cut from images scikit-image ships:
retina.jpg (fundus photograph) and ihc.png (immunohistochemistry), both from skimage/data/
(see its README.txt for their licences)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

SIZE = 48


def skimage_image(name: str) -> Image.Image:
    import skimage

    return Image.open(os.path.join(os.path.dirname(skimage.__file__), "data", name)).convert("RGB")


def patches(kind: str, n: int, first: int = 0, size: int = SIZE) -> list[Image.Image]:
    """Patches first .. first+n-1 of a class, from a fixed shuffle of non-overlapping grid cells,
    so that different ranges never share pixels: 'fundus' from the retina's bright disc (49 cells),
    'ihc' from the whole tile (64 cells)."""
    if kind == "fundus":
        image, crop, origin, cells = skimage_image("retina.jpg"), 96, 370, 7
    elif kind == "ihc":
        image, crop, origin, cells = skimage_image("ihc.png"), 64, 0, 8
    else:
        raise ValueError(kind)
    order = np.random.default_rng(0).permutation(cells * cells)
    if first + n > len(order):
        raise ValueError(f"only {len(order)} {kind} patches")
    out = []
    for cell in order[first:first + n]:
        x, y = origin + (cell % cells) * crop, origin + (cell // cells) * crop
        out.append(image.crop((int(x), int(y), int(x) + crop, int(y) + crop)).resize((size, size), Image.BICUBIC))
    return out


def write_imagefolder(folder: Path, items: list[tuple[Image.Image, str]], generated: bool = False) -> Path:
    """PNGs plus metadata.jsonl (file_name, text, label; and the generated-set columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (image, label) in enumerate(items):
        name = f"{label}_{number:04d}.png"
        image.save(folder / name)
        row = {"file_name": name, "text": f"A {label} image", "label": label}
        if generated:
            row.update(seed=number, steps=20, guidance=4.5, model="test", adapters=None, synthetic=True)
        rows.append(row)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def real_dataset(root: Path, n_train: int = 16, n_test: int = 12) -> Path:
    """root/train and root/test with fundus and ihc patches (patches 0.. for train, then test)."""
    for split, n, first in (("train", n_train, 0), ("test", n_test, n_train)):
        items = [(p, "fundus") for p in patches("fundus", n, first)] + [(p, "ihc") for p in patches("ihc", n, first)]
        write_imagefolder(root / split, items)
    return root


def colour_shift(image: Image.Image, shift=(60, -30, -30)) -> Image.Image:
    array = np.asarray(image, dtype=np.int16) + np.array(shift, dtype=np.int16)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def blur(image: Image.Image, radius: float = 2.5) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run faster on one thread, and much faster when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
