"""Build the bundled demo dataset (assets/demo/) from real medical images that ship in packages.

    pip install -r requirements-demo.txt
    apt-get install mricron-data invesalius-examples      # Debian
    python finetune/make_demo_dataset.py --out assets/demo

Classes are "modality x view", 64x64 RGB PNGs in the imagefolder layout (train/ and test/, one
metadata.jsonl each), described by the offline fallback captioner (`source: fallback`; replace
them with a VLM's or a clinician's descriptions in the review app). Splits never share a source
region: the brain MRI classes train on the MNI152 template and test on the Colin27 subject; the
head CT alternates 12-slice slabs with a 3-slice gap between train and test slabs; the histology
and fundus classes come from single images, so their train and test tiles come from disjoint
regions (left three quarters / right quarter; left / right of a gap for the fundus).
"""

from __future__ import annotations

import argparse
import plistlib
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medart_core.data import write_jsonl_atomic

SIZE = 64


@dataclass(frozen=True)
class DemoClass:
    label: str
    simple_caption: str
    modality: str  # a captioning template


CLASSES = {
    "brain-mri-axial": DemoClass("brain-mri-axial", "An axial T1-weighted brain MRI slice", "brain-mri"),
    "brain-mri-coronal": DemoClass("brain-mri-coronal", "A coronal T1-weighted brain MRI slice", "brain-mri"),
    "brain-mri-sagittal": DemoClass("brain-mri-sagittal", "A sagittal T1-weighted brain MRI slice", "brain-mri"),
    "head-ct-axial": DemoClass("head-ct-axial", "An axial head CT slice in a brain window", "ct"),
    "histology-ihc": DemoClass("histology-ihc", "An immunohistochemistry tile of colonic glands", "histopathology"),
    "fundus": DemoClass("fundus", "A fundus photograph patch of the retina", "fundus"),
}

SOURCES = {
    "mni152": "nilearn: MNI152 ICBM 2009a symmetric T1 template (mni_icbm152_t1_tal_nlin_sym_09a)",
    "colin27": "Debian mricron-data: Colin27 T1, brain-extracted (ch2bet.nii.gz)",
    "invesalius": "Debian invesalius-examples: head CT 'ProMED CT 0051' (Cranium.inv3)",
    "skimage-ihc": "scikit-image data: ihc.png",
    "skimage-retina": "scikit-image data: retina.jpg",
}


def to_rgb_square(gray: np.ndarray) -> Image.Image:
    """A 2-D array scaled to 0..1 -> a square (zero-padded) 64x64 RGB image."""
    height, width = gray.shape
    side = max(height, width)
    canvas = np.zeros((side, side), dtype=np.float32)
    canvas[(side - height) // 2:(side - height) // 2 + height, (side - width) // 2:(side - width) // 2 + width] = gray
    image = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS).convert("RGB")


def percentile_scale(volume: np.ndarray) -> np.ndarray:
    """MR intensities have no absolute scale: map the 1st..99.5th percentile of the head to 0..1."""
    head = volume[volume > np.percentile(volume, 30)]
    low, high = np.percentile(head, 1), np.percentile(head, 99.5)
    return (volume - low) / (high - low)


def mri_slices(path: Path, step: int):
    """(label, slice index, image) for the three orientations of a T1 volume in RAS orientation."""
    import nibabel as nib

    volume = percentile_scale(np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(), dtype=np.float32))
    brain = volume > 0.15
    for axis, label in ((2, "brain-mri-axial"), (1, "brain-mri-coronal"), (0, "brain-mri-sagittal")):
        coverage = brain.sum(axis=tuple(a for a in range(3) if a != axis))
        occupied = np.flatnonzero(coverage > 0.25 * coverage.max())
        start, stop = occupied[0], occupied[-1]
        margin = (stop - start) // 8  # skip the thin caps of the brain at either end
        for index in range(start + margin, stop - margin + 1, step):
            plane = np.take(volume, index, axis=axis)
            yield label, int(index), to_rgb_square(np.rot90(plane))  # superior/anterior up


def ct_volume() -> np.ndarray:
    """The head CT in Hounsfield units, (slices, rows, columns), from InVesalius' example project."""
    archive = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
    if not archive.is_file():
        raise SystemExit(f"{archive} not found: apt-get install invesalius-examples")
    with tarfile.open(archive, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        header = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        raw = tar.extractfile(members[header["matrix"]["filename"]]).read()
    shape = tuple(header["matrix"]["shape"])
    data = np.frombuffer(raw, dtype=np.dtype(header["matrix"]["dtype"]))
    return data[-int(np.prod(shape)):].reshape(shape).astype(np.float32)  # the matrix is the file's tail


def ct_slices(slab: int = 12, gap: int = 3):
    """Brain-window (L40/W80) axial slices, alternating train/test slabs with gaps between them."""
    volume = ct_volume()
    window = (volume - (40 - 40)) / 80.0
    head = (volume > -300).mean(axis=(1, 2))
    for index in range(volume.shape[0]):
        if head[index] < 0.15:
            continue
        block, offset = divmod(index, slab)
        if offset >= slab - gap:
            continue  # the gap keeps neighbouring slices of a train and a test slab apart
        split = "train" if block % 3 != 2 else "test"
        yield split, index, to_rgb_square(window[index])


def tiles(image: np.ndarray, tile: int, stride: int, x_range: tuple[int, int], mask=None):
    """(x, y, tile image) for tiles lying fully inside x_range (and mostly inside the mask)."""
    height, width = image.shape[:2]
    for y in range(0, height - tile + 1, stride):
        for x in range(x_range[0], min(x_range[1], width) - tile + 1, stride):
            if mask is not None and mask[y:y + tile, x:x + tile].mean() < 0.95:
                continue
            patch = Image.fromarray(image[y:y + tile, x:x + tile]).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            yield x, y, patch.convert("RGB")


def skimage_image(name: str) -> np.ndarray:
    import skimage

    return np.asarray(Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB"))


def build(out: Path) -> dict[str, list[dict]]:
    import nilearn

    rows: dict[str, list[dict]] = {"train": [], "test": []}
    if out.exists():
        shutil.rmtree(out)
    for split in rows:
        (out / split).mkdir(parents=True)

    def add(split, label, source, index, image, region=None):
        name = f"{label}_{source}_{index if region is None else region}.png"
        image.save(out / split / name, optimize=True)
        demo = CLASSES[label]
        rows[split].append({"file_name": name, "label": label, "simple_caption": demo.simple_caption,
                            "modality": demo.modality, "source_file": SOURCES[source],
                            "slice": index if region is None else None})

    mni = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    colin = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
    if not colin.is_file():
        raise SystemExit(f"{colin} not found: apt-get install mricron-data")
    for label, index, image in mri_slices(mni, step=3):
        add("train", label, "mni152", index, image)
    for label, index, image in mri_slices(colin, step=8):
        add("test", label, "colin27", index, image)
    for split, index, image in ct_slices():
        add(split, "head-ct-axial", "invesalius", index, image)

    ihc = skimage_image("ihc.png")  # 512 x 512
    for split, x_range in (("train", (0, 384)), ("test", (384, 512))):
        for x, y, patch in tiles(ihc, tile=96, stride=48 if split == "train" else 32, x_range=x_range):
            add(split, "histology-ihc", "skimage-ihc", None, patch, region=f"x{x}y{y}")

    retina = skimage_image("retina.jpg")  # 1411 x 1411, a circular field on black
    field = retina.mean(axis=2) > 20
    for split, x_range in (("train", (0, 880)), ("test", (980, 1411))):
        for x, y, patch in tiles(retina, tile=256, stride=96 if split == "train" else 80, x_range=x_range, mask=field):
            add(split, "fundus", "skimage-retina", None, patch, region=f"x{x}y{y}")
    return rows


def describe(out: Path) -> None:
    """Descriptions by the offline fallback captioner (per-row modality templates)."""
    from medart_core.captioning import caption_dataset, plan_jobs
    from medart_core.fallback_captioner import FallbackCaptioner

    caption_dataset(FallbackCaptioner(), plan_jobs(out, modality=None), batch_size=32, overwrite=True)


def main() -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="assets/demo", help="output folder, replaced if it exists (default: assets/demo)")
    args = parser.parse_args()
    out = Path(args.out)
    rows = build(out)
    for split, split_rows in rows.items():
        write_jsonl_atomic(out / split / "metadata.jsonl", split_rows)
    describe(out)
    for split, split_rows in rows.items():
        counts = {}
        for row in split_rows:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
        print(split, len(split_rows), counts)


if __name__ == "__main__":
    main()
