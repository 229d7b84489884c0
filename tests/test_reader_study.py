"""The reader study (issue 18): scripted readers through the named endpoints give exactly the
figures their answers imply; the images a reader receives carry no trace of the truth and are
gone after the answer; refusals; one answer per trial under concurrency (SQLite and PostgreSQL);
a 0001 store upgrades on open; the report CLI; the statistics' edge cases (null, never NaN)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from conftest import TEAM
from medart_core.errors import MedArtError
from medart_core.store import ReviewStore, import_dataset
from medart_core.store.studies import Reader, Studies, StudyImage
from medart_core.study_stats import figures, study_results

READERS = {**TEAM, "dana": ("reader", "dancer")}  # carol and dana read; bob (reviewer) is not invited
DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"
PAYLOAD = {"trial", "position", "total", "image", "description", "done"}


@pytest.fixture(scope="module")
def study_app(tiny_pipeline_dir, tmp_path_factory):
    from medart_core.accounts import Account, hash_password, write_accounts_file
    from test_app import start

    accounts = tmp_path_factory.mktemp("study-accounts") / "accounts.txt"
    write_accounts_file(accounts, [Account(u, role, hash_password(pw)) for u, (role, pw) in READERS.items()])
    demo, opened = start(tiny_pipeline_dir, tmp_path_factory.mktemp("study-home"), "--auth-file", str(accounts))
    yield demo, opened
    demo.close()
    opened.store.close()


@pytest.fixture(scope="module")
def clients(study_app):
    from gradio_client import Client

    return {u: Client(study_app[0].local_url, auth=(u, pw), verbose=False) for u, (_, pw) in READERS.items()}


def truth_of(store, token: str) -> str:
    """The server's truth of a trial (what a reader must never learn)."""
    from sqlalchemy import select

    from medart_core.store.study_schema import study_images, study_trials

    with store.engine.connect() as conn:
        return conn.execute(select(study_images.c.kind).join(study_trials, study_trials.c.image_id == study_images.c.id)
                            .where(study_trials.c.token == token)).scalar_one()


def served_paths(store, token: str) -> list[Path]:
    from sqlalchemy import select

    from medart_core.store.study_schema import study_trials

    with store.engine.connect() as conn:
        row = conn.execute(select(study_trials.c.copy_path, study_trials.c.cache_path)
                           .where(study_trials.c.token == token)).one()
    return [Path(p) for p in row if p]


def png_chunks(path) -> list[str]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at + 4:at + 8].decode("latin-1"))
        at += 12 + length
    return chunks


@pytest.fixture(scope="module")
def played(study_app, clients):
    """A study of the demo data (2 real + 2 synthetic per class, generated now by the app's model)
    played to the end by carol (always right, confidence varying) and dana (always "real")."""
    from test_app import signed_in_http

    demo, opened = study_app
    made = clients["alice"].predict("turing", 2, 2, ["carol", "dana:radiologist"], 5, api_name="/create_study")
    served = []
    for reader in ("carol", "dana"):
        while True:
            payload = clients[reader].predict("turing", api_name="/next_trial")
            assert set(payload) == PAYLOAD
            if payload["done"]:
                break
            truth = truth_of(opened.store, payload["trial"])
            paths = served_paths(opened.store, payload["trial"])
            copy = next(p for p in paths if p.parent.parent == opened.study_copies)
            seen = {"payload": payload, "truth": truth, "paths": paths, "bytes": Path(payload["image"]).read_bytes()}
            if len(served) == 0:  # the served copy: its reader only, never cached; then gone after the answer
                mine, other = signed_in_http(demo.local_url, reader), signed_in_http(demo.local_url, "bob")
                for path in paths:
                    fetched = mine.get(f"gradio_api/file={path}")
                    assert fetched.status_code == 200 and fetched.headers["cache-control"] == "no-store"
                    assert other.get(f"gradio_api/file={path}").status_code == 403  # a reviewer neither
                    assert signed_in_http(demo.local_url, "alice").get(f"gradio_api/file={path}").status_code == 403
                seen["session"] = mine
            answer = truth if reader == "carol" else "real"
            confidence = 1 + payload["position"] % 5  # varies: a constant answer must still give AUC 0.5
            realism = 3 if truth == "real" else 2
            result = clients[reader].predict("turing", payload["trial"], answer, confidence, realism, "", None,
                                             api_name="/answer_trial")
            assert result["answered"] == payload["position"]
            seen["after"] = [p.exists() for p in paths] + [copy.exists()]
            if "session" in seen:
                seen["after_status"] = [seen["session"].get(f"gradio_api/file={p}").status_code for p in paths]
            served.append(seen | {"reader": reader})
    return made, served


def test_two_scripted_readers_give_exactly_their_figures(played, clients):
    made, served = played
    classes = 6  # the demo data's classes
    assert made == {"study": "turing", "trials": classes * 4}
    results = clients["alice"].predict("turing", api_name="/study_results")
    right, real = results["readers"]["carol"], results["readers"]["dana"]
    assert (right["n"], right["accuracy"], right["sensitivity"], right["specificity"], right["auc"]) == (24, 1, 1, 1, 1)
    assert right["auc_ci"] == [1, 1] and right["binomial_test"]["p_value"] < 1e-6
    assert (real["n"], real["accuracy"], real["sensitivity"], real["specificity"], real["auc"]) == (24, 0.5, 0, 1, 0.5)
    assert real["expert_level"] == "radiologist" and real["blind"] and real["binomial_test"]["p_value"] == 1
    pooled = results["pooled"]
    assert (pooled["n"], pooled["accuracy"], pooled["sensitivity"], pooled["specificity"]) == (48, 0.75, 0.5, 1)
    assert results["agreement"]["kappa"] == 0 and results["agreement"]["items"] == 24  # dana's constant answer
    assert set(results["per_class"]) == {"brain-mri-axial", "brain-mri-coronal", "brain-mri-sagittal", "fundus",
                                         "head-ct-axial", "histology-ihc"}
    assert all(c["accuracy"] == 0.75 and c["accuracy_by_reader"] == {"carol": 1, "dana": 0.5}
               for c in results["per_class"].values())
    realism = results["realism"]
    assert (realism["real_mean"], realism["synthetic_mean"]) == (3, 2) and realism["p_value"] < 1e-6
    json.dumps(results, allow_nan=False)  # null with a reason, never NaN


def test_each_reader_has_their_own_reproducible_order(played, study_app):
    from medart_core.store.studies import reader_order

    _, served = played
    orders = {r: [s["truth"] for s in served if s["reader"] == r] for r in ("carol", "dana")}
    assert orders["carol"] != orders["dana"]  # different orders (24 images: equal by chance ~1e-6)
    assert reader_order(5, "turing", "carol", 24) == reader_order(5, "turing", "carol", 24) != reader_order(
        5, "turing", "dana", 24)


def test_a_served_image_carries_no_trace_of_the_truth_and_is_gone_after_its_answer(played, study_app):
    from PIL import Image

    _, opened = study_app
    _, served = played
    words = re.compile(r"real|synth|fake|true|label|seed|brain|fundus|histology|head|" + "|".join(
        opened.store.labels()), re.I)
    formats = set()
    for seen in served:
        payload = seen["payload"]
        assert not any(words.search(str(payload[k])) for k in ("trial", "image"))  # ids, names, URLs are neutral
        assert re.fullmatch(r"[0-9a-f]{16}", payload["trial"]) and re.fullmatch(r"[0-9a-f]{16}\.png",
                                                                                Path(payload["image"]).name)
        assert payload["description"] is None  # the study did not ask for a match
        assert set(png_chunks(payload["image"])) == {"IHDR", "IDAT", "IEND"}  # no tEXt/iTXt/zTXt, eXIf, iCCP
        with Image.open(payload["image"]) as image:
            formats.add((image.format, image.mode, image.size, seen["truth"]))
            assert not image.info  # nothing read back but pixels
            top = image.convert("RGB").crop((0, 0, image.width, max(1, image.height // 12)))
            assert top.getcolors(1_000_000) != [(top.width * top.height, (200, 0, 0))]  # no SYNTHETIC band
        assert seen["after"] == [False] * len(seen["after"])  # the copy and gradio's cached copy are deleted
        if "after_status" in seen:
            assert all(status in (403, 404) for status in seen["after_status"])
    assert {f[:3] for f in formats} == {("PNG", "RGB", (64, 64))}  # real and synthetic alike
    assert {f[3] for f in formats} == {"real", "synthetic"}


def test_stored_synthetic_files_keep_their_marking(played, study_app):
    from sqlalchemy import select

    from medart_core.store.study_schema import study_images
    from medart_core.synthetic import is_marked_synthetic

    _, opened = study_app
    with opened.store.engine.connect() as conn:
        paths = conn.execute(select(study_images.c.path).where(study_images.c.kind == "synthetic")).scalars().all()
    assert len(paths) == 12 and all(is_marked_synthetic(p) for p in paths)


def test_refusals_are_clear_and_change_nothing(played, clients, study_app):
    _, opened = study_app
    _, served = played
    before = len(Studies(opened.store).answers("turing"))
    token = served[0]["payload"]["trial"]
    cases = [("bob", ("turing", token, "real", 3, 3), "not invited"),
             ("carol", ("turing", token, "real", 3, 3), "answered already"),
             ("carol", ("turing", "0123456789abcdef", "real", 3, 3), "no trial"),
             ("carol", ("turing", token, "maybe", 3, 3), "answer 'real' or 'synthetic'"),
             ("carol", ("turing", token, "real", 6, 3), "confidence must be 1 to 5"),
             ("carol", ("turing", token, "real", 3, 0), "realism must be 1 to 5"),
             ("carol", ("nonexistent", token, "real", 3, 3), "no study named")]
    for user, arguments, message in cases:
        with pytest.raises(Exception, match=message):
            clients[user].predict(*arguments, api_name="/answer_trial")
    with pytest.raises(Exception, match="not invited"):
        clients["bob"].predict("turing", api_name="/next_trial")
    with pytest.raises(Exception, match="may not use"):
        clients["carol"].predict("turing", api_name="/study_results")
    assert len(Studies(opened.store).answers("turing")) == before


def test_the_report_command_writes_every_export(played, study_app, tmp_path):
    import csv

    from medart_core.__main__ import main

    _, opened = study_app
    assert main(["study", "report", "--db", opened.store.url, "--study", "turing", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=pytest.fail)  # NaN would fail
    assert summary["readers"]["carol"]["accuracy"] == 1 and summary["study"] == "turing"
    answers = list(csv.DictReader((tmp_path / "answers.csv").open()))
    assert len(answers) == 48 and {a["truth"] for a in answers} == {"real", "synthetic"}
    assert all(re.fullmatch(r"[0-9a-f]{16}", a["trial"]) for a in answers)
    ratings = list(csv.DictReader((tmp_path / "ratings.csv").open()))
    assert list(ratings[0]) == ["image_path", "rating", "modality", "expert_level", "prompt"]
    assert len(ratings) == 24 and {r["expert_level"] for r in ratings} == {"", "radiologist"}
    assert all(Path(r["image_path"]).is_file() and r["prompt"] for r in ratings)
    for plot in ("roc.png", "per_class.png"):
        assert (tmp_path / plot).stat().st_size > 5000
    assert main(["study", "report", "--db", opened.store.url, "--study", "nope", "--out", str(tmp_path)]) == 2


def test_closing_deletes_the_copies_and_ends_the_study(study_app, clients):
    _, opened = study_app
    clients["alice"].predict("closing", 1, 1, ["carol"], 0, ["fundus"], None, False, api_name="/create_study")
    payload = clients["carol"].predict("closing", api_name="/next_trial")
    paths = served_paths(opened.store, payload["trial"])
    assert paths and all(p.exists() for p in paths)
    assert Studies(opened.store).close("closing") == 1
    assert not any(p.exists() for p in paths) and not opened.reader_files("carol") & set(paths)
    with pytest.raises(Exception, match="closed"):
        clients["carol"].predict("closing", api_name="/next_trial")


def test_create_study_refuses_bad_requests_before_generating(clients):
    admin = clients["alice"]
    with pytest.raises(Exception, match="has 12 real image"):  # the demo's smallest test class holds 12
        admin.predict("big", 13, 1, ["carol"], 0, ["brain-mri-axial"], None, False, api_name="/create_study")
    with pytest.raises(Exception, match="no account named 'zoe'"):
        admin.predict("big", 1, 1, ["zoe"], 0, None, None, False, api_name="/create_study")
    with pytest.raises(Exception, match="no class 'x-ray'"):
        admin.predict("big", 1, 1, ["carol"], 0, ["x-ray"], None, False, api_name="/create_study")
    with pytest.raises(Exception, match="turing.*exists already"):
        admin.predict("turing", 1, 1, ["carol"], 0, None, None, False, api_name="/create_study")


# The store: its own tables, on SQLite and PostgreSQL -----------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    return request.getfixturevalue("postgres_url")


def little_study(store, tmp_path, ask_match=False, readers=("carol",)) -> None:
    import_dataset(store, DEMO, author="import")
    real = [StudyImage("real", e.label, e.text, e.path, image_key=e.key) for e in store.entries(label="fundus")[:2]]
    Studies(store).create("s", seed=0, classes=["fundus"], ask_match=ask_match, size=64,
                          readers=[Reader(r, None, "reader") for r in readers], images=real, author="alice")


def test_a_store_made_before_the_study_upgrades_on_open(db):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from medart_core.store.database import MIGRATIONS, WRITE, create_store_engine

    engine = create_store_engine(db)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect().execution_options(**WRITE) as connection, connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")  # the store as today's code leaves it
    assert "studies" not in inspect(engine).get_table_names()
    engine.dispose()
    with ReviewStore(db) as store:
        assert {"studies", "study_readers", "study_images", "study_trials", "study_answers"} <= set(
            inspect(store.engine).get_table_names())
        assert Studies(store).names() == []


def test_one_answer_per_trial_also_from_two_tabs_at_once(db, tmp_path):
    with ReviewStore(db) as store:
        little_study(store, tmp_path)
        studies = Studies(store)
        trial = studies.next_trial("s", "carol")
        outcomes, start = [], threading.Barrier(4)

        def tab(answer):
            start.wait()
            try:
                studies.answer("s", "carol", trial.token, answer, 3, 3)
                outcomes.append(answer)
            except MedArtError as err:
                outcomes.append(str(err))
        threads = [threading.Thread(target=tab, args=(a,)) for a in ("real", "synthetic", "real", "synthetic")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        accepted = [o for o in outcomes if o in ("real", "synthetic")]
        assert len(accepted) == 1 and sum("answered already" in o for o in outcomes) == 3, outcomes
        assert [a["answer"] for a in studies.answers("s")] == accepted


def test_a_match_question_shows_the_description_and_needs_an_answer(tmp_path):
    with ReviewStore(tmp_path / "store.sqlite") as store:
        little_study(store, tmp_path, ask_match=True)
        studies = Studies(store)
        trial = studies.next_trial("s", "carol")
        assert trial.description and trial.description in {e.text for e in store.entries(label="fundus")}
        with pytest.raises(MedArtError, match="matches"):
            studies.answer("s", "carol", trial.token, "real", 3, 3)
        studies.answer("s", "carol", trial.token, "real", 3, 3, matches=False)
        assert studies.answers("s")[0]["matches"] is False


# Statistics: edge cases ---------------------------------------------------------------------------

def rows(truths: str, answers: str, confidences=None) -> list[dict]:
    kinds = {"r": "real", "s": "synthetic"}
    confidences = confidences or [3] * len(truths)
    return [{"kind": kinds[t], "answer": kinds[a], "confidence": c, "realism": 3, "seconds": 1.0, "reader": "x",
             "label": "c", "image": i} for i, (t, a, c) in enumerate(zip(truths, answers, confidences))]


def test_a_constant_answer_has_auc_one_half_whatever_the_confidence():
    result = figures(rows("rrss", "ssss", [5, 1, 1, 5]))
    assert (result["auc"], result["auc_ci"], result["sensitivity"], result["specificity"]) == (0.5, [0.5, 0.5], 1, 0)


def test_unequal_counts_test_balanced_accuracy():
    result = figures(rows("rrrrrrss", "rrrrrrrs"))  # accuracy 7/8, balanced (1 + 0.5) / 2
    assert result["balanced_accuracy"] == 0.75
    assert result["binomial_test"]["tested"] == "balanced accuracy" and result["binomial_test"]["k"] == 6


def test_undefined_figures_are_null_with_a_reason():
    result = study_results(rows("rr", "rs"), [{"user": "x", "expert_level": None, "role": "reader", "blind": True},
                                              {"user": "y", "expert_level": None, "role": "admin", "blind": False}])
    x = result["readers"]["x"]
    assert x["auc"] is None and "both real and synthetic" in x["auc_reason"]
    assert x["sensitivity"] is None and x["sensitivity_reason"]
    assert result["readers"]["y"]["accuracy"] is None and "not_blind_reason" in result["readers"]["y"]
    assert result["realism"]["p_value"] is None and result["realism"]["p_value_reason"]
    assert result["agreement"]["kappa"] is None
    json.dumps(result, allow_nan=False)


def test_synthetic_images_can_come_from_a_generate_folder_and_must_be_marked(tiny_pipeline_dir, tmp_path):
    import shutil

    from medart_core.__main__ import main
    from medart_core.reader_study import create_study
    from medart_core.synthetic import is_marked_synthetic

    generated = tmp_path / "gen"
    assert main(["generate", "--model", str(tiny_pipeline_dir), "--prompt", "A colour fundus photograph",
                 "--label", "fundus", "--n", "2", "--steps", "2", "--out", str(generated)]) == 0
    with ReviewStore(tmp_path / "store.sqlite") as store:
        import_dataset(store, DEMO, author="import")
        readers = [Reader("carol", None, "reader"), Reader("bob", "radiologist", "reviewer")]
        made = create_study(store, "from folder", 2, 2, readers, 0, home=tmp_path / "home", author="alice",
                            classes=["fundus"], synthetic_dir=generated)
        assert made == {"study": "from folder", "trials": 4}
        assert [r["blind"] for r in Studies(store).readers("from folder")] == [False, True]  # bob, carol
        kept = sorted((tmp_path / "home" / "studies").rglob("*.png"))
        assert len(kept) == 2 and all(is_marked_synthetic(p) for p in kept)
        unmarked = tmp_path / "unmarked"
        shutil.copytree(DEMO / "test", unmarked)  # real images passed as synthetic by mistake
        with pytest.raises(MedArtError, match="no SYNTHETIC text chunk"):
            create_study(store, "wrong folder", 1, 1, readers, 0, home=tmp_path / "home", author="alice",
                         classes=["fundus"], synthetic_dir=unmarked)
        with pytest.raises(MedArtError, match="has 2 synthetic image"):
            create_study(store, "too few", 1, 3, readers, 0, home=tmp_path / "home", author="alice",
                         classes=["fundus"], synthetic_dir=generated)
        assert Studies(store).names() == ["from folder"]
        assert len(list((tmp_path / "home" / "studies").iterdir())) == 1  # a refused study leaves no files


def test_a_copy_made_for_a_trial_answered_meanwhile_is_deleted_not_served(tmp_path):
    """Two tabs: one shows the trial while the other answers it; the late copy must not stay servable."""
    from medart_core.reader_study import blinded_copy

    with ReviewStore(tmp_path / "store.sqlite") as store:
        little_study(store, tmp_path)
        studies = Studies(store)
        trial = studies.next_trial("s", "carol")
        studies.answer("s", "carol", trial.token, "real", 3, 3)
        late = blinded_copy(trial.source, trial.size, tmp_path / "copies" / f"{trial.copy_name}.png")
        assert studies.record_copies(trial.token, late, None) is False
        assert not late.exists() and studies.served_files("carol") == set()
