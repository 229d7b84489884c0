"""Privacy and leakage as medical benchmarks measure them (issue 24): mirrored copies are copies,
per-prompt re-identification (`privacy`), and images, volumes or patients shared between splits
(`check-splits`), on real patches (scikit-image's retina and IHC images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from metrics_images import (
    one_thread,  # noqa: F401 (an autouse fixture)
    patches,
    real_dataset,
    write_imagefolder,
)
from PIL import ImageOps

from medart_core.__main__ import main
from medart_core.metrics.features import extract, mirrored, pixel_features
from medart_core.metrics.memorization import audit
from medart_core.metrics.sets import load_set


def pixels_of(folder, mirror: bool = False):
    module = pixel_features()
    return extract(load_set("s", folder, ()), {"p": mirrored(module) if mirror else module}, progress=False)["p"]


def test_a_mirrored_training_image_is_flagged_and_named_as_its_mirror(tmp_path):
    train = patches("ihc", 10)
    fake = [ImageOps.mirror(train[3]), patches("ihc", 1, first=20)[0]]
    train_dir = write_imagefolder(tmp_path / "train", [(p, "ihc") for p in train])
    fake_dir = write_imagefolder(tmp_path / "fake", [(p, "ihc") for p in fake], generated=True)
    tr, tr_mirrored, fk = pixels_of(train_dir), pixels_of(train_dir, mirror=True), pixels_of(fake_dir)
    unmirrored = audit(fk, tr, fk, tr, ["ihc"] * 2, threshold=0.95)
    assert unmirrored["n_flagged"] == 0  # the blind spot: unflipped pixels only
    result = audit(fk, tr, fk, tr, ["ihc"] * 2, threshold=0.95, train_pixels_mirrored=tr_mirrored,
                   train_features_mirrored=tr_mirrored)
    top = result["pairs"][0]
    assert result["n_flagged"] == 1 and result["n_flagged_mirrored"] == 1 and result["mirrors"]
    assert (top["fake"], top["train_pixel"], top["train_pixel_mirrored"], top["train_feature_mirrored"]) == (0, 3, True, True)
    assert top["pixel_similarity"] > 0.999
    assert not result["pairs"][1]["flagged"]


def test_evaluate_flags_a_mirrored_copy_and_says_so(tmp_path):
    real = real_dataset(tmp_path / "real", n_train=8, n_test=4)
    copy = ImageOps.mirror(patches("fundus", 8)[5])
    fake = write_imagefolder(tmp_path / "fake", [(copy, "fundus")] + [(p, "ihc") for p in patches("ihc", 3, first=30)],
                             generated=True)
    out = tmp_path / "report"
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--metrics", "memorization",
                 "--classifier-steps", "10", "--classifier-size", "32", "--no-progress", "--out", str(out)]) == 0
    memorization = json.loads((out / "report.json").read_text())["memorization"]
    assert memorization["n_flagged"] == 1
    flagged = memorization["flagged"][0]
    assert flagged["mirrored"] and flagged["train_path"].endswith("fundus_0005.png")
    assert memorization["closest_pairs"][0]["train_pixel_mirrored"]
    assert "(mirrored)" in (out / "report.md").read_text()
