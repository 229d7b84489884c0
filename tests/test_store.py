"""The review store keeps every revision, refuses stale changes, and exports what training reads.

Each behaviour runs on SQLite and on a real PostgreSQL server started by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medart_core.errors import MedArtError
from medart_core.store import ReviewStore, StaleRevisionError, caption_describer, export_dataset, import_dataset

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"


def make_dataset(root: Path, n_train: int = 6, n_test: int = 2, csv: bool = False) -> Path:
    """An imagefolder with train/ and test/ splits, two classes, a volume reference per image."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / split
        folder.mkdir(parents=True)
        rows = []
        for i in range(n):
            label = ("fundus", "histology")[i % 2]
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{label}-{i}.png")
            rows.append({"file_name": f"{label}-{i}.png", "text": f"A {label} image number {i}", "label": label,
                         "simple_caption": f"A {label} image", "source": "fallback", "rule": "",
                         "modality": "fundus" if label == "fundus" else "histopathology",
                         "source_file": f"volume-{split}", "slice": i})
        if csv:
            import csv as csv_module

            with open(folder / "metadata.csv", "w", newline="") as handle:
                writer = csv_module.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        else:
            (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        db = tmp_path / "review.sqlite"
    else:
        db = request.getfixturevalue("postgres_url")
    with ReviewStore(db) as opened:
        yield opened


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data")


def test_import_keeps_every_column_and_is_idempotent(store, dataset):
    summary = import_dataset(store, dataset, author="alice")
    assert summary.added == 8
    entry = store.get("train/histology-1.png")
    assert (entry.label, entry.simple_caption, entry.source, entry.status, entry.revision) == \
        ("histology", "A histology image", "fallback", "generated", 1)
    assert (entry.source_file, entry.slice, entry.extra) == ("volume-train", 1, {"modality": "histopathology"})
    assert len(entry.content_hash) == 64 and entry.path == dataset / "train" / "histology-1.png"
    store.save(entry.key, "A reviewed text", revision=1, author="bob")
    again = import_dataset(store, dataset, author="alice")
    assert (again.added, again.unchanged) == (0, 8)
    assert store.get(entry.key).text == "A reviewed text"  # a re-import never overwrites a review


def test_every_change_is_a_revision_with_author_and_status(store, dataset):
    import_dataset(store, dataset, author="importer")
    key = "train/fundus-0.png"
    edit = store.save(key, "  An edited\n description ", revision=1, author="alice")
    assert (edit.number, edit.text, edit.source, edit.status, edit.author) == \
        (2, "An edited description", "human", "edited", "alice")
    store.approve(key, revision=2, author="bob")
    store.flag(key, "wrong colour", revision=3, author="carol")
    store.revert(key, 1, revision=4, author="alice")
    history = store.history(key)
    assert [(r.number, r.action, r.status, r.author) for r in history] == [
        (1, "import", "generated", "importer"), (2, "edit", "edited", "alice"), (3, "approve", "approved", "bob"),
        (4, "flag", "flagged", "carol"), (5, "revert", "generated", "alice")]
    assert history[3].reason == "wrong colour"
    assert history[4].text == history[0].text and history[4].source == "fallback"
    assert store.get(key).revision == 5
    assert all(r.created_at.tzinfo is not None for r in history)


def test_stale_changes_are_refused_and_write_nothing(store, dataset):
    import_dataset(store, dataset, author="importer")
    key = "test/fundus-0.png"
    store.save(key, "Alice's text", revision=1, author="alice")
    for change in (lambda: store.save(key, "Bob's text", revision=1, author="bob"),
                   lambda: store.approve(key, revision=1, author="bob"),
                   lambda: store.flag(key, "blurred", revision=1, author="bob"),
                   lambda: store.revert(key, 1, revision=1, author="bob")):
        with pytest.raises(StaleRevisionError, match=r"changed after you opened revision 1 \(now revision 2, edit by alice"):
            change()
    assert [r.author for r in store.history(key)] == ["importer", "alice"]
    assert store.get(key).text == "Alice's text"
    with pytest.raises(MedArtError, match="has no revision 7"):
        store.save(key, "from the future", revision=7, author="bob")


def test_bad_changes_are_refused_with_the_reason(store, dataset):
    import_dataset(store, dataset, author="importer")
    with pytest.raises(MedArtError, match="empty"):
        store.save("train/fundus-0.png", "   ", revision=1, author="alice")
    with pytest.raises(MedArtError, match="say why"):
        store.flag("train/fundus-0.png", "", revision=1, author="alice")
    with pytest.raises(MedArtError, match="no image 'train/nope.png'"):
        store.approve("train/nope.png", revision=1, author="alice")
    with pytest.raises(MedArtError, match="author"):
        store.approve("train/fundus-0.png", revision=1, author=" ")
    assert store.get("train/fundus-0.png").revision == 1


def test_filters_counts_and_search(store, dataset):
    import_dataset(store, dataset, author="importer")
    store.approve("train/fundus-0.png", revision=1, author="alice")
    store.flag("train/fundus-2.png", "blurred", revision=1, author="alice")
    assert [e.key for e in store.entries(status="approved")] == ["train/fundus-0.png"]
    assert {e.label for e in store.entries(label="histology")} == {"histology"}
    assert [e.key for e in store.entries(search="IMAGE NUMBER 3")] == ["train/histology-3.png"]
    assert store.entries(search="100%_") == []  # LIKE wildcards in a search are literal
    counts = store.counts()
    assert (counts["total"], counts["approved"], counts["flagged"], counts["reviewed"]) == (8, 1, 1, 2)
    assert store.labels() == ["fundus", "histology"]


def test_changed_image_bytes_flag_the_description(store, dataset):
    import_dataset(store, dataset, author="importer")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(dataset / "train" / "fundus-0.png")
    summary = import_dataset(store, dataset, author="importer")
    assert summary.changed == 1
    entry = store.get("train/fundus-0.png")
    assert entry.status == "flagged" and "changed" in store.history(entry.key)[-1].reason


def test_images_without_text_need_a_captioner(store, tmp_path):
    from medart_core.fallback_captioner import FallbackCaptioner

    folder = tmp_path / "plain" / "fundus"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 90, 30)).save(folder / "a.png")
    with pytest.raises(MedArtError, match="have no description"):
        import_dataset(store, tmp_path / "plain", author="alice")
    import_dataset(store, tmp_path / "plain", author="alice",
                   describe=caption_describer(FallbackCaptioner(), modality="fundus"))
    entry = store.get("fundus/a.png")
    assert entry.source == "fallback" and entry.status == "generated" and "orange" in entry.text


def test_export_is_what_datasets_and_training_read(store, dataset, tmp_path):
    import datasets

    from medart_core.training_data import ImageCaptionDataset

    import_dataset(store, dataset, author="importer")
    store.save("train/fundus-0.png", "A clinician's description of the fundus", revision=1, author="alice")
    store.approve("train/fundus-0.png", revision=2, author="bob")
    store.approve("train/histology-1.png", revision=1, author="bob")
    store.approve("test/fundus-0.png", revision=1, author="bob")
    out = tmp_path / "export"
    summary = export_dataset(store, out)
    assert summary.rows == 3 and summary.copied == 3
    rows = [json.loads(line) for line in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert list(rows[0]) == ["file_name", "text", "label", "simple_caption", "source", "rule",
                             "source_file", "slice", "modality"]
    assert rows[0] == {"file_name": "fundus-0.png", "text": "A clinician's description of the fundus",
                       "label": "fundus", "simple_caption": "A fundus image", "source": "human", "rule": "",
                       "source_file": "volume-train", "slice": 0, "modality": "fundus"}
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out))
    assert loaded["train"].num_rows == 2 and loaded["test"].num_rows == 1
    assert "A clinician's description of the fundus" in loaded["train"]["text"]
    training = ImageCaptionDataset(out, resolution=16)
    assert sorted(training[i]["text"] for i in range(len(training)))[0] == "A clinician's description of the fundus"
    everything = export_dataset(store, tmp_path / "all", approved_only=False)
    assert everything.rows == 8


def test_export_never_leaves_a_metadata_csv_beside_it(store, tmp_path):
    data = make_dataset(tmp_path / "csvdata", csv=True)
    import_dataset(store, data, author="importer")
    assert store.get("train/fundus-0.png").slice == 0  # CSV text "0" becomes the number 0
    export_dataset(store, data, approved_only=False)  # into the data folder itself: nothing to copy
    assert not (data / "train" / "metadata.csv").exists()
    assert (data / "train" / "metadata.csv.orig").is_file() and (data / "train" / "metadata.jsonl").is_file()


def test_nothing_approved_is_a_clear_message(store, dataset, tmp_path):
    import_dataset(store, dataset, author="importer")
    with pytest.raises(MedArtError, match="no approved descriptions"):
        export_dataset(store, tmp_path / "out")


def test_schema_is_migrated_on_open_and_reopens(tmp_path):
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.config import Config

    from medart_core.store.database import MIGRATIONS

    db = tmp_path / "nested" / "review.sqlite"
    ReviewStore(db).close()
    with ReviewStore(db) as store:
        with store.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert current == ScriptDirectory.from_config(config).get_current_head()
    assert journal == "wal"


def test_bad_database_urls_are_refused(tmp_path):
    with pytest.raises(MedArtError, match="unsupported database"):
        ReviewStore("mysql://nobody@localhost/x")
    with pytest.raises(MedArtError, match="cannot open the review store"):
        ReviewStore("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_the_bundled_demo_imports(tmp_path):
    with ReviewStore(tmp_path / "r.sqlite") as store:
        assert import_dataset(store, DEMO, author="demo").added == 390
        counts = store.counts()
        assert counts["total"] == 390 and counts["generated"] == 390
        assert len(store.labels()) == 6


def test_export_command(tmp_path, dataset, capsys):
    from medart_core.__main__ import main

    db = tmp_path / "cli.sqlite"
    assert main(["export", "--db", str(db), "--import-data", str(dataset), "--out", str(tmp_path / "out")]) == 2
    assert "no approved descriptions" in capsys.readouterr().err
    with ReviewStore(db) as store:
        store.approve("train/fundus-0.png", revision=1, author="alice")
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    assert "1 descriptions exported" in capsys.readouterr().out
    assert len((tmp_path / "out" / "train" / "metadata.jsonl").read_text().splitlines()) == 1


def test_uploaded_images_and_zips_are_described_and_enter_the_store(store, tmp_path):
    import zipfile

    from medart_core.fallback_captioner import FallbackCaptioner
    from medart_core.store.uploads import stage_uploads

    Image.new("RGB", (24, 24), (200, 90, 30)).save(tmp_path / "eye.png")
    Image.new("RGB", (24, 24), (190, 80, 40)).save(tmp_path / "inner.png")
    with zipfile.ZipFile(tmp_path / "batch.zip", "w") as archive:
        archive.write(tmp_path / "inner.png", "../../escape/inner.png")  # a hostile path stays inside the batch
        archive.writestr("notes.txt", "not an image")
    batch = stage_uploads([tmp_path / "eye.png", tmp_path / "batch.zip"], tmp_path / "uploads", split="train",
                          label="fundus", modality="fundus")
    assert batch.parent == tmp_path / "uploads" and not (tmp_path / "escape").exists()
    summary = import_dataset(store, batch, author="alice", describe=caption_describer(FallbackCaptioner()))
    assert summary.added == 2
    entries = store.entries(label="fundus")
    assert all(e.key.startswith("train/upload-") and e.source == "fallback" and e.status == "generated" for e in entries)
    assert all(e.extra == {"modality": "fundus"} for e in entries)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MedArtError, match="cannot read image"):
        stage_uploads([tmp_path / "bad.png"], tmp_path / "uploads", split="train", label="x", modality="fundus")
    with pytest.raises(MedArtError, match="give the new images a label"):
        stage_uploads([tmp_path / "eye.png"], tmp_path / "uploads", split="train", label=" ", modality="fundus")
