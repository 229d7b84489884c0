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
    _corpus_module().copy_corpus(root, copy)
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
    assert {"flat-6000.png", "exif-patient.jpg", "text-chunk-patient.png", "burned-in-list.dcm", "burned-in-sequence.dcm",
            "recognizable-features.dcm", "file-name-folder", "file-name-fifo", "duplicate-file-name",
            "simple-caption-object", "slice-out-of-range", "metadata-bom-csv", "metadata-bom-jsonl", "modality-outside",
            "prompt-100k-unbroken.jsonl", "encrypted-member.zip", "unknown-compression.zip", "flat-bomb.zip",
            "text-over-limit", "text-invisible", "text-nul", "text-nul-inside"} <= names  # round two (issue 25)
    assert (root / "datasets" / "symlink-outside" / "link.png").is_symlink()
    assert sum(len(p.read_bytes()) for p in root.rglob("*") if p.is_file() and not p.is_symlink()) < 700_000


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
        described_later = [] if case["describe"] == "ok" or case["name"] == "duplicate-file-name" else ["bad.png"]
        assert [r.file_name for r in records] == ["good.png", *described_later], case["name"]  # escapes never do
        if case["expect"] != "ok":
            assert problems and all(case["expect"] in p for p in problems), (case["name"], problems)
        if case["name"] == "caption-100k":
            assert len(records[0].text) <= MAX_CAPTION_CHARS
        if case["name"] == "caption-empty" or described_later:
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
        if case["expect"] in ("not UTF-8", "not valid JSON") or case["describe"] != "ok":
            fragment = case["describe"] if case["describe"] != "ok" else case["expect"]
            assert code == 2 and fragment in err and "Traceback" not in err, (case["name"], err)
            assert "Hostile" not in err and "unbalanced" not in err  # a refused template file is never quoted
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


def test_store_import_skips_bad_images_and_loses_nothing(fresh, tmp_path):
    from medart_core.fallback_captioner import FallbackCaptioner
    from medart_core.store import ReviewStore, caption_describer, import_dataset

    root, cases = fresh
    describe = caption_describer(FallbackCaptioner(), modality="endoscopy")
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
                imported = import_dataset(store, root / case["path"], author="import", describe=describe)
            except MedArtError as err:
                assert case["expect"] in str(err), (case["name"], err)
            else:
                if case["describe"] != "ok":  # the app's import skips that row (a repeat: the second) and goes on
                    assert any(case["describe"] in s or case["expect"] in s for s in imported.skipped), \
                        (case["name"], imported.skipped)
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


# Round two (issue 25) -------------------------------------------------------------------------------

def test_a_huge_unbroken_prompt_is_cut_before_caption_cleaning_and_warns(corpus, tiny_model, caplog, monkeypatch):
    """100,000 characters without a space held the interpreter ~37 s in PixArt's caption cleaning
    (quadratic); the cleaning now sees at most MAX_PROMPT_CHARS, and a normal prompt is encoded as
    the stock pipeline encodes it."""
    import time

    import torch

    from medart_core.text_limits import MAX_PROMPT_CHARS

    root, _ = corpus
    prompt = json.loads((root / "prompts" / "prompt-100k-unbroken.jsonl").read_text())["text"]
    pipe, cleaned = tiny_model.pipe, []
    clean = pipe._clean_caption
    monkeypatch.setattr(pipe, "_clean_caption", lambda caption: cleaned.append(len(caption)) or clean(caption))
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    tiny_model.prompts([prompt])
    tiny_model.prompts.encode_trainable([prompt + "y"])  # training's path (T5 LoRA) too
    assert time.perf_counter() - started < 10  # generous: seconds, where it was ~37 s per call
    assert cleaned and max(cleaned) <= MAX_PROMPT_CHARS
    assert any("over the 4000-character limit" in r.getMessage() and "truncated" in r.getMessage()
               for r in caplog.records)
    normal = "An endoscopic image of a polyp: pink, round, <b>smooth</b> surface, http://x.org 3 mm."
    with torch.no_grad():
        stock, _, _, _ = pipe.encode_prompt(normal, do_classifier_free_guidance=False, clean_caption=True,
                                            max_sequence_length=120)
    ours = tiny_model.prompts([normal]).embeds
    assert (ours - stock).abs().max() < 1e-6, (ours - stock).abs().max()


def test_store_writes_refuse_long_invisible_and_control_text(corpus, tmp_path):
    """Every write through the store (save, flag reason, and the import's rows) is held to the
    import's 2,000 characters; invisible-only text and control characters are refused; nothing is
    written. Revisions and searches out of range get a limit, not an internal error."""
    from medart_core.store import ReviewStore, import_dataset

    root, cases = corpus
    with ReviewStore(tmp_path / "review.sqlite") as store:
        import_dataset(store, root / "datasets" / "caption-100k", author="import")
        key = "good.png"
        texts = [(c["text"], c["expect"]) for c in of_kind(cases, "text")] + [("x " * 5_000_000, "over the limit")]
        for text, expect in texts:
            for write in (lambda: store.save(key, text, revision=1, author="alice"),
                          lambda: store.flag(key, text, revision=1, author="alice")):
                with pytest.raises(MedArtError, match=expect):
                    write()
        assert store.get(key).revision == 1 and len(store.history(key)) == 1
        for revision in (2**70, -2**70, "1" * 5000):
            with pytest.raises(MedArtError, match="revision"):
                store.save(key, "A polyp", revision=revision, author="alice")
        with pytest.raises(MedArtError, match="over the limit"):
            store.entries(search="x" * 1_000_000)
        assert [e.key for e in store.entries(search="POLYP")] == [key]
        assert store.save(key, "A pink polyp", revision=1.0, author="alice").number == 2


def test_generation_refuses_nan_guidance_and_seeds_or_steps_out_of_range():
    from medart_core.generation import GenerationSettings, generate_images, plan_jobs

    max_seed = 2**32 - 1  # generation.MAX_SEED

    for settings, expect in ((GenerationSettings(guidance=float("nan")), "guidance"),
                             (GenerationSettings(guidance=float("inf")), "guidance"),
                             (GenerationSettings(steps=2**70), "steps")):
        with pytest.raises(MedArtError, match=expect):
            generate_images(None, ["x"], [0], settings)  # refused before the model is touched
    for seed in (2**70, -1, max_seed + 1):
        with pytest.raises(MedArtError, match="seed must be a whole number"):
            generate_images(None, ["x"], [seed], GenerationSettings())
    with pytest.raises(MedArtError, match="seed"):
        plan_jobs([{"text": "x"}], 2, max_seed)  # the second image's seed is over


def test_uploaded_and_exported_images_lose_their_metadata_and_the_report_names_it(corpus, tmp_path):
    """EXIF and PNG text chunks naming the patient were kept byte for byte in the uploads and the
    export. Now both are re-encoded from the pixels; the report names what went, never its value."""
    from medart_core.store import ReviewStore, export_dataset, import_dataset
    from medart_core.store.uploads import stage_uploads

    module = _corpus_module()
    root, _ = corpus
    names = ["exif-patient.jpg", "text-chunk-patient.png", "画像-ロ.png"]
    batch = stage_uploads([root / "files" / n for n in names], tmp_path / "up", split="train", label="x",
                          modality="endoscopy")
    staged = sorted((batch / "train").glob("*.png"))
    assert len(staged) == 3 and all(p.name.startswith("upload-") for p in staged)  # non-ASCII: extension kept
    assert any(p.name.endswith("-image.png") for p in staged)
    for path in batch.rglob("*"):
        assert not path.is_file() or module.PATIENT.encode() not in path.read_bytes(), path
    report = json.loads((batch / "deidentification-report.json").read_text())
    removed = {name for entry in report["images"] for name in entry["removed"]}
    assert {"EXIF Artist", "EXIF ImageDescription", "EXIF GPSLatitudeRef", "PNG text Patient",
            "PNG text Comment"} <= removed
    for path in staged:  # same pixels as the original
        original = next(n for n in names if Path(n).stem.split("-")[0] in path.name or "image" in path.name)
        if original.endswith(".png"):
            assert np.array_equal(np.asarray(load_rgb(path)), np.asarray(load_rgb(root / "files" / original)))

    data = tmp_path / "data"  # a data folder imported into an export (python -m medart_core export --import-data)
    data.mkdir()
    rows = []
    for name in names[:2]:
        shutil.copy(root / "files" / name, data / name)
        rows.append({"file_name": name, "text": "An endoscopic image of a polyp", "label": "polyp"})
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ReviewStore(tmp_path / "review.sqlite") as store:
        import_dataset(store, data, author="import")
        summary = export_dataset(store, tmp_path / "export", approved_only=False)
        assert summary.copied == 2
        assert export_dataset(store, tmp_path / "export", approved_only=False).copied == 0  # nothing to redo
    for path in (tmp_path / "export").rglob("*"):
        assert not path.is_file() or module.PATIENT.encode() not in path.read_bytes(), path
    exported = json.loads((tmp_path / "export" / "deidentification-report.json").read_text())
    assert {e["file_name"] for e in exported["images"]} == set(names[:2])
    assert "PNG text Patient" in next(e for e in exported["images"] if e["file_name"].endswith(".png"))["removed"]
    with Image.open(tmp_path / "export" / "exif-patient.jpg") as image:
        assert not image.getexif() and "exif" not in image.info
    assert (data / "exif-patient.jpg").read_bytes() == (root / "files" / "exif-patient.jpg").read_bytes()  # originals kept


def test_zips_skip_unreadable_members_and_bombs_by_name(corpus, tmp_path):
    from medart_core.store.uploads import stage_uploads

    root, cases = corpus
    for case in of_kind(cases, "zip"):
        problems: list[str] = []
        batch = stage_uploads([root / case["path"]], tmp_path / case["name"], split="train", label="x",
                              modality="endoscopy", problems=problems)
        assert len(list((batch / "train").glob("*.png"))) == 1, case["name"]  # the good member
        assert len(problems) == 1 and case["expect"] in problems[0], (case["name"], problems)
        assert ("bad.png" if "bomb" not in case["name"] else "flat-6000.png") in problems[0]


def test_an_upload_has_a_decoded_bytes_budget_and_is_described_a_few_images_at_a_time(tmp_path, monkeypatch):
    from medart_core.store import ReviewStore, import_dataset, transfer, uploads

    images = []
    for i in range(10):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((64, 64, 3), 20 * i, dtype=np.uint8)).save(images[-1])
    monkeypatch.setattr(uploads, "MAX_UPLOAD_DECODED_BYTES", 9 * 64 * 64 * 3, raising=False)
    problems: list[str] = []
    batch = uploads.stage_uploads(images, tmp_path / "up", split="train", label="x", modality="endoscopy",
                                  problems=problems)
    assert len(list((batch / "train").glob("*.png"))) == 9
    assert len(problems) == 1 and problems[0].startswith("9.png") and "once decoded" in problems[0]
    held = []

    def describe(records):
        held.append(len(records))
        return [("An endoscopic image of a polyp", "fallback", "")] * len(records)

    with ReviewStore(tmp_path / "review.sqlite") as store:
        assert import_dataset(store, batch, author="import", describe=describe).added == 9
    assert held == [transfer.DESCRIBE_CHUNK, 9 - transfer.DESCRIBE_CHUNK]


def test_a_template_file_error_does_not_quote_the_file(corpus):
    from medart_core.caption_templates import load_template

    root, _ = corpus
    with pytest.raises(MedArtError) as caught:
        load_template(str(root / "outside" / "secret.yaml"))
    assert "not valid YAML (line" in str(caught.value) and "Hostile" not in str(caught.value)
