"""Images added through the app: uploaded files or a zip become a small imagefolder batch that
the store imports (and the captioner describes), without touching the original data folder."""

from __future__ import annotations

import re
import uuid
import zipfile
from pathlib import Path

from medart_core.data import IMAGE_EXTENSIONS, METADATA_FILE, load_rgb, write_jsonl_atomic
from medart_core.errors import MedArtError

MAX_ZIP_MEMBERS = 5000


def _safe_name(name: str) -> str:
    """A file name without folders or odd characters (an archive's paths are never trusted)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name).strip(".-")
    return stem or "image.png"


def _images_in(paths: list[str | Path]) -> list[tuple[str, bytes]]:
    found = []
    for path in map(Path, paths):
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.infolist() if not m.is_dir()
                               and Path(m.filename).suffix.lower() in IMAGE_EXTENSIONS
                               and not Path(m.filename).name.startswith(".")]
                    if len(members) > MAX_ZIP_MEMBERS:
                        raise MedArtError(f"{path.name} holds {len(members)} images; add at most {MAX_ZIP_MEMBERS} at a time")
                    found += [(m.filename, archive.read(m)) for m in members]
            except zipfile.BadZipFile as err:
                raise MedArtError(f"{path.name} is not a readable zip file") from err
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append((path.name, path.read_bytes()))
        else:
            raise MedArtError(f"{path.name}: not an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) or a .zip of images")
    if not found:
        raise MedArtError("no images in the upload")
    return found


def stage_uploads(paths: list[str | Path], uploads_root: str | Path, *, split: str, label: str,
                  modality: str) -> Path:
    """Copy uploaded images (or a zip's images) into a new batch folder
    `uploads_root/<batch>/<split>/` with a metadata.jsonl of file_name, label and modality (no
    text yet: the import describes them). Returns the batch folder, an imagefolder root."""
    label = (label or "").strip()
    if not label:
        raise MedArtError("give the new images a label (their class, e.g. 'fundus')")
    if not modality:
        raise MedArtError("choose a modality: it picks how the images are described")
    if split not in ("train", "test"):
        raise MedArtError(f"split must be train or test, got {split!r}")
    batch_id = uuid.uuid4().hex[:8]
    folder = Path(uploads_root) / f"batch-{batch_id}" / split
    folder.mkdir(parents=True)
    rows, used = [], set()
    for original, data in _images_in(paths):
        name = f"upload-{batch_id}-{_safe_name(original)}"
        while name in used:
            name = f"upload-{batch_id}-{len(used)}-{_safe_name(original)}"
        used.add(name)
        (folder / name).write_bytes(data)
        load_rgb(folder / name)  # refuse a corrupt or non-image file now, with its name
        rows.append({"file_name": name, "label": label, "modality": modality})
    write_jsonl_atomic(folder / METADATA_FILE, rows)
    return folder.parent
