"""DICOM and NIfTI in, de-identified 8-bit PNG slices out: one format for everything downstream.

Medical files are converted once, on import (`python -m medart_core convert`, the caption command,
the app's upload), into an imagefolder of PNGs with `source_file` and `slice` columns, so
captioning, review, training and evaluation never read DICOM or NIfTI themselves.

Privacy by construction: only the pixels and the few attributes that say how to display them
(`carried` in templates/deidentification/basic_profile.yaml) are read, and two identifiers that
are replaced by pseudonyms (medart_core/pseudonyms.py): PatientID becomes the `patient` column
(a keyed hash; the key stays in the user's data folder) and SeriesInstanceUID the `source_file`
shared by every file of a series. Names, IDs, dates, UIDs, institutions and the input's own file
name never reach the output: without a series, `source_file` is a hash of the file's bytes; PNG
names derive from the file's bytes, and the PNGs carry no text chunks. A JSON report lists
per file the *names* of the identifying attributes left behind (never their values).

    summary = convert_to_imagefolder(["scans/"], "data/ct", options=ConvertOptions(window="lung"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from medart_core.errors import MedArtError

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MEDICAL_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES
# CT display windows as (level, width) in Hounsfield units.
WINDOW_PRESETS = {"brain": (40.0, 80.0), "soft-tissue": (50.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}
WINDOWS = ("auto", *WINDOW_PRESETS, "dicom", "percentile", "minmax")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # array axes of a volume in RAS+ orientation
PERCENTILES = (0.5, 99.5)  # MR and other non-CT intensities: robust to a few hot voxels
MAX_VOXELS = 2**27  # 134M voxels (512 MB as float32): larger files are refused before decoding
REPORT_FILE = "deidentification-report.json"
PROFILE_FILE = Path(__file__).parent / "templates" / "deidentification" / "basic_profile.yaml"
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")  # free text that can hold a name


def medical_kind(path: str | Path) -> str | None:
    """"dicom", "nifti" or None, by file name."""
    name = Path(path).name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    return None


def is_medical_file(path: str | Path) -> bool:
    return medical_kind(path) is not None


@dataclass(frozen=True)
class ConvertOptions:
    """How volumes become 8-bit slices (the convert command's --window, --slices, --axis)."""

    window: str = "auto"  # auto: soft-tissue for CT, percentile otherwise
    slices: str = "middle"  # middle | all | every:N (multi-frame DICOM and 3-D NIfTI)
    axis: str = "axial"  # NIfTI only: axial | coronal | sagittal
    allow_burned_in: bool = False  # DICOM marked BurnedInAnnotation=YES has text in its pixels
    patient_key: str | None = None  # the pseudonym key file (default: pseudonyms.default_key_path())

    def check(self) -> None:
        if self.window not in WINDOWS:
            raise MedArtError(f"--window {self.window!r}: choose one of {', '.join(WINDOWS)}")
        if self.axis not in AXES:
            raise MedArtError(f"--axis {self.axis!r}: choose one of {', '.join(AXES)}")
        slice_indices(1, self.slices)


def slice_indices(count: int, spec: str) -> list[int]:
    """Which of `count` slices to keep: "middle", "all" or "every:N" (0, N, 2N, ...)."""
    if spec == "middle":
        return [count // 2]
    if spec == "all":
        return list(range(count))
    if spec.startswith("every:"):
        try:
            step = int(spec.split(":", 1)[1])
        except ValueError:
            step = 0
        if step >= 1:
            return list(range(0, count, step))
    raise MedArtError(f"--slices {spec!r}: use middle, all or every:N with N a whole number >= 1")


@lru_cache(maxsize=1)
def deidentification_profile() -> dict:
    """The attribute lists of templates/deidentification/basic_profile.yaml, as sets."""
    import yaml

    data = yaml.safe_load(PROFILE_FILE.read_text(encoding="utf-8"))
    return {"basic_profile": frozenset(data["basic_profile"]), "carried": frozenset(data["carried"]),
            "vrs": frozenset(data["identifying_value_representations"])}


@dataclass
class Volume:
    """Slices of one file, still in the file's own units, and what the report says about it."""

    frames: np.ndarray  # (n, rows, cols) grey or (n, rows, cols, 3) colour
    indices: list[int]  # the slice number of each frame in the file
    modality: str  # DICOM Modality ("CT", "MR", ...) or "NIfTI"
    hounsfield: bool = False  # values are CT Hounsfield units (rescale applied)
    monochrome1: bool = False  # DICOM MONOCHROME1: low values are bright
    file_window: tuple[float, float] | None = None  # DICOM WindowCenter/WindowWidth
    report: dict = field(default_factory=dict)
    # Identifiers read only to be replaced by pseudonyms (convert_file); never written as they are.
    patient_id: str | None = field(default=None, repr=False)
    series_uid: str | None = field(default=None, repr=False)


@contextlib.contextmanager
def _quiet_pydicom():
    """Read headers without validation warnings: pydicom's warnings can quote attribute values."""
    from pydicom import config

    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.reading_validation_mode = previous


def _identifying_attributes(dataset) -> tuple[list[str], int, int]:
    """(names of identifying attributes present, private attribute count, other attributes not
    carried), sequences included. Values are never looked at."""
    profile = deidentification_profile()
    found, counts = set(), {"private": 0, "other": 0}

    def visit(_, element):
        if element.tag.is_private:
            counts["private"] += 1
        elif element.keyword in profile["basic_profile"] or element.VR in profile["vrs"]:
            found.add(element.keyword or str(element.tag))
        elif element.keyword not in profile["carried"]:
            counts["other"] += 1

    dataset.walk(visit)
    if getattr(dataset, "file_meta", None) is not None:
        dataset.file_meta.walk(visit)
    return sorted(found), counts["private"], counts["other"]


PIXEL_PRIVACY_ATTRIBUTES = ("BurnedInAnnotation", "RecognizableVisualFeatures")


def _identifiable_pixels(dataset) -> list[str]:
    """Names of the attributes (anywhere, sequences included) that do not say plainly NO to
    identifying pixels: YES, a list holding YES ([NO, YES]), or a value that is not NO."""
    marked = set()

    def visit(_, element):
        if element.keyword in PIXEL_PRIVACY_ATTRIBUTES and element.value not in (None, ""):
            values = element.value if type(element.value).__name__ == "MultiValue" else [element.value]
            if any(str(value).strip().upper() != "NO" for value in values):
                marked.add(element.keyword)

    dataset.walk(visit)
    return sorted(marked)


def _first_number(value) -> float | None:
    """WindowCenter/Width may be multi-valued: the first is the default view."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_dicom(path: Path, options: ConvertOptions) -> Volume:
    """Pixels (modality LUT applied: CT in HU) and display hints of a DICOM file."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    with _quiet_pydicom():
        try:
            dataset = pydicom.dcmread(path, force=True)
            dataset.get("PixelData")  # parse up to the pixels: a truncated header fails here
        except Exception as err:  # a parser meeting hostile bytes can raise anything: all mean "unreadable"
            raise MedArtError(f"not a readable DICOM file (truncated or not DICOM: {type(err).__name__})") from None
        if "PixelData" not in dataset:
            if dataset.preamble is None and not any(tag.group in (0x0008, 0x0010, 0x0028) for tag in dataset.keys()):
                raise MedArtError("not a DICOM file (no DICM marker and no DICOM attributes)")
            raise MedArtError("the DICOM file holds no image: no pixel data (a truncated file, or a report, RT plan "
                              "or other header-only object)")
        marked = _identifiable_pixels(dataset)
        if marked and not options.allow_burned_in:
            raise MedArtError(f"the DICOM file says its pixels may show who the patient is ({', '.join(marked)}: "
                              "burned-in text or recognisable features); mask them first, or pass --allow-burned-in")
        try:
            rows, cols = int(dataset.Rows), int(dataset.Columns)
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
            samples = int(dataset.get("SamplesPerPixel", 1) or 1)
            photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            modality = str(dataset.get("Modality", "") or "OT").strip().upper()
        except (AttributeError, TypeError, ValueError) as err:
            raise MedArtError(f"the DICOM image attributes are missing or malformed ({type(err).__name__})") from None
        if rows * cols * frames * samples > MAX_VOXELS:
            raise MedArtError(f"the DICOM image is {frames} x {rows} x {cols} x {samples} values, over the limit of "
                              f"{MAX_VOXELS:,}; refused (a decompression bomb?)")
        try:
            pixels = dataset.pixel_array
        except Exception as err:  # missing codec plugins, short pixel data, malformed encapsulation
            syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise MedArtError(f"cannot decode the DICOM pixel data ({getattr(syntax, 'name', 'unknown transfer syntax')}): "
                              f"{reason}") from None
        removed, private, other = _identifying_attributes(dataset)
        colour = samples == 3 or photometric == "PALETTE COLOR"
        hounsfield = False
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)
        elif not colour and ("RescaleSlope" in dataset or "ModalityLUTSequence" in dataset):
            pixels = apply_modality_lut(pixels, dataset)
            hounsfield = modality == "CT"
        window = (_first_number(dataset.get("WindowCenter")), _first_number(dataset.get("WindowWidth")))
        bits = int(dataset.get("BitsStored", 8) or 8)
        patient_id, series_uid = (str(dataset.get(k, "") or "").strip() or None for k in ("PatientID", "SeriesInstanceUID"))
    if frames == 1:
        pixels = pixels[None]
    if colour:
        pixels = _colour_to_uint8(pixels, bits)
    indices = slice_indices(len(pixels), options.slices)
    report = {"format": "DICOM", "modality": modality, "removed_identifying_attributes": removed,
              "removed_private_attributes": private, "removed_other_attributes": other,
              "pseudonymised_attributes": [k for k, v in (("PatientID", patient_id), ("SeriesInstanceUID", series_uid)) if v]}
    return Volume(pixels[indices], indices, modality, hounsfield, photometric == "MONOCHROME1",
                  window if None not in window and window[1] > 0 else None, report, patient_id, series_uid)


def _colour_to_uint8(pixels: np.ndarray, bits: int) -> np.ndarray:
    """RGB (pydicom returns YBR already as RGB) of any bit depth as 8-bit."""
    if pixels.dtype == np.uint8:
        return pixels
    top = float(pixels.max()) if pixels.size else 0.0
    scale = max(top, float(2 ** min(bits, 16) - 1) if top > 255 else 255.0)
    return (pixels.astype(np.float64) / max(scale, 1.0) * 255.0).round().clip(0, 255).astype(np.uint8)


def read_nifti(path: Path, options: ConvertOptions) -> Volume:
    """The chosen slices of a 2-D or 3-D NIfTI volume, reoriented to RAS+ and shown with
    anterior/superior up. 4-D (time series) files are refused: pick one volume first."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
    except Exception as err:  # nibabel raises many types for non-NIfTI bytes
        raise MedArtError(f"not a readable NIfTI file ({type(err).__name__})") from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise MedArtError(f"the NIfTI file is {len(shape)}-D {shape} (a time series or several volumes); "
                          "only 2-D and 3-D images are converted: extract one volume first (e.g. fslroi)")
    if len(shape) < 2 or 0 in shape:
        raise MedArtError(f"the NIfTI file has shape {shape}: no image")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise MedArtError(f"the NIfTI volume has {int(np.prod(shape)):,} voxels, over the limit of {MAX_VOXELS:,}")
    try:
        if len(shape) == 3:
            image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(image.dataobj).reshape(shape), image.affine,
                                                             image.header))
            data = np.asarray(image.dataobj, dtype=np.float32)
        else:
            data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)[:, :, None]
    except Exception as err:  # truncated or corrupt data block (EOFError, zlib.error, ValueError, ...)
        raise MedArtError(f"cannot read the NIfTI voxel data (truncated or corrupt: {type(err).__name__})") from None
    axis = AXES[options.axis] if len(shape) == 3 else 2
    indices = slice_indices(data.shape[axis], options.slices)
    frames = np.stack([np.rot90(np.take(data, i, axis=axis)) for i in indices])
    header = image.header
    removed = [name for name in NIFTI_TEXT_FIELDS if name in header and
               np.asarray(header[name]).tobytes().strip(b"\x00 ")]
    extensions = len(getattr(header, "extensions", []) or [])
    report = {"format": "NIfTI", "modality": "NIfTI", "axis": options.axis if len(shape) == 3 else None,
              "removed_identifying_attributes": removed, "removed_header_extensions": extensions}
    return Volume(frames, indices, "NIfTI", report=report)


def window_to_uint8(volume: Volume, window: str = "auto") -> np.ndarray:
    """8-bit frames: CT presets on Hounsfield units, the file's own window ("dicom"), or the
    0.5-99.5 percentile (MR and other modalities) or min-max range of the chosen slices."""
    frames = volume.frames
    if frames.ndim == 4:  # colour is already 8-bit: windowing is for intensities
        return frames.astype(np.uint8)
    values = np.nan_to_num(frames.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    choice = window
    if choice == "auto":
        choice = "soft-tissue" if volume.hounsfield else "percentile"
    if choice in WINDOW_PRESETS:
        if volume.modality not in ("CT", "NIfTI"):
            raise MedArtError(f"--window {choice} is a CT window (Hounsfield units) but this is {volume.modality}; "
                              "use auto, percentile, minmax or dicom")
        level, width = WINDOW_PRESETS[choice]
        low, high = level - width / 2, level + width / 2
    elif choice == "dicom":
        if volume.file_window is None:
            raise MedArtError("--window dicom: the file has no WindowCenter/WindowWidth; use auto or a preset")
        level, width = volume.file_window
        low, high = level - width / 2, level + width / 2
    elif choice == "percentile":
        low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    else:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        scaled = np.zeros_like(values)
    else:
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    out = scaled.round().astype(np.uint8)
    return 255 - out if volume.monochrome1 else out


def file_reference(path: Path, kind: str) -> str:
    """The `source_file` value: format and a hash of the bytes, never the (possibly named) file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{kind}-{digest.hexdigest()[:16]}"


def _save_png_atomic(pixels: np.ndarray, target: Path) -> None:
    """A PNG without text chunks, written to a temp file and renamed: never half a file."""
    from medart_core.data import atomic_path

    with atomic_path(target) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def convert_file(path: str | Path, out_folder: str | Path, *, options: ConvertOptions = ConvertOptions(),
                 label: str | None = None, columns: dict | None = None,
                 display_name: str | None = None) -> tuple[list[dict], dict]:
    """One DICOM or NIfTI file -> PNG slices in `out_folder`. Returns (metadata rows, report
    entry); a MedArtError names the file as `display_name` (default: its name) and says why."""
    path, out_folder = Path(path), Path(out_folder)
    shown = display_name or path.name
    kind = medical_kind(path)
    try:
        if kind is None:
            raise MedArtError(f"not a DICOM ({', '.join(DICOM_SUFFIXES)}) or NIfTI ({', '.join(NIFTI_SUFFIXES)}) file")
        if not path.is_file():
            raise MedArtError("file not found")
        if path.stat().st_size == 0:
            raise MedArtError("the file is empty (0 bytes)")
        volume = read_dicom(path, options) if kind == "dicom" else read_nifti(path, options)
        pixels = window_to_uint8(volume, options.window)
        reference = file_reference(path, kind)
        pseudonyms = _pseudonyms(volume, options, out_folder)
    except MedArtError as err:
        raise MedArtError(f"{shown}: {err}") from None
    out_folder.mkdir(parents=True, exist_ok=True)
    axis = f"{volume.report['axis']}-" if volume.report.get("axis") else ""
    rows = []
    for index, frame in zip(volume.indices, pixels):
        name = f"{reference}-{axis}{index:04d}.png"
        _save_png_atomic(frame, out_folder / name)
        rows.append({"file_name": name, "label": label, "source_file": reference, "slice": int(index),
                     **pseudonyms, **(columns or {})})
    report = {"source_file": reference, **pseudonyms, "file": reference, **volume.report, "window": options.window,
              "slices": list(map(int, volume.indices))}
    return rows, report


def _pseudonyms(volume: Volume, options: ConvertOptions, out_folder: Path) -> dict:
    """The `source_file` of the file's DICOM series (one for all its files) and the `patient`
    pseudonym, where the file has them; the key is made on first use, outside the dataset."""
    from medart_core.pseudonyms import load_or_create_key, patient_pseudonym, series_reference

    found = {}
    if volume.series_uid:
        found["source_file"] = series_reference(volume.series_uid)
    if volume.patient_id:
        found["patient"] = patient_pseudonym(volume.patient_id, load_or_create_key(options.patient_key,
                                                                                   refuse_inside=out_folder))
    return found


def find_medical_files(inputs: list[str | Path], problems: list[str] | None = None) -> list[tuple[Path, Path]]:
    """(file, the input folder it was found under) for every DICOM/NIfTI file of the inputs;
    folders are searched recursively, and links that lead outside them are refused."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            root = item.resolve()
            for path in sorted(item.rglob("*")):
                if not is_medical_file(path) or path.name.startswith("."):
                    continue
                if not path.resolve().is_relative_to(root):
                    message = f"{path.relative_to(item)}: a link to a file outside {item}; refused"
                    logger.warning("skipped %s", message)
                    if problems is not None:
                        problems.append(message)
                    continue
                if path.is_file():
                    found.append((path, item))
        elif item.is_file() or is_medical_file(item):
            found.append((item, item.parent))
        else:
            raise MedArtError(f"input {item} not found")
    return found


@dataclass
class ConversionSummary:
    """What a conversion did, for the CLI's last lines and the app's message."""

    out: Path
    files: int = 0
    slices: int = 0
    problems: list[str] = field(default_factory=list)
    report: Path | None = None

    def __str__(self) -> str:
        skipped = f"; {len(self.problems)} skipped (see the messages above)" if self.problems else ""
        return (f"{self.files} files converted into {self.slices} de-identified PNG slices in {self.out}{skipped}; "
                f"de-identification report: {self.report}")


def convert_to_imagefolder(inputs: list[str | Path], out: str | Path, *, options: ConvertOptions = ConvertOptions(),
                           label: str | None = None, labels_from_folders: bool = True,
                           columns: dict | None = None) -> ConversionSummary:
    """Convert every DICOM/NIfTI file of `inputs` (files or folders) into `out`, an imagefolder:
    PNG slices plus metadata.jsonl (file_name, label, source_file, slice) and the
    de-identification report. A file that cannot be converted is skipped with one message and
    the rest go on. Running again updates rows in place and keeps columns added since (e.g. the
    descriptions the caption command wrote). The label is `label`, else the file's first
    sub-folder under its input folder (the imagefolder convention) when `labels_from_folders`."""
    from medart_core.data import METADATA_FILE, read_metadata, write_metadata_jsonl

    options.check()
    out = Path(out)
    summary = ConversionSummary(out)
    files = find_medical_files(inputs, summary.problems)
    if not files:
        raise MedArtError(f"no DICOM ({', '.join(DICOM_SUFFIXES)}) or NIfTI ({', '.join(NIFTI_SUFFIXES)}) files in "
                          f"{', '.join(map(str, inputs))}" + (f" ({summary.problems[0]})" if summary.problems else ""))
    out.mkdir(parents=True, exist_ok=True)
    rows, reports = [], []
    for path, root in files:
        relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        file_label = label or (relative.parts[0] if labels_from_folders and len(relative.parts) > 1 else None)
        try:
            new_rows, report = convert_file(path, out, options=options, label=file_label, columns=columns,
                                            display_name=str(relative))
        except MedArtError as err:
            logger.warning("skipped %s", err)
            summary.problems.append(str(err))
            continue
        rows += new_rows
        reports.append(report)
        summary.files += 1
        summary.slices += len(new_rows)
    if not rows:
        raise MedArtError(f"none of the {len(files)} DICOM/NIfTI files could be converted: {summary.problems[-1]}")
    merged = {str(row.get("file_name")): row for row in (read_metadata(out) or [])}
    for row in rows:
        merged[row["file_name"]] = {**merged.get(row["file_name"], {}), **row}
    write_metadata_jsonl(out / METADATA_FILE, merged.values())
    summary.report = write_report(out / REPORT_FILE, reports)
    return summary


def write_report(path: Path, entries: list[dict]) -> Path:
    """Merge report entries (one per converted file, by source_file) into the JSON report."""
    existing, document = {}, {}
    if path.is_file():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            existing = {e.get("file", e["source_file"]): e for e in document.get("files", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s was unreadable; writing it anew", path)
            document = {}
    # One entry per converted file: the files of one DICOM series share their source_file.
    existing.update({e.get("file", e["source_file"]): e for e in entries})
    from medart_core.data import write_json_atomic

    write_json_atomic(path, {
        **document,  # e.g. the ordinary images' entries (medart_core.image_privacy)
        "profile": "DICOM PS3.15 Annex E basic application level confidentiality profile (attribute names only; "
                   "only pixels and display attributes were read, nothing else was carried into the dataset)",
        "files": [existing[k] for k in sorted(existing)]})
    return path
