"""Build the hostile and broken input corpus every Med-Art entry point must survive.

    python tests/data/make_bad_inputs.py [FOLDER]     (default: tests/data/bad/, git-ignored)

The tests build it in a temp folder (tests/test_bad_inputs.py), so nothing binary is committed;
it is deterministic and small (~600 KB, mostly the three 100,000-character texts). Layout, case by
case in FOLDER/manifest.json:

    files/      single files: broken images, odd-but-valid images, broken DICOM/NIfTI
    datasets/   one imagefolder per metadata attack (each also holds a good image)
    prompts/    prompt files for the generate command
    files/*.zip archives for the app's "Add images" (kind "zip")
    (manifest)  texts typed into the review store (kind "text", the text in the manifest itself)
    outside/    a file outside every dataset, the target of the escaping symlink and `..` names

Each case says what must happen: "ok" (it is valid, if odd) or a fragment of the one clear
error message it must produce; a dataset case's "describe" says what describing its rows must do.
One dataset holds a FIFO: copy the corpus with `copy_corpus`, since shutil's copy would block on it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import zipfile
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


def flat_png(width: int, height: int) -> bytes:
    """An all-zero greyscale PNG written row by row (never the whole image in memory): 6000 x 6000
    is 36 MB decoded from ~35 KB, the shape of a decompression bomb under the pixel limit."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer, row, parts = zlib.compressobj(9), b"\x00" * (width + 1), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


PATIENT = "Hostile^Harry"  # the name hidden in metadata: it must reach no output


def exif_jpeg() -> bytes:
    """A JPEG whose EXIF names the patient (Artist, ImageDescription) and says where (GPS)."""
    exif = Image.Exif()
    exif[0x013B] = PATIENT  # Artist
    exif[0x010E] = f"Patient {PATIENT}, ID BAD-0001"  # ImageDescription
    exif.get_ifd(0x8825)[1] = "N"  # GPSLatitudeRef
    return _image_bytes(good_image(6), "JPEG", quality=90, exif=exif.tobytes())


def text_chunk_png() -> bytes:
    """A PNG with tEXt and iTXt chunks naming the patient."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", PATIENT)
    info.add_itxt("Comment", f"scan of {PATIENT}")
    return _image_bytes(good_image(7), "PNG", pnginfo=info)


def patched_zip(method: int | None = None, encrypted: bool = False) -> bytes:
    """A zip with a good image and a second member marked encrypted or compressed by an unknown
    method (zipfile writes neither, so the headers are patched)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zipped:
        zipped.writestr("good.png", _image_bytes(good_image(8), "PNG"))
        zipped.writestr("bad.png", _image_bytes(good_image(9), "PNG"))
    data = bytearray(buffer.getvalue())
    local = data.index(b"PK\x03\x04", 1)  # the second member's local header
    central = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)
    for header, flags, compression in ((local, 6, 8), (central, 8, 10)):
        if encrypted:
            data[header + flags] |= 0x1
        if method is not None:
            data[header + compression: header + compression + 2] = struct.pack("<H", method)
    return bytes(data)


def _image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def good_image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _dicom(path: Path, *, pixels: bool = True, rows: int = 32, cols: int = 32, frames: int | None = None,
           burned_in: bool = False, extra=None) -> None:
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
    if extra is not None:
        extra(ds)
    if pixels:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = rows, cols, 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = np.arange(32 * 32, dtype=np.uint16).tobytes() if rows * cols <= 32 * 32 else b"\0" * 64
    ds.save_as(path, enforce_file_format=True)


def copy_corpus(source: str | Path, target: str | Path) -> None:
    """Copy the corpus (links kept as links, FIFOs made anew rather than read)."""
    import stat

    def copy(src, dst):
        if stat.S_ISFIFO(os.lstat(src).st_mode):
            os.mkfifo(dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=copy)


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

    # Round two (issue 25): what a probe with new inputs broke.
    file_case("flat-6000.png", flat_png(6000, 6000), "decompression bomb",
              "all-zero 6000 x 6000 PNG: under the pixel limit, 36 MB decoded from 35 KB")
    file_case("exif-patient.jpg", exif_jpeg(), "ok", "JPEG whose EXIF names the patient (kept out of every output)")
    file_case("text-chunk-patient.png", text_chunk_png(), "ok", "PNG whose text chunks name the patient")
    file_case("画像-ロ.png", _image_bytes(good_image(11), "PNG"), "ok", "a file name with no ASCII stem")

    def sequence_burned_in(ds) -> None:
        from pydicom.dataset import Dataset

        item = Dataset()
        item.BurnedInAnnotation = "YES"
        ds.ReferencedImageSequence = [item]

    file_case("burned-in-list.dcm", None, "burned-in", "BurnedInAnnotation given as [NO, YES]",
              writer=lambda p: _dicom(p, extra=lambda ds: setattr(ds, "BurnedInAnnotation", ["NO", "YES"])))
    file_case("burned-in-sequence.dcm", None, "burned-in", "BurnedInAnnotation YES inside a sequence",
              writer=lambda p: _dicom(p, extra=sequence_burned_in))
    file_case("recognizable-features.dcm", None, "burned-in", "RecognizableVisualFeatures YES (a face)",
              writer=lambda p: _dicom(p, extra=lambda ds: setattr(ds, "RecognizableVisualFeatures", "YES")))

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
                     extra=None, describe: str = "ok") -> None:
        """`describe`: what describing the rows must do (the caption command refuses, the app's import
        skips the row): "ok" or a fragment of the message."""
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
                      "what": what, "describe": describe})

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

    def second_image(folder: Path) -> None:
        good_image(12).save(folder / "bad.png")

    dataset_case("file-name-folder", "not a regular file", "a row whose file_name is a folder",
                 rows=[good_row, {**good_row, "file_name": "scans"}], extra=lambda f: (f / "scans").mkdir())
    dataset_case("file-name-fifo", "not a regular file", "a row naming a FIFO (opening it would block forever)",
                 rows=[good_row, {**good_row, "file_name": "pipe.png"}], extra=lambda f: os.mkfifo(f / "pipe.png"))
    dataset_case("duplicate-file-name", "already on line 1", "two rows for one file_name, with different texts",
                 rows=[good_row, {**good_row, "text": "An endoscopic image of a second polyp"}],
                 describe="on lines 1, 2")
    dataset_case("simple-caption-object", "simple_caption must be text", "a simple_caption that is a JSON object",
                 rows=[good_row, {**good_row, "file_name": "bad.png", "simple_caption": {"html": "<b>x</b>"}}],
                 extra=second_image)
    dataset_case("slice-out-of-range", "slice must be a whole number", "slices of Infinity and 2^70",
                 rows=[good_row, {**good_row, "file_name": "bad.png", "slice": float("inf")},
                       {**good_row, "file_name": "bad2.png", "slice": 2**70}],
                 extra=lambda f: (second_image(f), good_image(13).save(f / "bad2.png")))
    dataset_case("metadata-bom-csv", "ok", "metadata.csv with a byte-order mark (a spreadsheet's \"CSV UTF-8\")",
                 csv_bytes="\ufefffile_name,text,label\ngood.png,An endoscopic image of a polyp,polyp\n".encode("utf-8"))
    dataset_case("metadata-bom-jsonl", "ok", "metadata.jsonl with a byte-order mark",
                 extra=lambda f: (f / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(good_row).encode() + b"\n"))
    (outside / "secret.yaml").write_text(f"patient: {PATIENT}\n  : [unbalanced\n", encoding="utf-8")
    dataset_case("modality-outside", "ok", "a row whose modality is a file outside the data folder",
                 rows=[good_row, {"file_name": "bad.png", "label": "polyp",
                                  "modality": os.path.relpath(outside / "secret.yaml", datasets / "modality-outside")}],
                 extra=second_image, describe="neither a built-in template")

    def prompt_case(name: str, data: bytes, expect: str, what: str) -> None:
        (prompts / name).write_bytes(data)
        cases.append({"kind": "prompts", "name": name, "path": f"prompts/{name}", "expect": expect, "what": what})

    prompt_case("latin1.jsonl", '{"text": "Läsion"}\n'.encode("latin-1"), "not UTF-8", "prompt file in Latin-1")
    prompt_case("empty-prompt.jsonl", b'{"text": "An MRI"}\n{"text": "  "}\n', "no text", "an empty prompt")
    prompt_case("prompt-100k.jsonl", json.dumps({"text": "A fundus photograph " + "x " * 50_000}).encode() + b"\n",
                "ok", "a prompt of 100,000 characters (truncated)")
    prompt_case("prompt-100k-unbroken.jsonl", json.dumps({"text": "x" * 100_000}).encode() + b"\n", "ok",
                "a prompt of 100,000 characters without a space (quadratic in PixArt's caption cleaning)")

    def zip_case(name: str, data: bytes, expect: str, what: str) -> None:
        (files / name).write_bytes(data)
        cases.append({"kind": "zip", "name": name, "path": f"files/{name}", "expect": expect, "what": what})

    zip_case("encrypted-member.zip", patched_zip(encrypted=True), "encrypted", "a zip with one encrypted member")
    zip_case("unknown-compression.zip", patched_zip(method=99), "unsupported compression",
             "a zip member compressed by a method zipfile lacks (99, AES)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zipped:
        zipped.writestr("good.png", _image_bytes(good_image(14), "PNG"))
        zipped.writestr("flat-6000.png", flat_png(6000, 6000))
    zip_case("flat-bomb.zip", buffer.getvalue(), "decompression bomb", "a zip holding a flat 6000 x 6000 PNG")

    def text_case(name: str, text: str, expect: str, what: str) -> None:
        cases.append({"kind": "text", "name": name, "text": text, "expect": expect, "what": what})

    text_case("text-over-limit", "An endoscopic image " + "of a polyp " * 300, "over the limit of 2,000",
              "a description of 3,320 characters (the import's limit is 2,000)")
    text_case("text-invisible", "\u200b\u200d\u202e\u2066\u2069", "only invisible characters",
              "zero-width and direction-override characters only")
    text_case("text-nul", "\x00\x00\x00", "control character", "NUL characters only")
    text_case("text-nul-inside", "A polyp\x00 of 3 mm", "control character", "a NUL inside a description")
    (root / "manifest.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False), encoding="utf-8")
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "bad"
    made = make_bad_inputs(target)
    print(f"{len(made)} cases in {target}")
