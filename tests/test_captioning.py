"""`python -m medart_core caption` on a tiny randomly-initialised LLaVA (real transformers classes,
processor built offline): batching, imagefolder output, CSV replacement, resume after an
interruption, sharding across two processes, and the message when no VLM can be loaded."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medart_core.__main__ import main
from medart_core.caption_templates import load_template
from medart_core.captioning import (
    CaptionRequest,
    caption_dataset,
    load_vlm,
    plan_jobs,
    progress_dir,
)
from medart_core.errors import MedArtError
from medart_core.fallback_captioner import FallbackCaptioner
from medart_core.scratch_vlm import save_tiny_llava

COLUMNS = ["file_name", "text", "label", "simple_caption", "source", "rule"]
CLASSES = {"polyps": (200, 80, 90), "normal-cecum": (230, 170, 120), "esophagitis": (160, 60, 40)}


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """A save_pretrained folder of a tiny random LLaVA and its processor."""
    return save_tiny_llava(tmp_path_factory.mktemp("vlm") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_vlm(tiny_vlm_dir):
    return load_vlm(str(tiny_vlm_dir), device="cpu", max_new_tokens=6)


def make_image(path, rgb, seed):
    noise = np.random.default_rng(seed).integers(-30, 30, size=(24, 28, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def class_folders(tmp_path):
    """Images in class sub-folders, no metadata: labels come from the folder names."""
    root = tmp_path / "kvasir"
    for k, (label, rgb) in enumerate(CLASSES.items()):
        for i in range(3):
            make_image(root / label / f"{i}.png", rgb, seed=10 * k + i)
    return root


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def caption_args(data, vlm, *extra):
    return ["caption", "--data", str(data), "--modality", "endoscopy", "--vlm", str(vlm),
            "--max-new-tokens", "6", "--max-retries", "1", "--device", "cpu", *extra]


def test_the_tiny_vlm_loads_through_the_auto_classes(tiny_vlm, tiny_vlm_dir):
    import torch

    assert type(tiny_vlm.model).__name__ == "LlavaForConditionalGeneration"
    assert type(tiny_vlm.processor).__name__ == "LlavaProcessor"
    assert tiny_vlm.model.dtype == torch.float32 and not tiny_vlm.model.training
    assert tiny_vlm.processor.tokenizer.padding_side == "left" and tiny_vlm.source == str(tiny_vlm_dir)


def test_one_batched_generate_matches_one_by_one(tiny_vlm, monkeypatch):
    template = load_template("endoscopy")
    image = Image.new("RGB", (30, 20), (200, 90, 90))
    requests = [CaptionRequest(image, template.simple_caption_for(label), label, template)
                for label in ["polyps", "dyed-lifted-polyps-with-a-long-name", "esophagitis"]]
    calls = []
    real_generate = tiny_vlm.model.generate

    def counting_generate(**inputs):
        calls.append(inputs["input_ids"])
        return real_generate(**inputs)

    monkeypatch.setattr(tiny_vlm.model, "generate", counting_generate)
    batched = tiny_vlm(requests)
    assert len(calls) == 1 and calls[0].shape[0] == 3
    pad = tiny_vlm.processor.tokenizer.pad_token_id
    assert (calls[0][0, 0] == pad) and (calls[0][:, -1] != pad).all()  # left padding: prompts end together
    one_by_one = [tiny_vlm([r])[0] for r in requests]
    assert len(calls) == 4 and batched == one_by_one and all(batched)


def test_caption_writes_an_imagefolder_dataset(tiny_vlm_dir, class_folders):
    assert main(caption_args(class_folders, tiny_vlm_dir, "--batch-size", "4")) == 0
    rows = read_rows(class_folders / "metadata.jsonl")
    assert len(rows) == 9 and all(list(r) == COLUMNS for r in rows)
    assert {r["label"] for r in rows} == set(CLASSES) and {r["source"] for r in rows} == {str(tiny_vlm_dir)}
    for row in rows:  # a random VLM never starts with the caption: retried, then repaired
        assert row["simple_caption"] == f"An endoscopic image of {row['label'].replace('-', ' ')}"
        assert row["text"].startswith(row["simple_caption"] + ".") and row["rule"] == "missing_simple_caption"
    assert not progress_dir(class_folders / "metadata.jsonl").exists()

    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(class_folders), split="train")
    assert len(dataset) == 9 and set(dataset.column_names) == {"image", *COLUMNS[1:]}


def test_split_folders_each_get_a_jsonl_and_a_csv_is_kept_as_orig(class_folders, tmp_path):
    root = tmp_path / "splits"
    for split in ("train", "test"):
        for label in CLASSES:
            make_image(root / split / f"{label}.png", CLASSES[label], seed=len(label))
    with open(root / "train" / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "patient"])
        writer.writerows([[f"{label}.png", label, f"p{i}"] for i, label in enumerate(CLASSES)])
    original = (root / "train" / "metadata.csv").read_text()
    (root / "test" / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"{label}.png", "text": f"An endoscopic image of a {label}", "patient": "p9"}) + "\n"
        for label in CLASSES))

    assert main(caption_args(root, "fallback")) == 0
    assert not (root / "train" / "metadata.csv").exists()
    assert (root / "train" / "metadata.csv.orig").read_text() == original
    train, test = read_rows(root / "train" / "metadata.jsonl"), read_rows(root / "test" / "metadata.jsonl")
    assert [r["patient"] for r in train] == ["p0", "p1", "p2"]  # other columns are kept
    assert [list(r)[:6] for r in train + test] == [COLUMNS] * 6 and {r["source"] for r in train + test} == {"fallback"}
    assert test[0]["simple_caption"] == "An endoscopic image of a polyps"  # a given simple text wins over the template
    assert test[0]["text"].startswith("An endoscopic image of a polyps, mostly")

    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(root))
    assert dataset["train"].num_rows == 3 and dataset["test"].num_rows == 3


def test_a_modality_column_picks_the_template_per_image(tmp_path):
    root = tmp_path / "mixed"
    make_image(root / "a.png", (200, 80, 90), 1)
    make_image(root / "b.png", (120, 120, 120), 2)
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "label": "melanoma", "modality": "dermoscopy"}) + "\n"
        + json.dumps({"file_name": "b.png", "label": "pneumonia"}) + "\n")
    jobs = plan_jobs(root, modality="chest-xray")
    assert [j.simple_caption for j in jobs] == ["A dermoscopic image of melanoma", "A chest X-ray of pneumonia"]
    with pytest.raises(MedArtError, match="no modality"):
        plan_jobs(root, modality=None)


class InterruptingCaptioner(FallbackCaptioner):
    """The fallback captioner, counting the images it describes; interrupts at a chosen call."""

    def __init__(self, interrupt_at=None):
        self.described, self.calls, self.interrupt_at = [], 0, interrupt_at

    def __call__(self, requests, attempt=0):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.described += [r.label for r in requests]
        return super().__call__(requests, attempt)


def test_an_interrupted_run_resumes_without_losing_or_duplicating_rows(class_folders, tmp_path):
    import shutil

    reference_root = tmp_path / "reference"
    shutil.copytree(class_folders, reference_root)
    caption_dataset(FallbackCaptioner(), plan_jobs(reference_root, modality="endoscopy"), batch_size=2, progress=False)
    reference = read_rows(reference_root / "metadata.jsonl")

    out = class_folders / "metadata.jsonl"
    jobs = plan_jobs(class_folders, modality="endoscopy")
    first = InterruptingCaptioner(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        caption_dataset(first, jobs, batch_size=2, progress=False)
    assert len(first.described) == 4 and not out.exists()
    log = progress_dir(out) / "rank-0.jsonl"
    with open(log, "a") as handle:  # a crash in the middle of writing a row
        handle.write('{"file_name": "polyps/2.png", "te')

    with pytest.raises(MedArtError, match="4 of the 9 images already have descriptions.*--resume"):
        caption_dataset(FallbackCaptioner(), jobs, batch_size=2, progress=False)
    second = InterruptingCaptioner()
    summary = caption_dataset(second, jobs, batch_size=2, resume=True, progress=False)
    assert len(second.described) == 5 and summary.skipped == 4  # nothing described twice
    assert read_rows(out) == reference and not progress_dir(out).exists()

    third = InterruptingCaptioner()  # a finished dataset resumed: nothing to do, same file
    caption_dataset(third, plan_jobs(class_folders, modality="endoscopy"), resume=True, progress=False)
    assert third.calls == 0 and read_rows(out) == reference


def test_without_a_vlm_one_clear_message_or_the_fallback_on_request(class_folders, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = caption_args(class_folders, "no-such-org/no-such-vlm")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load the VLM 'no-such-org/no-such-vlm'") and "--vlm fallback" in err
    assert len(err.strip().splitlines()) == 1 and not (class_folders / "metadata.jsonl").exists()

    assert main(args + ["--fallback-on-error"]) == 0
    assert {r["source"] for r in read_rows(class_folders / "metadata.jsonl")} == {"fallback"}


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--modality", "mammography"], "unknown modality"),
    (["--out", "x.jsonl", "--data", "nowhere"], "not found"),
])
def test_bad_arguments_give_one_clear_message(class_folders, capsys, extra, message):
    assert main(caption_args(class_folders, "fallback", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_two_processes_share_the_images_and_the_main_one_merges(class_folders):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "medart_core", *caption_args(class_folders, "fallback", "--batch-size", "2")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, [line for line in result.stderr.splitlines() if "error" in line.lower()][:3]
    rows = read_rows(class_folders / "metadata.jsonl")
    assert sorted(r["file_name"] for r in rows) == sorted(f"{c}/{i}.png" for c in CLASSES for i in range(3))
    assert result.stdout.count("metadata.jsonl") == 1  # only the main process reports
