"""Dataset files in the Hugging Face imagefolder layout: metadata.jsonl next to the images.

Columns are the same everywhere (see README, "Formats"): file_name, text, label, simple_caption,
source, rule, and for generated sets seed, steps, guidance, model, adapters, synthetic.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from medart_core.errors import MedArtError

METADATA_FILE = "metadata.jsonl"


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; a malformed line is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise MedArtError(f"file {path} not found")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MedArtError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise MedArtError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write JSON lines to a temp file in the same folder and rename it over `path`: readers see
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_prompts(path: str | Path) -> list[dict]:
    """Prompts from JSONL with `text` and optional `label` (a real set's metadata.jsonl works)."""
    prompts = []
    for number, row in enumerate(read_jsonl(path), start=1):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise MedArtError(f"{path}, prompt {number}: no text (each line needs a non-empty \"text\")")
        label = row.get("label")
        prompts.append({"text": text.strip(), "label": None if label is None else str(label)})
    if not prompts:
        raise MedArtError(f"{path} holds no prompts")
    return prompts


METADATA_CSV = "metadata.csv"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class ImageRecord:
    """One image of an imagefolder dataset and its metadata row."""

    path: Path
    file_name: str  # relative to its split folder, as in metadata.jsonl
    split: str | None
    label: str | None = None
    text: str | None = None
    row: dict = field(default_factory=dict)  # the whole metadata row, other columns included


def split_folders(root: str | Path) -> list[tuple[str | None, Path]]:
    """(split, folder) pairs: train/, validation/, test/ when present, else the root itself."""
    root = Path(root)
    if not root.is_dir():
        raise MedArtError(f"data folder {root} not found")
    splits = [(name, root / name) for name in SPLIT_NAMES if (root / name).is_dir()]
    return splits or [(None, root)]


def read_metadata(folder: str | Path) -> list[dict] | None:
    """Rows of folder/metadata.jsonl (or metadata.csv); None when there is neither.
    Both present is refused, as datasets' imagefolder refuses it."""
    folder = Path(folder)
    jsonl, csv_path = folder / METADATA_FILE, folder / METADATA_CSV
    if jsonl.is_file() and csv_path.is_file():
        raise MedArtError(f"{folder} has both {METADATA_FILE} and {METADATA_CSV}; keep one (imagefolder refuses two)")
    if jsonl.is_file():
        return read_jsonl(jsonl)
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    return None


def scan_imagefolder(root: str | Path, split: str | None = None) -> list[ImageRecord]:
    """The images of an imagefolder dataset, with labels and texts.

    Labels come from the metadata's `label` column, else from the first sub-folder name (the
    imagefolder convention); `split` picks one split folder (e.g. "train") when there are several.
    """
    records: list[ImageRecord] = []
    for split_name, folder in split_folders(root):
        if split is not None and split_name not in (split, None):
            continue
        rows = read_metadata(folder)
        if rows is not None:
            for number, row in enumerate(rows, start=1):
                name = row.get("file_name")
                if not name:
                    raise MedArtError(f"{folder}: metadata row {number} has no file_name")
                label = row.get("label")
                records.append(ImageRecord(
                    folder / name, str(name), split_name,
                    None if label in (None, "") else str(label), row.get("text"), row,
                ))
        else:
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                    relative = path.relative_to(folder)
                    label = relative.parts[0] if len(relative.parts) > 1 else None
                    records.append(ImageRecord(path, relative.as_posix(), split_name, label))
    return records


def load_rgb(path: str | Path) -> Image.Image:
    """An image as 8-bit RGB, or a MedArtError saying why it cannot be read.

    16-bit and float greyscale images are scaled by their own range (min..max); EXIF
    orientation is applied; transparency is composited on black.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError as err:
        raise MedArtError(f"image {path} not found") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MedArtError(f"cannot read image {path}: {err}") from err
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


METADATA_CSV_BACKUP = "metadata.csv.orig"


def write_metadata_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write a metadata.jsonl atomically; a metadata.csv beside it is kept as metadata.csv.orig,
    since imagefolder refuses a folder with both. The JSONL is complete in a staged file before
    the CSV moves, so no row is lost even if the process dies between the two renames."""
    path = Path(path)
    csv_path = path.parent / METADATA_CSV
    if path.name != METADATA_FILE or not csv_path.is_file():
        return write_jsonl_atomic(path, rows)
    backup = path.parent / METADATA_CSV_BACKUP
    if backup.exists():
        raise MedArtError(f"{csv_path} cannot be kept as {backup}: that file exists; move one of them away")
    staged = write_jsonl_atomic(path.parent / f".{METADATA_FILE}.staged", rows)
    os.replace(csv_path, backup)
    os.replace(staged, path)
    return path
