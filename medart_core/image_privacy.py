"""Ordinary images (PNG, JPEG, TIFF, ...) re-encoded from their pixels, without their metadata.

EXIF (camera owner, description, GPS), PNG text chunks, comments, XMP and ICC profiles can hold a
patient's name or ID, and they travel with the bytes: an uploaded file kept byte for byte, or an
image copied into a training export, would carry them on. So images that enter the store's
folders (uploads) or an export are decoded and written again from the pixels alone; what was
removed is listed in the de-identification report by *name* (e.g. "EXIF Artist", "PNG text
Patient"), never by value. EXIF orientation is applied to the pixels first, so the image looks the
same. A DICOM/NIfTI file never gets here: medical_io converts it, reading only its pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import ExifTags, Image, ImageOps

from medart_core.data import atomic_path, check_decoded_size, write_json_atomic
from medart_core.errors import MedArtError

# Image.info keys that describe the pixels, not the picture's subject: carried over.
PIXEL_KEYS = {"transparency"}
# Pillow's format names by suffix, and what each format can store without conversion.
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
           ".webp": "WEBP"}
MODES = {"PNG": {"1", "L", "LA", "I;16", "I", "P", "RGB", "RGBA"}, "JPEG": {"L", "RGB", "CMYK"},
         "TIFF": {"1", "L", "LA", "I;16", "I", "F", "P", "RGB", "RGBA", "CMYK"}, "BMP": {"1", "L", "P", "RGB"},
         "WEBP": {"RGB", "RGBA"}}
IMAGES_KEY = "images"  # the de-identification report's list of re-encoded ordinary images


def metadata_names(image: Image.Image) -> list[str]:
    """Names of the metadata an opened image carries (values are never read out)."""
    names = set()
    text_keys = set(getattr(image, "text", {}) or {}) if image.format == "PNG" else set()
    for key in image.info:
        if key in PIXEL_KEYS:
            continue
        if key == "exif":
            continue  # named tag by tag below
        names.add(f"PNG text {key}" if key in text_keys else str(key))
    exif = image.getexif()
    for tag in exif:
        names.add(f"EXIF {ExifTags.TAGS.get(tag, hex(tag))}")
    for ifd in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
        for tag in exif.get_ifd(ifd):
            table = ExifTags.GPSTAGS if ifd == ExifTags.IFD.GPSInfo else ExifTags.TAGS
            names.add(f"EXIF {table.get(tag, hex(tag))}")
    return sorted(names)


def pixels_only(image: Image.Image, fmt: str) -> Image.Image:
    """A new image holding only `image`'s pixels (palette and transparency kept), in a mode `fmt` stores."""
    if image.mode not in MODES[fmt]:
        image = image.convert("RGBA" if "A" in image.getbands() and "RGBA" in MODES[fmt] else "RGB")
    fresh = Image.frombytes(image.mode, image.size, image.tobytes())
    if image.mode == "P":
        fresh.putpalette(image.getpalette())
        if "transparency" in image.info:
            fresh.info["transparency"] = image.info["transparency"]
    return fresh


def clean_copy(source: str | Path, target: str | Path, shown: str | None = None) -> list[str]:
    """Decode `source` and write its pixels alone to `target` (format from target's suffix; written
    to a temp file and renamed, so never half a file). Returns the names of the metadata removed.
    A file that is not a readable image, or a decompression bomb, is a MedArtError naming `shown`."""
    source, target = Path(source), Path(target)
    shown = shown or source.name
    fmt = FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise MedArtError(f"{shown}: cannot write a {target.suffix or 'suffix-less'} image; use one of "
                          f"{', '.join(sorted(FORMATS))}")
    try:
        with Image.open(source) as opened:
            check_decoded_size(opened, source.stat().st_size, shown)
            removed = metadata_names(opened)
            image = ImageOps.exif_transpose(opened)  # orientation into the pixels: the EXIF tag goes
            image.load()
            fresh = pixels_only(image, fmt)
    except MedArtError:
        raise
    except Exception as err:  # PIL raises many types for hostile bytes; all mean "not a usable image"
        raise MedArtError(f"cannot read image {shown}: {type(err).__name__}") from None
    options = {"PNG": {"optimize": False}, "JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    with atomic_path(target) as tmp:
        fresh.save(tmp, format=fmt, **options)
    return removed


def record_removed(report: str | Path, entries: list[dict]) -> Path:
    """Merge entries ({"file_name", "removed": [names], ...}, one per image, by file_name) into the
    JSON de-identification report's IMAGES_KEY list, keeping everything else in it."""
    report = Path(report)
    data: dict = {}
    if report.is_file():
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
    if not isinstance(data, dict):
        data = {}
    merged = {e["file_name"]: e for e in data.get(IMAGES_KEY, []) if isinstance(e, dict) and "file_name" in e}
    merged.update({e["file_name"]: e for e in entries})
    data[IMAGES_KEY] = [merged[name] for name in sorted(merged)]
    data.setdefault("images_note", "ordinary images are re-encoded from their pixels; 'removed' names the metadata "
                                   "that was dropped (never its value)")
    report.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, data)  # the DICOM/NIfTI half of the same report is written the same way
    return report
