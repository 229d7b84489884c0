"""The bundled demo dataset and demo model: loadable, honestly split, and fast enough for the app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "assets" / "demo"
DEMO_MODEL = REPO / "assets" / "demo_model"


def rows(split):
    return [json.loads(line) for line in (DEMO_DATA / split / "metadata.jsonl").read_text().splitlines()]


def test_demo_dataset_loads_as_an_imagefolder_with_two_splits():
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(DEMO_DATA))
    assert set(dataset) == {"train", "test"}
    assert len(dataset["train"]) >= 200 and len(dataset["test"]) >= 60
    assert set(dataset["train"]["label"]) == set(dataset["test"]["label"])
    first = dataset["train"][0]
    assert first["image"].size == (64, 64) and first["text"].startswith(first["simple_caption"])
    assert {r["source"] for r in rows("train") + rows("test")} == {"fallback"}


def test_demo_splits_share_no_volume_slice_or_image_region():
    train, test = rows("train"), rows("test")
    assert not {r["file_name"] for r in train} & {r["file_name"] for r in test}
    for label in ("brain-mri-axial", "brain-mri-coronal", "brain-mri-sagittal"):
        sources = [{r["source_file"] for r in split if r["label"] == label} for split in (train, test)]
        assert sources[0] and sources[1] and not sources[0] & sources[1]  # different volumes
    ct = [sorted(r["slice"] for r in split if r["label"] == "head-ct-axial") for split in (train, test)]
    gaps = [min(abs(a - b) for a in ct[0]) for b in ct[1]]
    assert min(gaps) >= 3  # no test CT slice is a neighbour of a train slice


def test_demo_model_generates_an_image_in_seconds_on_cpu():
    from medart_core.generation import GenerationSettings, generate_images
    from medart_core.pipeline import Precision, load_pipeline

    model = load_pipeline(DEMO_MODEL, precision=Precision.choose("cpu"))
    images = generate_images(model, ["A fundus photograph patch of the retina"], [0], GenerationSettings(steps=20))
    pixels = np.asarray(images[0], dtype=np.float32)
    assert images[0].size == (64, 64) and pixels.std() > 5
    assert pixels[..., 0].mean() > pixels[..., 2].mean()  # a fundus is red/orange, not blue


def test_demo_trainer_writes_a_loadable_pipeline_with_its_card_and_log(tmp_path):
    """train_demo_model.py end to end at a few steps: the folder it writes is what the app loads."""
    from finetune.train_demo_model import CARD_GUIDANCE, main
    from medart_core.model_card import sampling_defaults
    from medart_core.pipeline import Precision, load_pipeline

    out = tmp_path / "demo_model"
    main(["--data", str(DEMO_DATA), "--out", str(out), "--vae-steps", "2", "--steps", "2", "--batch-size", "4"])
    assert sampling_defaults(out).guidance == CARD_GUIDANCE
    config = json.loads((out / "train_config.json").read_text())
    assert config["images"] == len(rows("train")) and "--steps 2" in config["command"]
    stages = {json.loads(line)["stage"] for line in (out / "training_log.jsonl").read_text().splitlines()}
    assert stages == {"vae", "transformer"}
    model = load_pipeline(out, precision=Precision.choose("cpu"))
    assert model.pipe.transformer.config.in_channels == model.pipe.vae.config.latent_channels
