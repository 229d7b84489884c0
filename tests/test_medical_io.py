"""DICOM and NIfTI are converted on import into de-identified 8-bit PNG slices: CT windows on
Hounsfield units, percentile scaling otherwise, explicit slice choice, and no patient identifier
ever reaches the dataset, the store, the export or the logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medart_core.__main__ import main
from medart_core.errors import MedArtError
from medart_core.medical_io import (
    REPORT_FILE,
    ConvertOptions,
    convert_file,
    convert_to_imagefolder,
    deidentification_profile,
    slice_indices,
)

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def pydicom_test_file(name: str) -> Path:
    """One of pydicom's own test files (never downloaded: pydicom-data is not needed)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(path)


def write_ct(path: Path, raw: np.ndarray, *, intercept: float = -1024, photometric: str = "MONOCHROME2",
             frames: int | None = None) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "PID-12345", "CT"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = raw.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    if frames:
        ds.NumberOfFrames = frames
    ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png(folder: Path, row: dict) -> np.ndarray:
    return np.asarray(Image.open(folder / row["file_name"]))


def test_ct_presets_window_hounsfield_units(tmp_path):
    # raw 1024 + intercept -1024 = 0 HU (water); raw 24 = -1000 HU (air); raw 2024 = +1000 HU (bone)
    raw = np.array([[24, 1024, 2024, 1074]] * 4)
    source = write_ct(tmp_path / "ct.dcm", raw)
    expected = {"soft-tissue": [0, 96, 255, 128], "lung": [60, 230, 255, 238], "bone": [0, 71, 212, 78], "brain": [0, 0, 255, 159]}
    for window, values in expected.items():
        rows, _ = convert_file(source, tmp_path / window, options=ConvertOptions(window=window))
        assert png(tmp_path / window, rows[0])[0].tolist() == values, window
    rows, _ = convert_file(source, tmp_path / "auto")
    assert png(tmp_path / "auto", rows[0])[0].tolist() == expected["soft-tissue"]  # auto = soft tissue for CT


def test_monochrome1_is_inverted_and_mr_gets_percentile_scaling(tmp_path):
    raw = np.array([[24, 1024, 2024, 1074]] * 4)
    rows, _ = convert_file(write_ct(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"), tmp_path / "m1")
    assert png(tmp_path / "m1", rows[0])[0].tolist() == [255, 159, 0, 127]
    mr = pydicom_test_file("MR_small.dcm")  # 16-bit MR: no Hounsfield units, so percentile scaling
    rows, report = convert_file(mr, tmp_path / "mr")
    pixels = png(tmp_path / "mr", rows[0])
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255 and report["modality"] == "MR"
    with pytest.raises(MedArtError, match="CT window"):
        convert_file(mr, tmp_path / "mr", options=ConvertOptions(window="lung"))


def test_multi_frame_dicom_and_nifti_volumes_become_the_chosen_slices(tmp_path):
    frames = np.stack([np.full((4, 4), 1000 + 10 * i) for i in range(5)])
    source = write_ct(tmp_path / "multi.dcm", frames, frames=5)
    for spec, wanted in (("middle", [2]), ("all", [0, 1, 2, 3, 4]), ("every:2", [0, 2, 4])):
        rows, _ = convert_file(source, tmp_path / spec.replace(":", "-"), options=ConvertOptions(slices=spec))
        assert [r["slice"] for r in rows] == wanted
        assert len({r["source_file"] for r in rows}) == 1
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # x, y, z in RAS+ (identity affine)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "brain.nii.gz"))
    for axis, count, shape in (("axial", 6, (5, 4)), ("coronal", 5, (6, 4)), ("sagittal", 4, (6, 5))):
        rows, report = convert_file(tmp_path / "brain.nii.gz", tmp_path / axis, options=ConvertOptions(axis=axis, slices="all"))
        assert [r["slice"] for r in rows] == list(range(count)) and report["axis"] == axis
        assert png(tmp_path / axis, rows[0]).shape == shape
    with pytest.raises(MedArtError, match="every:N"):
        slice_indices(10, "every:0")


def test_the_tag_list_is_data_pydicom_knows():
    from pydicom.datadict import tag_for_keyword

    profile = deidentification_profile()
    assert {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "AccessionNumber",
            "ReferringPhysicianName", "StudyInstanceUID", "PatientAddress"} <= profile["basic_profile"]
    assert all(tag_for_keyword(k) is not None for k in profile["basic_profile"] | profile["carried"])
    assert not profile["basic_profile"] & profile["carried"]


def test_burned_in_annotations_are_refused_unless_allowed(tmp_path):
    source = write_ct(tmp_path / "ct.dcm", np.full((4, 4), 1024))
    ds = pydicom.dcmread(source)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(source)
    with pytest.raises(MedArtError, match="burned-in"):
        convert_file(source, tmp_path / "out")
    rows, _ = convert_file(source, tmp_path / "out", options=ConvertOptions(allow_burned_in=True))
    assert len(rows) == 1


def test_convert_command_writes_an_imagefolder_datasets_loads(tmp_path):
    """The one subprocess smoke test of the convert CLI."""
    inputs = tmp_path / "in" / "ct-chest"
    inputs.mkdir(parents=True)
    write_ct(inputs / "Doe_Jane.dcm", np.stack([np.full((8, 8), 900 + i) for i in range(3)]), frames=3)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "medart_core", "convert", "--input", str(tmp_path / "in"),
                             "--out", str(out), "--slices", "all", "--window", "lung"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "3 de-identified PNG slices" in result.stdout
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(loaded) == 3 and {"source_file", "slice", "label"} <= set(loaded.column_names)
    assert set(loaded["label"]) == {"ct-chest"} and sorted(loaded["slice"]) == [0, 1, 2]
    assert not any("Doe" in p.name for p in out.iterdir())  # the input's file name is not carried


def test_reconverting_keeps_descriptions_added_since(tmp_path):
    source = write_ct(tmp_path / "ct.dcm", np.full((4, 4), 1024))
    convert_to_imagefolder([source], tmp_path / "out", label="ct")
    rows = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    rows[0]["text"] = "A CT slice, reviewed"
    (tmp_path / "out" / "metadata.jsonl").write_text(json.dumps(rows[0]) + "\n")
    convert_to_imagefolder([source], tmp_path / "out", label="ct")
    again = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(again) == 1 and again[0]["text"] == "A CT slice, reviewed"


IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
               "SOPInstanceUID", "InstitutionName", "AccessionNumber", "ReferringPhysicianName", "StudyDate",
               "StudyID", "OperatorsName", "FrameOfReferenceUID")


def identifying_values(paths: list[Path]) -> set[str]:
    """The identifying header values of the files, and each part of a person's name."""
    values = set()
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in IDENTIFYING:
            value = str(ds.get(keyword, "") or "")
            values.add(value)
            if keyword.endswith("Name"):
                values.update(value.split("^"))
    return {v for v in values if len(v.strip()) >= 4}


def test_no_patient_identifier_reaches_dataset_store_export_or_logs(tmp_path, caplog, capsys):
    from medart_core.store import ReviewStore, caption_describer, export_dataset, import_dataset
    from medart_core.fallback_captioner import FallbackCaptioner
    from medart_core.store.uploads import stage_uploads

    caplog.set_level(logging.DEBUG)
    sources = [pydicom_test_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "SC_rgb_rle_2frame.dcm")]
    secrets = identifying_values(sources)
    assert {"CompressedSamples^CT1", "1CT1", "CompressedSamples^MR1", "4MR1", "Lastname^Firstname", "id11111"} <= secrets
    data = tmp_path / "dicom" / "scan"
    data.mkdir(parents=True)
    for path in sources:
        (data / path.name).write_bytes(path.read_bytes())
    # 1. caption straight from DICOM: converted on import, then described
    assert main(["caption", "--data", str(tmp_path / "dicom"), "--modality", "ct", "--vlm", "fallback",
                 "--slices", "all", "--convert-to", str(tmp_path / "dataset")]) == 0
    dataset = tmp_path / "dataset"
    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 1 + 15 + 2 and all(r["text"] and r["source_file"] and r["patient"] for r in rows)
    report = json.loads((dataset / REPORT_FILE).read_text())
    assert all({"PatientName", "PatientID"} <= set(f["removed_identifying_attributes"]) for f in report["files"])
    # 2. the review store and its export; 3. the app's upload path with the same files
    with ReviewStore(tmp_path / "review.sqlite") as store:
        print(import_dataset(store, dataset, author="import"))
        for entry in store.entries():
            store.approve(entry.key, revision=entry.revision, author="alice")
        export_dataset(store, tmp_path / "export")
        batch = stage_uploads(sources, tmp_path / "uploads", split="train", label="ct", modality="ct")
        print(import_dataset(store, batch, author="upload", describe=caption_describer(FallbackCaptioner())))
    import sqlite3

    with sqlite3.connect(tmp_path / "review.sqlite") as connection:
        dump = "\n".join(connection.iterdump())
    assert "CompressedSamples" not in dump and len(dump) > 1000
    written = [p for folder in (dataset, tmp_path / "export", tmp_path / "uploads") for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in (tmp_path / "uploads").rglob("*") if p.suffix == ".dcm"]  # originals are not kept
    haystacks = {str(p): p.read_bytes() for p in written}
    haystacks["sqlite dump"] = dump.encode()
    haystacks["logs"] = (caplog.text + "".join(capsys.readouterr())).encode()
    haystacks["file names"] = "\n".join(map(str, written)).encode()
    leaks = [(where, secret) for where, blob in haystacks.items() for secret in secrets if secret.encode() in blob]
    assert not leaks


def test_a_dicom_series_gets_one_source_file_and_a_keyed_patient_pseudonym(tmp_path, monkeypatch, caplog, capsys):
    import hashlib
    import hmac

    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "home" / "patient-key"
    monkeypatch.setenv("MEDART_PATIENT_KEY", str(key_file))
    scans = tmp_path / "scans"
    scans.mkdir()
    series = {"A": "1.2.826.0.1.3680043.8.498.1111", "B": "1.2.826.0.1.3680043.8.498.2222"}
    for number, (series_name, patient) in enumerate([("A", "PID-12345"), ("A", "PID-12345"), ("A", "PID-12345"),
                                                     ("B", "PID-67890")]):
        path = write_ct(scans / f"Doe_Jane_{number}.dcm", np.full((8, 8), 1000 + 40 * number))
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.SeriesInstanceUID, ds.InstanceNumber = patient, series[series_name], number
        ds.save_as(path, enforce_file_format=True)
    assert main(["convert", "--input", str(scans), "--out", str(tmp_path / "data"), "--label", "ct"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "data" / "metadata.jsonl").read_text().splitlines()]
    assert len({r["file_name"] for r in rows}) == 4  # one PNG per file, as before
    from collections import Counter

    assert sorted(Counter(r["source_file"] for r in rows).values()) == [1, 3]  # one per series, not per file
    key = bytes.fromhex(key_file.read_text().strip())
    assert len(key) == 32 and oct(key_file.stat().st_mode)[-3:] == "600"
    expected = {p: "patient-" + hmac.new(key, p.encode(), hashlib.sha256).hexdigest()[:16] for p in ("PID-12345", "PID-67890")}
    assert sorted(r["patient"] for r in rows) == sorted([expected["PID-12345"]] * 3 + [expected["PID-67890"]])
    series_of = {r["patient"]: r["source_file"] for r in rows}
    assert series_of[expected["PID-12345"]] == "dicom-series-" + hashlib.sha256(series["A"].encode()).hexdigest()[:16]
    report = json.loads((tmp_path / "data" / REPORT_FILE).read_text())
    assert len(report["files"]) == 4 and all("PatientID" in f["pseudonymised_attributes"] for f in report["files"])
    # The same key gives the same pseudonyms on the next conversion; the identifiers reach nothing.
    assert main(["convert", "--input", str(scans), "--out", str(tmp_path / "again"), "--label", "ct"]) == 0
    again = [json.loads(line) for line in (tmp_path / "again" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["patient"] for r in again) == sorted(r["patient"] for r in rows)
    written = [p for folder in (tmp_path / "data", tmp_path / "again") for p in folder.rglob("*") if p.is_file()]
    blobs = [p.read_bytes() for p in written] + [str(p).encode() for p in written]
    blobs.append((caplog.text + "".join(capsys.readouterr())).encode())
    for secret in ("PID-12345", "PID-67890", "Doe", *series.values(), key.hex()):
        assert not [b for b in blobs if secret.encode() in b], secret
    # The key never goes into the dataset.
    assert main(["convert", "--input", str(scans), "--out", str(tmp_path / "home"), "--label", "ct"]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err
