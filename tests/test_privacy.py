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
    report = json.loads((out / "report.json").read_text())
    assert list(report)[:2] == ["inputs", "leakage"] and report["leakage"]["leaks"] is False
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Leakage") < markdown.index("## Memorisation audit")
    # The evaluation files name no absolute path of this machine: data folders by name, images within them.
    assert flagged["fake_path"] == "fake/fundus_0000.png" and flagged["train_path"] == "real/train/fundus_0005.png"
    for name in ("report.json", "report.md", "report.html"):
        assert str(tmp_path) not in (out / name).read_text()


def with_column(folder, column: str, values) -> None:
    """Set a metadata column of every row of folder/metadata.jsonl (values: one per row)."""
    path = folder / "metadata.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**row, column: value}) + "\n" for row, value in zip(rows, values)))


@pytest.fixture
def clean_splits(tmp_path):
    data = real_dataset(tmp_path / "data", n_train=8, n_test=4)
    with_column(data / "train", "source_file", [f"volume-{i // 4}" for i in range(16)])
    with_column(data / "test", "source_file", [f"volume-{10 + i // 4}" for i in range(8)])
    return data


def test_check_splits_passes_a_clean_split(clean_splits, tmp_path, capsys):
    out = tmp_path / "leakage.json"
    assert main(["check-splits", "--data", str(clean_splits), "--out", str(out), "--no-progress"]) == 0
    assert "no leakage between train (16) / test (8)" in capsys.readouterr().out
    found = json.loads(out.read_text())
    assert found["leaks"] is False and found["shared_images"] == [] and found["shared_source_file"] == []


def test_check_splits_finds_a_near_duplicate_a_mirror_and_a_split_volume(clean_splits, tmp_path, capsys):
    from metrics_images import blur, colour_shift

    train = patches("fundus", 8)
    # test/: a softened, tinted copy of a training image; a mirror image of another; one image of a
    # training volume (`source_file`) that is otherwise in train/.
    extra = write_imagefolder(tmp_path / "extra", [(colour_shift(blur(train[2], 0.8), (10, 5, 0)), "fundus"),
                                                    (ImageOps.mirror(train[6]), "fundus")])
    rows = [json.loads(line) for line in (clean_splits / "test" / "metadata.jsonl").read_text().splitlines()]
    for number, name in enumerate(("fundus_0000.png", "fundus_0001.png")):
        (clean_splits / "test" / f"leak_{number}.png").write_bytes((extra / name).read_bytes())
        rows.append({"file_name": f"leak_{number}.png", "text": "A fundus image", "label": "fundus",
                     "source_file": f"volume-{20 + number}"})
    rows[0]["source_file"] = "volume-1"
    (clean_splits / "test" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "leakage.json"
    assert main(["check-splits", "--data", str(clean_splits), "--out", str(out), "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "LEAKAGE" in printed and "volume-1: 4 in train, 1 in test" in printed
    found = json.loads(out.read_text())
    shared = {row["file_b"]: row for row in found["shared_images"]}
    assert set(shared) == {"test/leak_0.png", "test/leak_1.png"}
    assert (shared["test/leak_0.png"]["kind"], shared["test/leak_0.png"]["file_a"]) == ("near-duplicate", "train/fundus_0002.png")
    assert (shared["test/leak_1.png"]["kind"], shared["test/leak_1.png"]["file_a"]) == ("mirrored", "train/fundus_0006.png")
    assert found["shared_source_file"] == [{"value": "volume-1", "images": {"train": 4, "test": 1}}]
    assert str(tmp_path) not in out.read_text()


def test_check_splits_refuses_a_dataset_without_splits(tmp_path, capsys):
    flat = write_imagefolder(tmp_path / "flat", [(p, "ihc") for p in patches("ihc", 2)])
    assert main(["check-splits", "--data", str(flat)]) == 2
    assert "no split folders" in capsys.readouterr().err


@pytest.fixture(scope="module")
def privacy_data(tmp_path_factory):
    """train/ (8 fundus, 8 ihc patches: two prompts) and test/ (6 + 6 held-out patches)."""
    return real_dataset(tmp_path_factory.mktemp("privacy") / "data", n_train=8, n_test=6)


def privacy_args(data, out, *extra):
    return ["privacy", "--data", str(data), "--classifier-steps", "20", "--classifier-size", "32", "--no-progress",
            "--classifier", str(out.parent / "classifier"), "--out", str(out), *extra]


def test_privacy_fake_folder_holding_a_training_image_for_its_own_prompt_is_reidentified(privacy_data, tmp_path, capsys):
    train_fundus = patches("fundus", 8)
    # clean: new patches for both prompts; leaky: one fundus image is a training image's mirror
    clean = write_imagefolder(tmp_path / "clean", [(p, "fundus") for p in patches("fundus", 3, first=30)]
                              + [(p, "ihc") for p in patches("ihc", 3, first=30)], generated=True)
    leaky = write_imagefolder(tmp_path / "leaky", [(ImageOps.mirror(train_fundus[4]), "fundus")]
                              + [(p, "fundus") for p in patches("fundus", 2, first=30)]
                              + [(p, "ihc") for p in patches("ihc", 3, first=30)], generated=True)
    assert main(privacy_args(privacy_data, tmp_path / "clean-report", "--fake", str(clean))) == 0
    report = json.loads((tmp_path / "clean-report" / "report.json").read_text())
    assert report["n_prompts"] == 2 and report["n_generated"] == 6
    assert report["reidentified_fraction"] == 0.0
    assert main(privacy_args(privacy_data, tmp_path / "leaky-report", "--fake", str(leaky))) == 0
    assert "1 of 2 prompts re-identified" in capsys.readouterr().out
    report = json.loads((tmp_path / "leaky-report" / "report.json").read_text())
    assert report["reidentified_fraction"] == 0.5 and report["per_class"]["fundus"]["reidentified_fraction"] == 1.0
    assert report["per_class"]["ihc"]["reidentified_fraction"] == 0.0
    fundus = next(p for p in report["prompts"] if p["label"] == "fundus")
    own = fundus["pixel"]["own"]
    assert (own["generated"], own["train"], own["mirrored"]) == ("fundus_0000.png", "train/fundus_0004.png", True)
    assert own["similarity"] > 0.999 and fundus["pixel"]["reidentified"]
    near = report["nearest_similarity"]["pixel"]
    assert near["own"]["max"] > 0.999 and near["held_out"]["n"] == 12 and near["held_out"]["max"] < 0.95
    assert report["held_out_reference"]["feature"]["n"] == 12
    for name in ("worst_cases.png", "similarity_histograms.png", "report.md"):
        assert (tmp_path / "leaky-report" / name).stat().st_size > 500
    everything = (tmp_path / "leaky-report" / "report.json").read_text() + (tmp_path / "leaky-report" / "report.md").read_text()
    assert str(tmp_path) not in everything and "/tmp/" not in everything


def test_privacy_generates_n_images_per_training_prompt_on_the_tiny_model(privacy_data, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "report"
    assert main(privacy_args(privacy_data, out, "--model", str(tiny_pipeline_dir), "--n", "2", "--steps", "2",
                             "--seed", "5")) == 0
    rows = [json.loads(line) for line in (out / "generated" / "metadata.jsonl").read_text().splitlines()]
    assert [(r["text"], r["label"], r["seed"]) for r in rows] == [("A fundus image", "fundus", 5), ("A fundus image", "fundus", 6),
                                                                  ("A ihc image", "ihc", 7), ("A ihc image", "ihc", 8)]
    assert all(r["synthetic"] for r in rows)
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["generated"] and report["inputs"]["n_per_prompt"] == 2
    assert report["n_prompts"] == 2 and report["n_generated"] == 4 and 0 <= report["reidentified_fraction"] <= 1
    assert set(report["per_class"]) == {"fundus", "ihc"} and (out / "worst_cases.png").is_file()


def test_privacy_refuses_both_or_neither_source(privacy_data, tmp_path, capsys):
    assert main(["privacy", "--data", str(privacy_data), "--out", str(tmp_path / "o")]) == 2
    assert "give --model" in capsys.readouterr().err
