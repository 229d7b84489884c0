"""Images added through the app: uploaded files or a zip become a small imagefolder batch that
the store imports (and the captioner describes), without touching the original data folder.

DICOM and NIfTI uploads are converted on arrival into de-identified PNG slices by the same
function as `python -m medart_core convert` (medart_core.medical_io); their original bytes are
never kept. Uploads are bounded in size and count, and archive paths are never trusted.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path

from medart_core.data import IMAGE_EXTENSIONS, METADATA_FILE, load_rgb, write_jsonl_atomic
from medart_core.errors import MedArtError
from medart_core.medical_io import MEDICAL_SUFFIXES, REPORT_FILE, ConvertOptions, convert_file, medical_kind, write_report

logger = logging.getLogger(__name__)

MAX_ZIP_MEMBERS = 5000
MAX_UPLOAD_BYTES = 512 * 1024**2  # everything of one upload, a zip's members counted uncompressed
MAX_COMPRESSION_RATIO = 100  # a zip member inflating more than this is a zip bomb, not an image
UPLOAD_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS)) + MEDICAL_SUFFIXES + (".zip",)


def _safe_name(name: str) -> str:
    """A file name without folders or odd characters (an archive's paths are never trusted)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name.replace("\\", "/")).name).strip(".-")
    return stem or "image.png"


def _accepted(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(tuple(IMAGE_EXTENSIONS)) or medical_kind(lower) is not None


def _uploaded_files(paths: list[str | Path], problems: list[str]) -> list[tuple[str, bytes]]:
    """(original name, bytes) of every image or DICOM/NIfTI file in the upload, zips opened."""
    found, total = [], 0

    def take(name: str, size: int) -> None:
        nonlocal total
        total += size
        if total > MAX_UPLOAD_BYTES:
            raise MedArtError(f"the upload is over {MAX_UPLOAD_BYTES // 1024**2} MB; add fewer files at a time")

    for path in map(Path, paths):
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.infolist() if not m.is_dir() and _accepted(m.filename)
                               and not Path(m.filename).name.startswith(".")]
                    if len(members) > MAX_ZIP_MEMBERS:
                        raise MedArtError(f"{path.name} holds {len(members)} images; add at most {MAX_ZIP_MEMBERS} at a time")
                    for member in members:
                        if member.file_size > max(1024**2, MAX_COMPRESSION_RATIO * member.compress_size):
                            problems.append(f"{path.name}: {_safe_name(member.filename)} inflates {member.file_size:,} "
                                            "bytes from far fewer (a zip bomb?); refused")
                            continue
                        take(member.filename, member.file_size)
                        found.append((member.filename, archive.read(member)))
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
                raise MedArtError(f"{path.name} is not a readable zip file ({type(err).__name__})") from None
        elif _accepted(path.name):
            take(path.name, path.stat().st_size)
            found.append((path.name, path.read_bytes()))
        else:
            problems.append(f"{_safe_name(path.name)}: not an image ({', '.join(UPLOAD_SUFFIXES)}); refused")
    return found


def stage_uploads(paths: list[str | Path], uploads_root: str | Path, *, split: str, label: str,
                  modality: str, problems: list[str] | None = None,
                  convert_options: ConvertOptions = ConvertOptions()) -> Path:
    """Copy uploaded images (or a zip's images) into a new batch folder
    `uploads_root/<batch>/<split>/` with a metadata.jsonl of file_name, label and modality (no
    text yet: the import describes them); DICOM/NIfTI files become de-identified PNG slices (with
    source_file and slice). A file that is not a usable image is skipped with one message in
    `problems` (and the log); the others go on. Returns the batch folder, an imagefolder root."""
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
    rows, reports, used = [], [], set()
    with tempfile.TemporaryDirectory(prefix="medart-upload-") as scratch:
        for original, data in files:
            shown = _safe_name(original)
            try:
                if medical_kind(original):
                    # The original goes to a private temp folder only, under a neutral name: its name and
                    # header may identify the patient; only the converted slices are kept.
                    source = Path(scratch) / f"upload{len(used)}{'.nii.gz' if original.lower().endswith('.gz') else Path(shown).suffix}"
                    source.write_bytes(data)
                    new_rows, report = convert_file(source, folder, options=convert_options, label=label,
                                                    columns={"modality": modality}, display_name=shown)
                    source.unlink()
                    rows += [row for row in new_rows if row["file_name"] not in used]
                    used.update(row["file_name"] for row in new_rows)
                    reports.append(report)
                    continue
                name = f"upload-{batch_id}-{shown}"
                while name in used:
                    name = f"upload-{batch_id}-{len(used)}-{shown}"
                (folder / name).write_bytes(data)
                try:
                    load_rgb(folder / name)  # refuse a corrupt or non-image file now, with its name
                except MedArtError as err:
                    (folder / name).unlink()
                    raise MedArtError(str(err).replace(str(folder / name), shown)) from None
                used.add(name)
                rows.append({"file_name": name, "label": label, "modality": modality})
            except MedArtError as err:
                logger.warning("skipped upload %s", err)
                problems.append(str(err))
    if not rows:
        shutil.rmtree(folder.parent, ignore_errors=True)
        raise MedArtError("no usable images in the upload" + (f": {'; '.join(problems[:3])}" if problems else ""))
    write_jsonl_atomic(folder / METADATA_FILE, rows)
    if reports:
        write_report(folder.parent / REPORT_FILE, reports)
    return folder.parent
