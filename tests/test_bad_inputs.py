"""Hostile and broken input (tests/data/make_bad_inputs.py) through every entry point: each case
gets one clear MedArtError message (or is handled, when valid but odd), is skipped or refused,
the run goes on, and nothing saved before is lost. Entry points are called in-process."""

from __future__ import annotations

import importlib.util
import json
import re
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medart_core.__main__ import main
from medart_core.data import MAX_CAPTION_CHARS, load_rgb, scan_imagefolder
from medart_core.errors import MedArtError
from medart_core.medical_io import is_medical_file

SCRIPT = Path(__file__).resolve().parent / "data" / "make_bad_inputs.py"


def _corpus_module():
    spec = importlib.util.spec_from_file_location("make_bad_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cases = _corpus_module().make_bad_inputs(root)
    return root, cases


@pytest.fixture
def fresh(corpus, tmp_path):
    """A private copy of the corpus (entry points write metadata into data folders)."""
    root, cases = corpus
    copy = tmp_path / "bad"
    shutil.copytree(root, copy, symlinks=True)
    return copy, cases


def of_kind(cases, kind, medical=None):
    return [c for c in cases if c["kind"] == kind and (medical is None or is_medical_file(c["name"]) == medical)]


def test_the_corpus_has_every_required_case(corpus):
    root, cases = corpus
    assert len(cases) >= 20
    names = {c["name"] for c in cases}
    assert {"zero-byte.png", "truncated.png", "truncated.jpg", "text-renamed.png", "decompression-bomb.png", "cmyk.jpg",
            "gray16.png", "palette-transparency.png", "no-pixel-data.dcm", "truncated.dcm", "volume-4d.nii.gz",
            "metadata-latin1-csv", "caption-100k", "caption-empty", "dotdot-file-name", "symlink-outside"} <= names
    assert (root / "datasets" / "symlink-outside" / "link.png").is_symlink()
    assert sum(len(p.read_bytes()) for p in root.rglob("*") if p.is_file() and not p.is_symlink()) < 500_000


def test_image_loading_answers_each_file_with_one_clear_error(corpus):
    root, cases = corpus
    for case in of_kind(cases, "file"):
        path = root / case["path"]
        if is_medical_file(path):
            with pytest.raises(MedArtError, match="convert it into de-identified PNG slices first"):
                load_rgb(path)
        elif case["expect"] == "ok":
            image = load_rgb(path)
            assert image.mode == "RGB" and image.size == (32, 32), case["name"]
        else:
            with pytest.raises(MedArtError) as caught:
                load_rgb(path)
            assert case["expect"] in str(caught.value) and "\n" not in str(caught.value), case["name"]


def test_gray16_and_palette_transparency_are_converted_not_clipped(corpus):
    root, _ = corpus
    grey = np.asarray(load_rgb(root / "files" / "gray16.png"))
    assert grey.min() == 0 and grey.max() == 255
    palette = np.asarray(load_rgb(root / "files" / "palette-transparency.png"))
    assert (palette == 0).all(axis=-1).any()  # the transparent index composited on black


def test_convert_skips_each_broken_medical_file_and_keeps_going(fresh, tmp_path, caplog):
    root, cases = fresh
    medical = of_kind(cases, "file", medical=True)
    out = tmp_path / "converted"
    _corpus_module()._dicom(root / "files" / "good.dcm")  # a valid CT file beside the broken ones
    assert main(["convert", "--input", str(root / "files" / "good.dcm"), "--out", str(out), "--label", "ct"]) == 0
    before = (out / "metadata.jsonl").read_text()
    caplog.set_level(logging.WARNING)
    assert main(["convert", "--input", str(root / "files"), "--out", str(out), "--label", "ct"]) == 0
    for case in medical:
        messages = [r.getMessage() for r in caplog.records if case["name"] in r.getMessage()]
        assert len(messages) == 1 and case["expect"] in messages[0], (case["name"], messages)
    assert (out / "metadata.jsonl").read_text() == before  # the good file again: same row, nothing lost


def test_convert_of_only_broken_files_is_one_error_line(fresh, tmp_path, capsys):
    root, _ = fresh
    (root / "files" / "good.dcm").unlink(missing_ok=True)
    assert main(["convert", "--input", str(root / "files"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: none of the") and "Traceback" not in error[0]


def images_dataset(root: Path, cases, folder: Path) -> Path:
    """An imagefolder holding every image file case plus good images, with captions."""
    folder.mkdir(parents=True)
    rows = []
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(folder / f"good-{i}.png")
        rows.append({"file_name": f"good-{i}.png", "text": "An endoscopic image of a polyp", "label": "polyp"})
    for case in of_kind(cases, "file", medical=False):
        shutil.copy(root / case["path"], folder / case["name"])
        rows.append({"file_name": case["name"], "text": "An endoscopic image of a polyp", "label": "polyp"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_training_data_refuses_bad_images_by_name_before_training(corpus, tmp_path):
    from medart_core.training_data import ImageCaptionDataset

    root, cases = corpus
    files = of_kind(cases, "file", medical=False)
    bad = [c for c in files if c["expect"] != "ok"]
    good = [c for c in files if c["expect"] == "ok"]
    with pytest.raises(MedArtError) as refused:
        ImageCaptionDataset(images_dataset(root, files, tmp_path / "all"), resolution=16)
    message = str(refused.value)
    assert message.startswith(f"{len(bad)} training images cannot be read")
    for case in bad[:5]:  # the first five are named, each with its own reason
        assert case["name"] in message
        assert re.search(re.escape(case["expect"]), message)
    dataset = ImageCaptionDataset(images_dataset(root, good, tmp_path / "good"), resolution=16)
    assert len(dataset) == len(good) + 3  # with the three good images images_dataset adds
    assert all(dataset[i]["pixels"].shape == (3, 16, 16) for i in range(len(dataset)))


def test_scanning_and_training_answer_each_metadata_attack(fresh):
    from medart_core.training_data import ImageCaptionDataset

    root, cases = fresh
    for case in of_kind(cases, "dataset"):
        folder = root / case["path"]
        problems: list[str] = []
        if case["expect"] in ("not UTF-8", "not valid JSON"):
            with pytest.raises(MedArtError, match=case["expect"]):
                scan_imagefolder(folder, problems=problems)
            with pytest.raises(MedArtError, match=case["expect"]):
                ImageCaptionDataset(folder, resolution=16)
            continue
        records = scan_imagefolder(folder, problems=problems)
        assert [r.file_name for r in records] == ["good.png"], case["name"]  # escapes never become records
        if case["expect"] != "ok":
            assert problems and all(case["expect"] in p for p in problems), (case["name"], problems)
        if case["name"] == "caption-100k":
            assert len(records[0].text) <= MAX_CAPTION_CHARS
        if case["name"] == "caption-empty":
            with pytest.raises(MedArtError, match="no caption"):
                ImageCaptionDataset(folder, resolution=16)
        else:
            assert ImageCaptionDataset(folder, resolution=16)[0]["pixels"].shape == (3, 16, 16)


def test_caption_command_skips_unreadable_images_and_describes_the_rest(corpus, tmp_path, caplog):
    root, cases = corpus
    data = images_dataset(root, cases, tmp_path / "data")
    caplog.set_level(logging.WARNING)
    assert main(["caption", "--data", str(data), "--modality", "endoscopy", "--vlm", "fallback", "--overwrite"]) == 0
    rows = {r["file_name"]: r for r in map(json.loads, (data / "metadata.jsonl").read_text().splitlines())}
    for case in of_kind(cases, "file", medical=False):
        row = rows[case["name"]]  # every input row is kept
        if case["expect"] == "ok":
            assert row["text"].startswith("An endoscopic image of a polyp"), case["name"]
        else:
            assert row["text"] is None and row["rule"] == "unreadable", case["name"]
            assert any(case["expect"] in r.getMessage() for r in caplog.records), case["name"]
    assert all(rows[f"good-{i}.png"]["text"] for i in range(3))


def test_caption_command_answers_each_metadata_attack(fresh, capsys):
    root, cases = fresh
    for case in of_kind(cases, "dataset"):
        code = main(["caption", "--data", str(root / case["path"]), "--modality", "endoscopy", "--vlm", "fallback"])
        err = capsys.readouterr().err
        if case["expect"] in ("not UTF-8", "not valid JSON"):
            assert code == 2 and case["expect"] in err and "Traceback" not in err, case["name"]
        else:
            assert code == 0, (case["name"], err)
            rows = [json.loads(line) for line in (root / case["path"] / "metadata.jsonl").read_text().splitlines()]
            assert [r["file_name"] for r in rows] == ["good.png"] and rows[0]["text"], case["name"]


def test_caption_command_converts_dicom_folders_and_skips_broken_ones(fresh, tmp_path):
    root, cases = fresh
    _corpus_module()._dicom(root / "files" / "good.dcm")
    medical = tmp_path / "medical" / "ct"
    medical.mkdir(parents=True)
    for case in of_kind(cases, "file", medical=True):
        shutil.copy(root / case["path"], medical / case["name"])
    shutil.copy(root / "files" / "good.dcm", medical / "good.dcm")
    assert main(["caption", "--data", str(tmp_path / "medical"), "--modality", "ct", "--vlm", "fallback"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "medical-converted" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["label"] == "ct" and rows[0]["text"]


def test_generate_command_answers_each_prompt_file(corpus, tiny_pipeline_dir, tmp_path, capsys):
    root, cases = corpus
    for case in of_kind(cases, "prompts"):
        out = tmp_path / case["name"]
        code = main(["generate", "--model", str(tiny_pipeline_dir), "--prompts", str(root / case["path"]),
                     "--steps", "1", "--out", str(out)])
        err = capsys.readouterr().err
        if case["expect"] == "ok":
            assert code == 0 and len(list(out.glob("*.png"))) == 1, err
        else:
            assert code == 2 and case["expect"] in err and "Traceback" not in err, case["name"]


def test_evaluate_command_refuses_each_bad_image_with_its_name(corpus, tmp_path, capsys):
    root, cases = corpus
    fake = tmp_path / "fake"
    fake.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 80 * i, dtype=np.uint8)).save(fake / f"{i}.png")
    for case in of_kind(cases, "file", medical=False):
        real = tmp_path / "real" / case["name"].replace("/", "_")
        real.mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 100, dtype=np.uint8)).save(real / "good.png")
        shutil.copy(root / case["path"], real / case["name"])
        code = main(["evaluate", "--real", str(real), "--fake", str(fake), "--out", str(tmp_path / "report"),
                     "--metrics", "color", "--no-progress"])
        err = capsys.readouterr().err
        if case["expect"] == "ok":
            assert code == 0, (case["name"], err)
        else:
            assert code == 2 and case["expect"] in err and case["name"] in err and len(err.strip().splitlines()) == 1, \
                (case["name"], err)


def test_store_import_skips_bad_images_and_loses_nothing(corpus, tmp_path):
    from medart_core.store import ReviewStore, import_dataset

    root, cases = corpus
    data = images_dataset(root, cases, tmp_path / "data")
    bad = [c for c in of_kind(cases, "file", medical=False) if c["expect"] != "ok"]
    with ReviewStore(tmp_path / "review.sqlite") as store:
        summary = import_dataset(store, data, author="import")
        assert len(summary.skipped) == len(bad)
        assert all(any(c["expect"] in s for s in summary.skipped) for c in bad)
        keys = set(store.keys())
        assert all(load_rgb(e.path).mode == "RGB" for e in store.entries())  # browsing shows only readable images
        entry = store.get("good-0.png")
        store.save(entry.key, "A reviewed description", revision=entry.revision, author="alice")
        (data / "good-0.png").write_bytes(b"")  # the image breaks after it was reviewed
        for case in of_kind(cases, "dataset"):
            try:
                import_dataset(store, root / case["path"], author="import")
            except MedArtError as err:
                assert case["expect"] in str(err)
        summary = import_dataset(store, data, author="import")
        assert any("empty" in s for s in summary.skipped)
        assert store.get("good-0.png").text == "A reviewed description" and keys <= set(store.keys())


def test_uploads_skip_each_bad_file_and_keep_the_good_ones(corpus, tmp_path):
    from medart_core.store.uploads import stage_uploads

    root, cases = corpus
    files = of_kind(cases, "file")
    for case in files:
        path = root / case["path"]
        if case["expect"] == "ok":
            batch = stage_uploads([path], tmp_path / "up", split="train", label="x", modality="endoscopy")
            assert (batch / "train" / "metadata.jsonl").is_file()
        else:
            with pytest.raises(MedArtError, match="no usable images") as caught:
                stage_uploads([path], tmp_path / "up", split="train", label="x", modality="endoscopy")
            assert case["expect"] in str(caught.value), case["name"]
    problems: list[str] = []
    batch = stage_uploads([root / c["path"] for c in files], tmp_path / "all", split="test", label="x",
                          modality="endoscopy", problems=problems)
    rows = (batch / "test" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == sum(c["expect"] == "ok" for c in files) and len(problems) == len(files) - len(rows)
    assert all(p.parent == batch / "test" for p in batch.rglob("*.png"))  # shell characters stayed in one name


def test_uploaded_zips_cannot_escape_or_explode(tmp_path):
    from medart_core.store.uploads import stage_uploads

    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        image = tmp_path / "x.png"
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
        zipped.write(image, "../../escape.png")
        zipped.writestr("bomb.png", b"\0" * (20 * 1024**2))
    problems: list[str] = []
    batch = stage_uploads([archive], tmp_path / "up", split="train", label="x", modality="endoscopy", problems=problems)
    assert [p.parent for p in batch.rglob("*.png")] == [batch / "train"]
    assert not (tmp_path / "escape.png").exists() and len(problems) == 1 and "zip bomb" in problems[0]


def test_app_callbacks_show_no_stack_trace(caplog):
    import gradio as gr

    from medart_ui.shared import INTERNAL_ERROR, guard

    def broken():
        raise KeyError("/secret/path/review.sqlite")

    def refused():
        raise MedArtError("choose an image first")

    with pytest.raises(gr.Error) as caught:
        guard(broken)()
    assert str(caught.value.message) == INTERNAL_ERROR and "secret" not in str(caught.value.message)
    assert "Traceback" in caplog.text and "/secret/path" in caplog.text  # the details go to the server log only
    with pytest.raises(gr.Error, match="choose an image first"):
        guard(refused)()


def test_app_bounds_uploads_and_a_public_app_says_anyone_can_edit(corpus, tmp_path, monkeypatch):
    import app
    from medart_core.store.uploads import MAX_UPLOAD_BYTES
    from medart_ui.context import PUBLIC_NOTICE
    from medart_ui.options import sign_in

    for name in ("MEDART_AUTH", "MEDART_AUTH_FILE", "MEDART_ACCOUNTS", "MEDART_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    root, _ = corpus
    data = tmp_path / "data"
    shutil.copytree(root / "datasets" / "dotdot-file-name", data)
    args = app.parse_args(["--data", str(data), "--home", str(tmp_path / "home"), "--host", "0.0.0.0", "--no-auth"])
    opened = app.open_app(args)
    try:
        assert PUBLIC_NOTICE in opened.warnings
        assert any("skipped" in w and "outside the data folder" in w for w in opened.warnings)
        assert [e.key for e in opened.store.entries()] == ["good.png"]
        options = app.launch_options(opened, args)
        assert options["max_file_size"] == MAX_UPLOAD_BYTES and options["show_error"] is False
    finally:
        opened.store.close()
    with pytest.raises(MedArtError, match="--no-auth"):  # non-loopback without accounts is still refused
        sign_in(app.parse_args(["--host", "0.0.0.0"]))
