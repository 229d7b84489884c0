"""Images added through the app: uploaded files or a zip become a small imagefolder batch that
the store imports (and the captioner describes), without touching the original data folder.

DICOM and NIfTI uploads are converted on arrival into de-identified PNG slices by the same
function as `python -m medart_core convert` (medart_core.medical_io); other images are re-encoded
from their pixels without metadata (medart_core.image_privacy); no original bytes are kept.
Uploads are bounded in size, count and decoded bytes, and archive paths are never trusted.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Callable

from medart_core.data import IMAGE_EXTENSIONS, METADATA_FILE, load_rgb, write_jsonl_atomic
from medart_core.errors import MedArtError
from medart_core.image_privacy import clean_copy, record_removed
from medart_core.medical_io import MEDICAL_SUFFIXES, REPORT_FILE, ConvertOptions, convert_file, medical_kind, write_report

logger = logging.getLogger(__name__)

MAX_ZIP_MEMBERS = 5000
MAX_UPLOAD_BYTES = 512 * 1024**2  # everything of one upload, a zip's members counted uncompressed
MAX_COMPRESSION_RATIO = 100  # a zip member inflating more than this is a zip bomb, not an image
# Decoded (8-bit RGB) bytes of all the images of one upload: ~2,700 images of 512 x 512, or eleven of
# 8000 x 8000; describing and reviewing needs no more per upload, and more can come in another.
MAX_UPLOAD_DECODED_BYTES = 2 * 1024**3
UPLOAD_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS)) + MEDICAL_SUFFIXES + (".zip",)


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")


def _safe_name(name: str) -> str:
    """A file name without folders or odd characters (an archive's paths are never trusted); its
    extension survives even when nothing of the stem does (a name in another script)."""
    base = Path(name.replace("\\", "/")).name
    suffix = ".nii.gz" if base.lower().endswith(".nii.gz") else Path(base).suffix
    stem = base[: len(base) - len(suffix)] if suffix else base
    suffix = "." + _clean(suffix.lower()) if _clean(suffix) else ""
    return (_clean(stem) or "image") + (suffix or ".png")


def _accepted(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(tuple(IMAGE_EXTENSIONS)) or medical_kind(lower) is not None


def _unreadable_member(member: zipfile.ZipInfo) -> str | None:
    """Why a zip member cannot be read (encrypted, or compressed by a method zipfile lacks), or None."""
    if member.flag_bits & 0x1:
        return "is encrypted (password-protected)"
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        return f"uses an unsupported compression method ({member.compress_type})"
    return None


def _uploaded_files(paths: list[str | Path], problems: list[str]) -> list[tuple[str, Callable[[], bytes]]]:
    """(original name, a function reading its bytes) of every image or DICOM/NIfTI file in the
    upload, zips opened; sizes are checked for the whole upload before anything is read, and each
    file is read only when its turn comes (one at a time). A zip member that cannot be read is
    skipped with its name; the rest go on."""
    found, total = [], 0

    def take(size: int) -> None:
        nonlocal total
        total += size
        if total > MAX_UPLOAD_BYTES:
            raise MedArtError(f"the upload is over {MAX_UPLOAD_BYTES // 1024**2} MB; add fewer files at a time")

    def member_reader(path: Path, member: zipfile.ZipInfo) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                with zipfile.ZipFile(path) as archive:
                    return archive.read(member)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError, zlib.error) as err:
                raise MedArtError(f"{path.name}: {_safe_name(member.filename)} cannot be unpacked "
                                  f"({type(err).__name__}); skipped") from None
        return read

    for path in map(Path, paths):
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.infolist() if not m.is_dir() and _accepted(m.filename)
                               and not Path(m.filename).name.startswith(".")]
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
                raise MedArtError(f"{path.name} is not a readable zip file ({type(err).__name__})") from None
            if len(members) > MAX_ZIP_MEMBERS:
                raise MedArtError(f"{path.name} holds {len(members)} images; add at most {MAX_ZIP_MEMBERS} at a time")
            for member in members:
                why = _unreadable_member(member)
                if why is None and member.file_size > max(1024**2, MAX_COMPRESSION_RATIO * member.compress_size):
                    why = f"inflates {member.file_size:,} bytes from far fewer (a zip bomb?)"
                if why is not None:
                    problems.append(f"{path.name}: {_safe_name(member.filename)} {why}; refused")
                    continue
                take(member.file_size)
                found.append((member.filename, member_reader(path, member)))
        elif _accepted(path.name):
            take(path.stat().st_size)
            found.append((path.name, path.read_bytes))
        else:
            problems.append(f"{_safe_name(path.name)}: not an image ({', '.join(UPLOAD_SUFFIXES)}); refused")
    return found


def stage_uploads(paths: list[str | Path], uploads_root: str | Path, *, split: str, label: str,
                  modality: str, problems: list[str] | None = None,
                  convert_options: ConvertOptions = ConvertOptions()) -> Path:
    """Copy uploaded images (or a zip's images) into a new batch folder
    `uploads_root/<batch>/<split>/` with a metadata.jsonl of file_name, label and modality (no
    text yet: the import describes them). Ordinary images are re-encoded from their pixels as PNG,
    without metadata (EXIF, text chunks), and the de-identification report names what was removed;
    DICOM/NIfTI files become de-identified PNG slices (with source_file and slice). Images are
    handled one at a time, within MAX_UPLOAD_DECODED_BYTES decoded for the whole upload. A file
    that is not a usable image is skipped with one message in `problems` (and the log); the others
    go on. Returns the batch folder, an imagefolder root."""
    label = (label or "").strip()
    if not label:
        raise MedArtError("give the new images a label (their class, e.g. 'fundus')")
    if not modality:
        raise MedArtError("choose a modality: it picks how the images are described")
    if split not in ("train", "test"):
        raise MedArtError(f"split must be train or test, got {split!r}")
    problems = [] if problems is None else problems
    files = _uploaded_files(paths, problems)
    batch_id = uuid.uuid4().hex[:8]
    folder = Path(uploads_root) / f"batch-{batch_id}" / split
    folder.mkdir(parents=True)
    rows, reports, cleaned, used, decoded = [], [], [], set(), 0
    with tempfile.TemporaryDirectory(prefix="medart-upload-") as scratch:
        for original, read in files:
            shown = _safe_name(original)
            try:
                # The original goes to a private temp folder only, under a neutral name: its name, header
                # and metadata may identify the patient; only what is converted or re-encoded is kept.
                source = Path(scratch) / f"upload{len(used)}{'.nii.gz' if shown.endswith('.nii.gz') else Path(shown).suffix}"
                source.write_bytes(read())
                if medical_kind(original):
                    new_rows, report = convert_file(source, folder, options=convert_options, label=label,
                                                    columns={"modality": modality}, display_name=shown)
                    source.unlink()
                    rows += [row for row in new_rows if row["file_name"] not in used]
                    used.update(row["file_name"] for row in new_rows)
                    reports.append(report)
                    continue
                try:
                    width, height = load_rgb(source).size  # refuse a corrupt or non-image file now, with its name
                except MedArtError as err:
                    raise MedArtError(str(err).replace(str(source), shown)) from None
                decoded += width * height * 3
                if decoded > MAX_UPLOAD_DECODED_BYTES:
                    decoded -= width * height * 3
                    raise MedArtError(f"{shown} ({width} x {height} pixels) would take the upload's images over "
                                      f"{MAX_UPLOAD_DECODED_BYTES // 1024**3} GB once decoded; add it in another upload")
                name = f"upload-{batch_id}-{Path(shown).stem}.png"
                while name in used:
                    name = f"upload-{batch_id}-{len(used)}-{Path(shown).stem}.png"
                removed = clean_copy(source, folder / name, shown)
                source.unlink()
                used.add(name)
                rows.append({"file_name": name, "label": label, "modality": modality})
                cleaned.append({"file_name": name, "removed": removed})
            except MedArtError as err:
                logger.warning("skipped upload %s", err)
                problems.append(str(err))
    if not rows:
        shutil.rmtree(folder.parent, ignore_errors=True)
        raise MedArtError("no usable images in the upload" + (f": {'; '.join(problems[:3])}" if problems else ""))
    write_jsonl_atomic(folder / METADATA_FILE, rows)
    if reports:
        write_report(folder.parent / REPORT_FILE, reports)
    if cleaned:
        record_removed(folder.parent / REPORT_FILE, [{**e, "file_name": f"{split}/{e['file_name']}"} for e in cleaned])
    return folder.parent
