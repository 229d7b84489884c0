"""Dataset files in the Hugging Face imagefolder layout: metadata.jsonl next to the images.

Columns are the same everywhere (see README, "Formats"): file_name, text, label, simple_caption,
source, rule, and for generated sets seed, steps, guidance, model, adapters, synthetic.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from medart_core.errors import MedArtError
from medart_core.text_limits import MAX_TEXT_CHARS, cut_at_word

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
# A caption longer than this is no description (T5 reads 120 tokens, ~500 characters): truncated.
MAX_CAPTION_CHARS = MAX_TEXT_CHARS
# Images larger than this are refused before decoding (8192 x 8192): a small file can claim a
# huge size (a decompression bomb) and take all memory.
MAX_IMAGE_PIXELS = 8192 * 8192
# Under that limit a small file can still decode to hundreds of MB (an all-zero 8000 x 8000 PNG is
# 186 KB): an image decoding to more than MAX_DECODE_RATIO times its file size, and to over
# BOMB_FLOOR_BYTES, is refused as a bomb. Real photographs and scans compress 2-20x; the ratio is
# the one zip members are held to (store.uploads.MAX_COMPRESSION_RATIO).
MAX_DECODE_RATIO = 100
BOMB_FLOOR_BYTES = 32 * 1024**2


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; a malformed line is reported with its line number."""
    return [row for _, row in _numbered_jsonl(Path(path))]


def _numbered_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a JSON-lines file. A byte-order mark (what some editors write at the
    start of UTF-8 text) is read as nothing, as by `datasets`."""
    if not path.is_file():
        raise MedArtError(f"file {path} not found")
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError as err:
            raise MedArtError(_not_utf8(path, err)) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MedArtError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise MedArtError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    return (f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at position {err.start}); save it as "
            "UTF-8 (e.g. a spreadsheet's \"CSV UTF-8\" format) and try again")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int | None = None):
    """A temp file beside `path` to write into; renamed over `path` when the block ends, deleted
    when it fails: readers see the old file or the new one, never half of one. `mode` (e.g.
    0o600) is set before any byte is written. Every atomic write of the project goes through it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, *, mode: int | None = None) -> Path:
    """Text written atomically (see atomic_path), flushed to disk before the rename."""
    with atomic_path(path, mode=mode) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    """JSON lines written atomically (see write_text_atomic)."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_json_atomic(path: str | Path, data) -> Path:
    """One JSON document, written atomically (see write_text_atomic): never half a file."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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

    @property
    def data_root(self) -> Path:
        """The dataset folder (above the split folder): what a row's relative paths are inside."""
        folder = Path(*self.path.parts[: len(self.path.parts) - len(Path(self.file_name).parts)])
        return folder.parent if self.split else folder


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
    numbered = read_numbered_metadata(folder)
    return None if numbered is None else [row for _, row in numbered]


def read_numbered_metadata(folder: str | Path) -> list[tuple[int, dict]] | None:
    """(line number in the file, row) of folder/metadata.jsonl or metadata.csv; None when there is
    neither. Both files may start with a byte-order mark (a spreadsheet's "CSV UTF-8" does)."""
    folder = Path(folder)
    jsonl, csv_path = folder / METADATA_FILE, folder / METADATA_CSV
    if jsonl.is_file() and csv_path.is_file():
        raise MedArtError(f"{folder} has both {METADATA_FILE} and {METADATA_CSV}; keep one (imagefolder refuses two)")
    if jsonl.is_file():
        return _numbered_jsonl(jsonl)
    if csv_path.is_file():
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                return [(reader.line_num, dict(row)) for row in reader]
        except UnicodeDecodeError as err:
            raise MedArtError(_not_utf8(csv_path, err)) from None
        except csv.Error as err:
            raise MedArtError(f"{csv_path}: not a readable CSV file ({err})") from None
    return None


def _unsafe_name(name, folder: Path) -> str | None:
    """Why a metadata file_name must not be opened (absolute, `..`, or a link leading outside
    the data folder), or None when it is safe."""
    if not isinstance(name, str) or not name.strip():
        return "file_name missing or not text"
    if "\x00" in name or Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in Path(name).parts \
            or ".." in name.replace("\\", "/").split("/"):
        return f"file_name {name!r} points outside the data folder; refused"
    return None


def _escapes(path: Path, root: Path) -> bool:
    """True when `path` (through links) resolves outside `root`."""
    try:
        return not path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        return True


def _skip(problems: list[str] | None, message: str) -> None:
    logger.warning("skipped %s", message)
    if problems is not None:
        problems.append(message)


def _bounded_caption(text, where: str):
    """A caption over MAX_CAPTION_CHARS cut at a word boundary, with a warning."""
    if not isinstance(text, str) or len(text) <= MAX_CAPTION_CHARS:
        return text
    cut = cut_at_word(text, MAX_CAPTION_CHARS)
    logger.warning("%s: caption of %d characters truncated to %d (the limit is %d)", where, len(text), len(cut),
                   MAX_CAPTION_CHARS)
    return cut


TEXT_COLUMNS = ("text", "simple_caption", "source", "rule", "source_file", "modality")
MAX_SLICE = 2**31 - 1  # a SQL INTEGER; no volume has more slices


def _column_problem(row: dict) -> str | None:
    """Why a row's values cannot be used (an object where text belongs, a slice of Infinity), or None."""
    for column in TEXT_COLUMNS:
        if row.get(column) is not None and not isinstance(row[column], str):
            return f"{column} must be text, got {type(row[column]).__name__}"
    label = row.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        return f"label must be text, got {type(label).__name__}"
    value = row.get("slice")
    if value not in (None, ""):
        try:
            number = float(value) if not isinstance(value, int) else value
            whole = not isinstance(value, bool) and math.isfinite(number) and number == int(number)
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole or not 0 <= int(number) <= MAX_SLICE:
            return f"slice must be a whole number from 0 to {MAX_SLICE:,}, got {str(value)[:40]!r}"
    return None


def duplicate_file_names(numbered: list[tuple[int, dict]]) -> dict[str, list[int]]:
    """file_name -> the line numbers of every row naming it, for names on more than one row."""
    lines: dict[str, list[int]] = {}
    for line, row in numbered:
        if isinstance(row.get("file_name"), str):
            lines.setdefault(row["file_name"], []).append(line)
    return {name: where for name, where in lines.items() if len(where) > 1}


def scan_imagefolder(root: str | Path, split: str | None = None, *, problems: list[str] | None = None,
                     refuse_duplicates: bool = False) -> list[ImageRecord]:
    """The images of an imagefolder dataset, with labels and texts.

    Labels come from the metadata's `label` column, else from the first sub-folder name (the
    imagefolder convention); `split` picks one split folder (e.g. "train") when there are several.
    Hostile rows are skipped with one warning naming the line (also appended to `problems`) and
    the rest go on: no file_name, a file_name leaving the data folder (absolute, `..`, a link out),
    one naming a folder, FIFO or other non-regular file (never opened), a second row for the same
    file_name (`refuse_duplicates` makes that a MedArtError listing the lines), and values of the
    wrong kind (an object as simple_caption, a slice of Infinity). Captions over MAX_CAPTION_CHARS
    are truncated with a warning. A metadata file that cannot be read as a whole (not UTF-8,
    malformed) is a MedArtError.
    """
    records: list[ImageRecord] = []
    for split_name, folder in split_folders(root):
        if split is not None and split_name not in (split, None):
            continue
        numbered = read_numbered_metadata(folder)
        if numbered is not None:
            source = folder / (METADATA_FILE if (folder / METADATA_FILE).is_file() else METADATA_CSV)
            repeated = duplicate_file_names(numbered)
            if repeated and refuse_duplicates:
                shown = "; ".join(f"{name!r} on lines {', '.join(map(str, lines))}"
                                  for name, lines in list(repeated.items())[:5])
                raise MedArtError(f"{source}: {len(repeated)} file_names are on more than one row ({shown}); "
                                  "each image needs one row: merge or remove the repeats")
            seen: dict[str, int] = {}
            for line, row in numbered:
                name = row.get("file_name")
                why = _unsafe_name(name, folder)
                if why is None and _escapes(folder / name, Path(root)):
                    why = f"{name} is a link to a file outside the data folder; refused"
                if why is None and (folder / name).exists() and not (folder / name).is_file():
                    why = f"{name} is not a regular file (a folder, FIFO or device); refused"
                if why is None and name in seen:
                    why = f"{name} is already on line {seen[name]}; this row is skipped"
                why = why or _column_problem(row)
                if why is not None:
                    _skip(problems, f"{source}, line {line}: {why}")
                    continue
                seen[name] = line
                label = row.get("label")
                text = _bounded_caption(row.get("text"), f"{folder / name}")
                if text is not row.get("text"):
                    row = {**row, "text": text}
                records.append(ImageRecord(
                    folder / name, str(name), split_name,
                    None if label in (None, "") else str(label), text, row,
                ))
        else:
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                    relative = path.relative_to(folder)
                    if _escapes(path, Path(root)):
                        _skip(problems, f"{relative.as_posix()} is a link to a file outside the data folder; refused")
                        continue
                    if not path.is_file():
                        _skip(problems, f"{relative.as_posix()} is not a regular file (a folder, FIFO or device); refused")
                        continue
                    label = relative.parts[0] if len(relative.parts) > 1 else None
                    records.append(ImageRecord(path, relative.as_posix(), split_name, label))
    return records


def decoded_bytes(image: Image.Image) -> int:
    """Bytes the opened (not yet decoded) image takes in memory once decoded in its own mode."""
    bits = {"1": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}.get(image.mode, 8 * len(image.getbands()))
    return image.size[0] * image.size[1] * bits // 8


def check_decoded_size(image: Image.Image, file_size: int, path) -> None:
    """Refuse, before decoding, an image over MAX_IMAGE_PIXELS or one that inflates far beyond its
    file (a decompression bomb)."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise MedArtError(f"image {path} is {width} x {height} pixels, over the limit of {MAX_IMAGE_PIXELS:,} "
                          "(a decompression bomb?); refused")
    size = decoded_bytes(image)
    if size > BOMB_FLOOR_BYTES and size > MAX_DECODE_RATIO * file_size:
        raise MedArtError(f"image {path} is {width} x {height} pixels: {size / 1024**2:,.0f} MB decoded from a file "
                          f"of {file_size / 1024:,.0f} KB, over {MAX_DECODE_RATIO}x (a decompression bomb); refused")


def load_rgb(path: str | Path) -> Image.Image:
    """An image as 8-bit RGB, or a MedArtError saying why it cannot be read.

    16-bit and float greyscale images are scaled by their own range (min..max); EXIF
    orientation is applied; transparency is composited on black. Images over MAX_IMAGE_PIXELS
    are refused before they are decoded; DICOM/NIfTI files are referred to the converter.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".dcm", ".dicom", ".nii", ".nii.gz")):
        raise MedArtError(f"{path} is a DICOM/NIfTI file: convert it into de-identified PNG slices first "
                          "(python -m medart_core convert --input FILES --out DIR)")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the reader forever
            raise MedArtError(f"cannot read image {path}: not a regular file (a folder, FIFO or device)")
        if info.st_size == 0:
            raise MedArtError(f"cannot read image {path}: the file is empty (0 bytes)")
        with Image.open(path) as image:
            check_decoded_size(image, info.st_size, path)
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError as err:
        raise MedArtError(f"image {path} not found") from err
    except Image.DecompressionBombError as err:
        raise MedArtError(f"image {path} claims an enormous size (a decompression bomb); refused: {err}") from None
    except Image.UnidentifiedImageError:
        raise MedArtError(f"cannot read image {path}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise MedArtError(f"cannot read image {path}: broken or truncated ({err})") from None
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
