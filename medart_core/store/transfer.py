"""Into and out of the review store: import an imagefolder dataset, export reviewed descriptions.

The export is an imagefolder dataset (images + one metadata.jsonl per split folder, the columns
of README "Formats"), i.e. exactly what `finetune/train.py --data` and
`datasets.load_dataset("imagefolder", data_dir=...)` read; so a clinician's edit becomes the text
the model is trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medart_core.data import METADATA_FILE, SPLIT_NAMES, ImageRecord, load_rgb, scan_imagefolder, write_metadata_jsonl
from medart_core.errors import MedArtError
from medart_core.image_privacy import IMAGES_KEY, clean_copy, record_removed
from medart_core.medical_io import REPORT_FILE
from medart_core.store.review import HUMAN, Entry, ReviewStore
from medart_core.text_limits import check_text

logger = logging.getLogger(__name__)

BASE_COLUMNS = ("file_name", "text", "label", "simple_caption", "source", "rule")
VOLUME_COLUMNS = ("source_file", "slice")  # only for images converted from DICOM/NIfTI
EXPORT_MARKER = ".medart-export"
_STORED = {"file_name", "text", "label", "simple_caption", "source", "rule", "source_file", "slice"}

# describe(records) -> one (text, source, rule) per record: how images without a text get one.
Describer = Callable[[list[ImageRecord]], list[tuple[str, str, str]]]


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as err:
        raise MedArtError(f"image {path} not found") from err
    return digest.hexdigest()


def image_key(split: str | None, file_name: str) -> str:
    return f"{split}/{file_name}" if split else file_name


def _slice(value, where: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError) as err:
        raise MedArtError(f"{where}: slice must be a whole number, got {value!r}") from err


@dataclass
class ImportSummary:
    added: int = 0
    unchanged: int = 0
    moved: int = 0
    changed: int = 0  # image bytes differ from when it was described: flagged
    skipped: list[str] = field(default_factory=list)  # one message per unusable image or metadata row

    def __str__(self) -> str:
        skipped = f", {len(self.skipped)} skipped (unreadable or unsafe)" if self.skipped else ""
        return (f"{self.added} images added, {self.unchanged} already in the store, {self.moved} moved, "
                f"{self.changed} changed since described (flagged){skipped}")


def import_dataset(store: ReviewStore, root: str | Path, *, author: str, describe: Describer | None = None,
                   progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    """Add the images of an imagefolder dataset (metadata.jsonl or metadata.csv per split folder,
    or class sub-folders) with their descriptions. Images already in the store keep their
    reviewed descriptions; one whose bytes changed is flagged. Rows without a text are described
    by `describe` (a captioner), else refused. Unusable images (unreadable, missing, or leaving
    the data folder) are skipped with one message each in `summary.skipped`; the rest go on and
    nothing already in the store changes for them."""
    root = Path(root).resolve()
    summary = ImportSummary()
    records = scan_imagefolder(root, problems=summary.skipped)
    if not records:
        raise MedArtError(f"no images found in {root}" + (f" ({summary.skipped[0]})" if summary.skipped else ""))
    known = {e.key: e for e in store.entries()}
    new, author = [], str(author)
    for number, record in enumerate(records, start=1):
        key = image_key(record.split, record.file_name)
        try:
            digest = file_hash(record.path)
            if key not in known or known[key].content_hash != digest:
                load_rgb(record.path)  # only readable images enter the store (the reviewer must see them)
        except MedArtError as err:
            logger.warning("skipped %s", err)
            summary.skipped.append(str(err))
            continue
        if key in known:
            entry = known[key]
            if entry.content_hash != digest:
                store.rehash(key, record.path, digest, author=author)
                summary.changed += 1
            elif entry.path != record.path:
                store.relocate(key, record.path)
                summary.moved += 1
            else:
                summary.unchanged += 1
        else:
            new.append((record, key, digest))
        if progress:
            progress(number, len(records))
    needs_text = [record for record, _, _ in new if not (isinstance(record.text, str) and record.text.strip())]
    described: dict[str, tuple[str, str, str]] = {}
    if not new and not (summary.unchanged or summary.moved or summary.changed):
        raise MedArtError(f"none of the {len(records)} images in {root} can be used: {summary.skipped[-1]}")
    if needs_text:
        if describe is None:
            raise MedArtError(f"{len(needs_text)} images in {root} have no description (e.g. {needs_text[0].file_name}); "
                              "caption them first (python -m medart_core caption) or import them with a captioner")
        described = _describe_in_chunks(describe, needs_text, summary.skipped)
        waiting = {str(record.path) for record in needs_text}
        new = [item for item in new if str(item[0].path) not in waiting or str(item[0].path) in described]
    rows = []
    for record, key, digest in new:
        row = record.row
        if str(record.path) in described:
            text, source, rule = described[str(record.path)]
        else:
            text, source, rule = record.text, row.get("source") or HUMAN, row.get("rule") or ""
        try:
            text = check_text(text, f"the description of {key}")
        except MedArtError as err:  # e.g. a NUL in a caption file: that row only
            logger.warning("skipped %s", err)
            summary.skipped.append(str(err))
            continue
        rows.append({
            "key": key, "split": record.split or "", "file_name": record.file_name, "path": str(record.path),
            "content_hash": digest, "label": record.label, "simple_caption": row.get("simple_caption") or None,
            "source_file": row.get("source_file") or None, "slice": _slice(row.get("slice"), key),
            "extra": {k: v for k, v in row.items() if k not in _STORED},
            "text": text, "source": str(source), "rule": str(rule or ""),
        })
    summary.added = store.add(rows, author=author)
    return summary


DESCRIBE_CHUNK = 8  # images decoded at once while a batch is described (a VLM batches about this many)


def _describe_in_chunks(describe: Describer, records: list[ImageRecord], skipped: list[str]) -> dict[str, tuple]:
    """{path: (text, source, rule)}, describing DESCRIBE_CHUNK images at a time, so a large upload
    never holds all its decoded images at once. A chunk that fails is retried image by image and
    an image that still fails (its modality refused, say) is skipped with its message."""
    described: dict[str, tuple[str, str, str]] = {}
    for start in range(0, len(records), DESCRIBE_CHUNK):
        chunk = records[start: start + DESCRIBE_CHUNK]
        try:
            results = list(zip(chunk, describe(chunk)))
        except MedArtError:
            results = []
            for record in chunk:
                try:
                    results += list(zip([record], describe([record])))
                except MedArtError as err:
                    logger.warning("skipped %s", err)
                    skipped.append(str(err))
        described.update((str(record.path), result) for record, result in results)
    return described


def caption_describer(captioner, *, modality: str | None = None, max_retries: int = 2) -> Describer:
    """A Describer from a VSG captioner (a VLM or the offline FallbackCaptioner): the same
    templates, validation and retries as `python -m medart_core caption`."""
    from medart_core.caption_validation import Rules, estimate_t5_tokens
    from medart_core.caption_templates import load_row_template, load_template
    from medart_core.captioning import CaptionRequest, describe_batch
    from medart_core.data import load_rgb

    def describe(records: list[ImageRecord]) -> list[tuple[str, str, str]]:
        requests, rules = [], []
        for record in records:
            name = record.row.get("modality") or modality
            if not name:
                raise MedArtError(f"{record.file_name}: no modality; choose one (it picks the description template)")
            try:  # a row's modality comes with the data: a built-in name or a template file inside its folder
                template = load_row_template(name, record.data_root) if record.row.get("modality") else load_template(name)
            except MedArtError as err:
                raise MedArtError(f"{record.file_name}: {err}") from None
            simple = record.row.get("simple_caption") or (template.simple_caption_for(record.label) if record.label else "")
            if not simple:
                raise MedArtError(f"{record.file_name}: no label; give the images a label")
            requests.append(CaptionRequest(load_rgb(record.path), str(simple), record.label, template))
            rules.append(Rules(str(simple), template.features, estimate_t5_tokens))
        results = describe_batch(captioner, requests, rules, max_retries=max_retries)
        return [(d.text, captioner.source, d.rule) for d in results]

    return describe


@dataclass
class ExportSummary:
    out: Path
    files: list[Path]
    rows: int
    copied: int
    revisions: dict[str, int] = field(default_factory=dict)  # image key -> the revision whose text was exported

    def __str__(self) -> str:
        return f"{self.rows} descriptions exported to {', '.join(map(str, self.files))} ({self.copied} images copied)"


def export_rows(entries: list[Entry]) -> dict[str, list[dict]]:
    """metadata.jsonl rows per split, every split with the same columns (datasets refuses splits
    whose columns differ): the fixed columns, source_file/slice when any image has them, then
    the imported extra columns (e.g. modality)."""
    columns = list(BASE_COLUMNS)
    if any(e.source_file or e.slice is not None for e in entries):
        columns += VOLUME_COLUMNS
    columns += sorted({k for e in entries for k in e.extra} - set(columns))
    by_split: dict[str, list[dict]] = {}
    for e in entries:
        values = {"file_name": e.file_name, "text": e.text, "label": e.label, "simple_caption": e.simple_caption,
                  "source": e.source, "rule": e.rule, "source_file": e.source_file, "slice": e.slice, **e.extra}
        by_split.setdefault(e.split, []).append({c: values.get(c) for c in columns})
    return by_split


def _export_image(source: Path, target: Path, expected_hash: str, done: dict[str, dict], relative: str) -> bool:
    """Write an image into the export re-encoded from its pixels, without metadata (checking it is
    still the image that was described), and record in `done` what was removed. False when the
    target already holds that image's clean copy (`done` says it was written from these bytes)."""
    if target.exists() and target.resolve() == source.resolve():
        # Exporting onto the data folder itself: the user's originals are never rewritten.
        logger.warning("%s is exported in place: kept as it is, its metadata (if any) included", target)
        return False
    previous = done.get(relative)
    if target.exists() and previous and previous.get("source_sha256") == expected_hash \
            and previous.get("sha256") == file_hash(target):
        return False
    if file_hash(source) != expected_hash:
        raise MedArtError(f"{source} changed after it was described; import the data again (its description "
                          "gets flagged for review), then export")
    removed = clean_copy(source, target, str(source))
    done[relative] = {"file_name": relative, "source_sha256": expected_hash, "sha256": file_hash(target),
                      "removed": removed}
    return True


def _retire_stale_splits(out: Path, splits: set[str]) -> None:
    """A split that an earlier export wrote but this one has no rows for would keep old texts:
    remove its metadata.jsonl when `out` is an export folder, else warn."""
    for split in SPLIT_NAMES:
        stale = out / split / METADATA_FILE
        if split not in splits and stale.is_file():
            if (out / EXPORT_MARKER).is_file():
                stale.unlink()
            else:
                logger.warning("%s is not part of this export and keeps its earlier descriptions", stale)


def _reported_images(report: Path) -> list[dict]:
    try:
        entries = json.loads(report.read_text(encoding="utf-8")).get(IMAGES_KEY, [])
    except (OSError, ValueError, AttributeError):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("file_name"), str)]


def export_dataset(store: ReviewStore, out: str | Path, *, approved_only: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    """Write an imagefolder dataset to `out`: the images (re-encoded from their pixels without
    metadata, named in `out`/deidentification-report.json; unless already there) and
    `out/<split>/metadata.jsonl` per split. Each metadata file is replaced atomically and only
    after its images are in place, so a reader (or a killed export) sees the previous complete
    file or the new one; a metadata.csv beside it is kept as metadata.csv.orig, since
    imagefolder refuses two metadata files."""
    out = Path(out).resolve()
    entries = store.entries(status="approved" if approved_only else None)
    if not entries:
        what = "approved descriptions" if approved_only else "images"
        raise MedArtError(f"nothing to export: the store has no {what} yet"
                          + ("; approve some, or export all descriptions" if approved_only else ""))
    splits = {e.split for e in entries}
    if "" in splits and len(splits) > 1:
        raise MedArtError("the store mixes images with a split (train/, test/) and without; an imagefolder "
                          "cannot hold both: export from a store with one layout")
    copied, report = 0, out / REPORT_FILE
    done = {e["file_name"]: e for e in _reported_images(report)}
    try:
        for number, entry in enumerate(entries, start=1):
            folder = out / entry.split if entry.split else out
            copied += _export_image(entry.path, folder / entry.file_name, entry.content_hash, done, entry.key)
            if progress:
                progress(number, len(entries))
    finally:  # what was written so far stays recorded, even when an image fails midway
        if done:
            record_removed(report, list(done.values()))
    files, by_split = [], export_rows(entries)
    _retire_stale_splits(out, set(by_split))
    for split, rows in sorted(by_split.items()):
        folder = out / split if split else out
        for leftover in folder.glob(f".{METADATA_FILE}.*.tmp"):  # from an export killed mid-write
            leftover.unlink(missing_ok=True)
        files.append(write_metadata_jsonl(folder / METADATA_FILE, rows))
    (out / EXPORT_MARKER).write_text("written by Med-Art's review store export\n", encoding="utf-8")
    logger.info("exported %d descriptions to %s", len(entries), out)
    return ExportSummary(out, files, len(entries), copied, {e.key: e.revision for e in entries})
