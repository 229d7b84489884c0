"""Domain classifier, conditional accuracy, downstream classification and the memorisation audit,
on real patches (scikit-image's retina and IHC images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from metrics_images import (
    colour_shift,
    one_thread,  # noqa: F401 (an autouse fixture)
    patches,
    real_dataset,
    write_imagefolder,
)

from medart_core.__main__ import main
from medart_core.errors import MedArtError
from medart_core.metrics.classifier import (
    ClassifierConfig,
    downstream_classification,
    load_or_train_domain_classifier,
)
from medart_core.metrics.features import extract, pixel_features
from medart_core.metrics.memorization import audit
from medart_core.metrics.sets import load_set, resolve_sets

FAST = ClassifierConfig(image_size=32, steps=60, batch_size=16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """real/{train,test} with fundus and ihc patches; fake/: 2 exact copies of training images,
    6 new patches, and 3 fundus patches labelled 'ihc' (a generator that ignores its prompt)."""
    root = tmp_path_factory.mktemp("eval")
    real = real_dataset(root / "real", n_train=16, n_test=12)
    train_fundus, train_ihc = patches("fundus", 16), patches("ihc", 16)
    new = [(p, "fundus") for p in patches("fundus", 3, first=28)] + [(p, "ihc") for p in patches("ihc", 3, first=28)]
    copies = [(train_fundus[2], "fundus"), (train_ihc[5], "ihc")]
    wrong = [(p, "ihc") for p in patches("fundus", 3, first=31)]
    fake = write_imagefolder(root / "fake", copies + new + wrong, generated=True)
    return root, real, fake


def test_domain_classifier_is_trained_saved_and_reused(dataset, tmp_path):
    _, real, _ = dataset
    train_set = load_set("training", real, ("train",))
    folder = tmp_path / "clf"
    first = load_or_train_domain_classifier(folder, train_set, FAST, progress=False)
    assert first.classes == ["fundus", "ihc"] and first.info["train_n"] == 32
    saved = json.loads((folder / "config.json").read_text())
    assert saved["architecture"] == "medart-small-cnn" and saved["config"]["image_size"] == 32
    weights_time = (folder / "model.safetensors").stat().st_mtime_ns
    again = load_or_train_domain_classifier(folder, None, ClassifierConfig(steps=1), progress=False)  # no retraining
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_time and again.config.image_size == 32
    test_set = load_set("real", real, ("test",))
    a = extract(test_set, {"f": first.features_module(), "l": first.logits_module()}, progress=False)
    b = extract(test_set, {"f": again.features_module()}, progress=False)
    np.testing.assert_allclose(a["f"], b["f"], rtol=1e-5, atol=1e-6)
    predicted = a["l"].argmax(1)
    expected = np.array([first.classes.index(label) for label in test_set.labels])
    assert (predicted == expected).mean() >= 0.9  # fundus vs IHC is an easy pair


def test_domain_classifier_needs_labelled_training_images(tmp_path):
    unlabelled = write_imagefolder(tmp_path / "train", [(p, "x") for p in patches("ihc", 4)])
    with pytest.raises(MedArtError, match="at least 2 classes"):
        load_or_train_domain_classifier(tmp_path / "clf", load_set("training", unlabelled, ()), FAST, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(MedArtError, match="not a Med-Art domain classifier"):
        load_or_train_domain_classifier(tmp_path / "bad", None, FAST, progress=False)


def test_downstream_classification_runs_all_three_settings(dataset):
    _, real, fake = dataset
    real_set, fake_set, train_set = resolve_sets(real, fake, None)
    result = downstream_classification(train_set, fake_set, real_set, FAST, seeds=[0, 1], progress=False)
    settings = result["settings"]
    assert list(settings) == ["real", "synthetic", "real+synthetic"]
    assert [settings[s]["runs"][0]["n_train"] for s in settings] == [32, 11, 43]
    assert [r["seed"] for r in settings["real"]["runs"]] == [0, 1]
    for row in settings.values():
        for run in row["runs"]:
            assert 0 <= run["accuracy"] <= 1 and 0 <= run["macro_f1"] <= 1 and run["n"] == 24
    assert settings["real"]["accuracy_mean"] >= 0.9


def test_duplicate_of_a_training_image_is_flagged_and_a_new_one_is_not(dataset):
    _, real, fake = dataset
    real_set, fake_set, train_set = resolve_sets(real, fake, None)
    pixels = pixel_features()
    f = {name: extract(s, {"p": pixels}, progress=False)["p"] for name, s in
         (("fake", fake_set), ("train", train_set), ("real", real_set))}
    result = audit(f["fake"], f["train"], f["fake"], f["train"], fake_set.labels, threshold=0.95, real_pixels=f["real"])
    flagged = {fake_set.records[p["fake"]].file_name for p in result["pairs"] if p["flagged"]}
    assert flagged == {"fundus_0000.png", "ihc_0001.png"}
    top = result["pairs"][0]
    assert top["pixel_similarity"] > 0.999 and train_set.records[top["train_pixel"]].label == fake_set.records[top["fake"]].label
    # New patches stay below the threshold, like held-out real images.
    assert result["pixel_similarity"]["p50"] < 0.95 and result["held_out_reference"]["pixel_similarity"]["max"] < 0.95
    assert result["per_class"]["ihc"]["n_flagged"] == 1


def test_colour_shifted_copy_is_still_found_as_nearest(tmp_path):
    train = patches("fundus", 10)
    fake = [colour_shift(train[4], (20, 10, 0))]
    pixels = pixel_features()
    tr = extract(load_set("t", write_imagefolder(tmp_path / "t", [(p, "f") for p in train]), ()), {"p": pixels}, progress=False)["p"]
    fk = extract(load_set("f", write_imagefolder(tmp_path / "f", [(p, "f") for p in fake]), ()), {"p": pixels}, progress=False)["p"]
    result = audit(fk, tr, fk, tr, ["f"], threshold=0.95)
    assert result["pairs"][0]["train_pixel"] == 4 and result["n_flagged"] == 1


def test_cli_writes_report_plots_and_flags_copies(dataset, tmp_path, capsys):
    _, real, fake = dataset
    out = tmp_path / "report"
    args = ["evaluate", "--real", str(real), "--fake", str(fake), "--metrics", "dfd,color,conditional,classify,memorization",
            "--classifier-steps", "60", "--classifier-size", "32", "--bootstrap", "20", "--kid-subsets", "10",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    assert "2 near-copies" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["real"]["split"] == "test" and report["inputs"]["training"]["n"] == 32
    assert report["dfd"]["fd"] > 0 and report["dfd"]["fd_ci95"][0] < report["dfd"]["fd_ci95"][1]
    assert set(report["dfd"]["per_class"]) == {"fundus", "ihc"}
    assert any("sampling noise" in w for w in report["warnings"])
    assert report["conditional"]["per_class"]["fundus"]["accuracy"] == 1.0
    assert report["conditional"]["per_class"]["ihc"]["accuracy"] == pytest.approx(4 / 7)  # 3 of its 7 are fundus patches
    assert report["conditional"]["confusion"]["ihc"] == {"fundus": 3, "ihc": 4}
    assert report["memorization"]["n_flagged"] == 2
    assert set(report["classification"]["settings"]) == {"real", "synthetic", "real+synthetic"}
    assert report["color"]["distance"]["distance"] >= 0
    for name in report["plots"].values():
        assert (out / name).stat().st_size > 1000
    assert {"color_histograms.png", "similarity_histograms.png", "nearest_neighbours.png",
            "class_samples.png"} <= set(report["plots"].values())
    markdown = (out / "report.md").read_text()
    assert "## Memorisation audit" in markdown and "2 of 11 generated images" in markdown
    # The saved classifier is reused by a second run: same domain features, same FD.
    again = tmp_path / "again"
    assert main([*args[:-1], str(again), "--metrics", "dfd", "--classifier", str(out / "classifier")]) == 0
    assert json.loads((again / "report.json").read_text())["dfd"]["fd"] == pytest.approx(report["dfd"]["fd"], rel=1e-6)


def test_cli_refuses_bad_input_with_one_line(dataset, tmp_path, capsys):
    _, real, fake = dataset
    assert main(["evaluate", "--real", str(tmp_path / "missing"), "--fake", str(fake), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--metrics", "fid,bogus", "--out", str(tmp_path / "o")]) == 2
    assert "unknown metrics ['bogus']" in capsys.readouterr().err
    assert main(["evaluate", "--real", str(real / "test"), "--fake", str(fake), "--metrics", "memorization",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no training images" in capsys.readouterr().err


def test_fid_and_kid_are_skipped_with_the_reason_when_inception_cannot_load(dataset, tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    _, real, fake = dataset
    out = tmp_path / "r"
    assert main(["evaluate", "--real", str(real), "--fake", str(fake), "--metrics", "fid,kid,color", "--no-progress",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "fid" not in report and "kid" not in report and "color" in report
    assert "could not be loaded" in report["skipped"]["fid"] and "not substituted" in report["skipped"]["kid"]
    assert "## Skipped" in (out / "report.md").read_text()
