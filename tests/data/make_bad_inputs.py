"""Build the hostile and broken input corpus every Med-Art entry point must survive.

    python tests/data/make_bad_inputs.py [FOLDER]     (default: tests/data/bad/, git-ignored)

The tests build it in a temp folder (tests/test_bad_inputs.py), so nothing binary is committed;
it is deterministic and small (~260 KB, mostly the two 100,000-character texts). Layout, case by
case in FOLDER/manifest.json:

    files/      single files: broken images, odd-but-valid images, broken DICOM/NIfTI
    datasets/   one imagefolder per metadata attack (each also holds a good image)
    prompts/    prompt files for the generate command
    outside/    a file outside every dataset, the target of the escaping symlink and `..` names

Each case says what must happen: "ok" (it is valid, if odd) or a fragment of the one clear
error message it must produce.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SHELL_NAME = "a;b|c&d$(touch pwned)`id` 'q\".png"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb_png() -> bytes:
    """A ~100-byte PNG that claims 100,000 x 100,000 pixels (10 GB once decoded)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b""))


def _image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def good_image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _dicom(path: Path, *, pixels: bool = True, rows: int = 32, cols: int = 32, frames: int | None = None,
           burned_in: bool = False) -> None:
    """A small CT DICOM file with a patient name and ID in it (or none of its pixel data)."""
    from pydicom.dataset import FileMetaDataset, FileDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Hostile^Harry", "BAD-0001", "19700101"
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "CT", CTImageStorage, meta.MediaStorageSOPInstanceUID
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    if pixels:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = rows, cols, 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = np.arange(32 * 32, dtype=np.uint16).tobytes() if rows * cols <= 32 * 32 else b"\0" * 64
    ds.save_as(path, enforce_file_format=True)


def make_bad_inputs(root: str | Path) -> list[dict]:
    """Write the corpus under `root` (replacing it) and return its cases (also in manifest.json)."""
    import nibabel as nib

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    files, datasets, prompts, outside = (root / name for name in ("files", "datasets", "prompts", "outside"))
    for folder in (files, datasets, prompts, outside):
        folder.mkdir(parents=True)
    good_image(99).save(outside / "secret.png")
    cases: list[dict] = []

    def file_case(name: str, data: bytes | None, expect: str, what: str, writer=None) -> None:
        path = files / name
        if writer is not None:
            writer(path)
        else:
            path.write_bytes(data)
        cases.append({"kind": "file", "name": name, "path": str(path.relative_to(root)), "expect": expect, "what": what})

    png = _image_bytes(good_image(1, 64), "PNG")
    jpeg = _image_bytes(good_image(2, 64), "JPEG", quality=90)
    file_case("zero-byte.png", b"", "empty (0 bytes)", "zero-byte file")
    file_case("truncated.png", png[: len(png) // 2], "truncated", "PNG cut in half")
    file_case("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated", "JPEG cut in half")
    file_case("text-renamed.png", b"Patient list, not an image\n", "not an image", "text file renamed .png")
    file_case("decompression-bomb.png", decompression_bomb_png(), "decompression bomb", "PNG claiming 100,000^2 pixels")
    file_case("cmyk.jpg", _image_bytes(good_image(3).convert("CMYK"), "JPEG"), "ok", "CMYK JPEG")
    gray16 = Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16))
    file_case("gray16.png", _image_bytes(gray16, "PNG"), "ok", "16-bit greyscale PNG")
    palette = good_image(4).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    file_case("palette-transparency.png", _image_bytes(palette, "PNG", transparency=0), "ok", "palette PNG with transparency")
    file_case(SHELL_NAME, _image_bytes(good_image(5), "PNG"), "ok", "file name with shell characters")
    file_case("no-pixel-data.dcm", None, "no pixel data", "DICOM without pixel data",
              writer=lambda p: _dicom(p, pixels=False))

    def truncated_dicom(path: Path) -> None:
        _dicom(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 700])

    file_case("truncated.dcm", None, "pixel data", "DICOM with its pixel data cut short", writer=truncated_dicom)
    file_case("header-cut.dcm", None, "no pixel data", "DICOM cut inside its header",
              writer=lambda p: (_dicom(p), p.write_bytes(p.read_bytes()[:200])))
    file_case("text-renamed.dcm", b"not a DICOM file at all\n" * 10, "not a DICOM file", "text renamed .dcm")
    file_case("burned-in.dcm", None, "burned-in", "DICOM whose pixels carry burned-in text",
              writer=lambda p: _dicom(p, burned_in=True))
    file_case("bomb.dcm", None, "decompression bomb", "DICOM claiming 100 frames of 60,000^2 pixels",
              writer=lambda p: _dicom(p, rows=60000, cols=60000, frames=100))

    def nifti_4d(path: Path) -> None:
        nib.save(nib.Nifti1Image(np.ones((6, 6, 6, 3), dtype=np.int16), np.eye(4)), str(path))

    file_case("volume-4d.nii.gz", None, "4-D", "4-D NIfTI (a time series)", writer=nifti_4d)

    def truncated_nifti(path: Path) -> None:
        nib.save(nib.Nifti1Image(np.arange(16 ** 3, dtype=np.float32).reshape(16, 16, 16), np.eye(4)), str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    file_case("truncated.nii.gz", None, "NIfTI", "NIfTI whose compressed voxels are cut short", writer=truncated_nifti)
    file_case("zero-byte.nii", b"", "empty (0 bytes)", "zero-byte NIfTI")

    def dataset_case(name: str, expect: str, what: str, rows: list[dict] | None = None, csv_bytes: bytes | None = None,
                     extra=None) -> None:
        folder = datasets / name
        folder.mkdir()
        good_image(10).save(folder / "good.png")
        if rows is not None:
            (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        if csv_bytes is not None:
            (folder / "metadata.csv").write_bytes(csv_bytes)
        if extra:
            extra(folder)
        cases.append({"kind": "dataset", "name": name, "path": str(folder.relative_to(root)), "expect": expect,
                      "what": what})

    good_row = {"file_name": "good.png", "text": "An endoscopic image of a polyp", "label": "polyp"}
    dataset_case("metadata-latin1-csv", "not UTF-8", "metadata.csv in Latin-1",
                 csv_bytes="file_name,text,label\ngood.png,Läsion im Magen, Größe 3 cm,polyp\n".encode("latin-1"))
    dataset_case("caption-100k", "ok", "a caption of 100,000 characters (truncated with a warning)",
                 rows=[{**good_row, "text": "An endoscopic image " + "of a polyp " * 9998}])
    dataset_case("caption-empty", "ok", "an empty caption (no description yet)", rows=[{**good_row, "text": ""}])
    dataset_case("dotdot-file-name", "outside the data folder", "file_name with ../ and an absolute path",
                 rows=[good_row, {**good_row, "file_name": "../../outside/secret.png"},
                       {**good_row, "file_name": str(outside / "secret.png")}])

    def symlink_outside(folder: Path) -> None:
        os.symlink(os.path.relpath(outside / "secret.png", folder), folder / "link.png")

    dataset_case("symlink-outside", "outside the data folder", "a symlink to a file outside the data folder",
                 rows=[good_row, {**good_row, "file_name": "link.png"}], extra=symlink_outside)
    dataset_case("malformed-jsonl", "not valid JSON", "a metadata line cut off",
                 extra=lambda f: (f / "metadata.jsonl").write_text(json.dumps(good_row) + '\n{"file_name": "good.png", "te\n'))

    def prompt_case(name: str, data: bytes, expect: str, what: str) -> None:
        (prompts / name).write_bytes(data)
        cases.append({"kind": "prompts", "name": name, "path": f"prompts/{name}", "expect": expect, "what": what})

    prompt_case("latin1.jsonl", '{"text": "Läsion"}\n'.encode("latin-1"), "not UTF-8", "prompt file in Latin-1")
    prompt_case("empty-prompt.jsonl", b'{"text": "An MRI"}\n{"text": "  "}\n', "no text", "an empty prompt")
    prompt_case("prompt-100k.jsonl", json.dumps({"text": "A fundus photograph " + "x " * 50_000}).encode() + b"\n",
                "ok", "a prompt of 100,000 characters (truncated)")
    (root / "manifest.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False), encoding="utf-8")
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "bad"
    made = make_bad_inputs(target)
    print(f"{len(made)} cases in {target}")
