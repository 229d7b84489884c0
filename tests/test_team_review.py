"""Team review in the store (issue 17): N approvals of the current text, assignments and queues,
independent double reading with adjudication, bulk find and replace, guidelines, the dashboard's
figures, and the schema migration from the initial store. On SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text

from medart_core.errors import MedArtError
from medart_core.store import ReviewStore, StaleRevisionError, export_dataset, import_dataset
from medart_core.store import team
from medart_core.review_stats import review_stats, token_f1
from test_store import make_dataset


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "review.sqlite")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(db, tmp_path):
    with ReviewStore(db, approvals_required=2) as opened:
        import_dataset(opened, make_dataset(tmp_path / "data"), author="import")
        yield opened


def first(store, prefix="train/"):
    return sorted(k for k in store.keys() if k.startswith(prefix))[0]


def test_approved_needs_n_distinct_reviewers_of_the_current_text(store, tmp_path):
    key = first(store)
    start = store.get(key).revision
    assert store.approve(key, revision=start, author="alice").status == "partly-approved"
    with pytest.raises(MedArtError, match="already approved"):
        store.approve(key, revision=start, author="alice")
    assert store.entries(status="partly-approved")[0].key == key
    # Bob read the same revision as Alice: her approval in between is no conflict.
    assert store.approve(key, revision=start, author="bob").status == "approved"
    assert store.approvals(key) == ["alice", "bob"]
    export_dataset(store, tmp_path / "out")
    assert key.split("/")[1] in (tmp_path / "out" / "train" / "metadata.jsonl").read_text()
    # An edit starts the count again, and an approval of the old text is refused.
    entry = store.get(key)
    store.save(key, "A fundus image, edited after approval", revision=entry.revision, author="carol")
    assert store.approvals(key) == []
    with pytest.raises(StaleRevisionError, match="changed after you opened"):
        store.approve(key, revision=entry.revision, author="dave")
    assert store.get(key).status == "edited"
    with pytest.raises(MedArtError, match="no approved descriptions"):
        export_dataset(store, tmp_path / "out")
    # The writer of the current text may be one of the N.
    now = store.get(key).revision
    store.approve(key, revision=now, author="carol")
    assert store.approve(key, revision=now, author="alice").status == "approved"


def test_a_flag_starts_the_count_again(store):
    key = first(store)
    store.approve(key, revision=store.get(key).revision, author="alice")
    store.flag(key, "check laterality", revision=store.get(key).revision, author="bob")
    assert store.approve(key, revision=store.get(key).revision, author="bob").status == "partly-approved"


def test_a_changed_rule_rerates_approved_descriptions_and_is_kept_in_the_store(db, tmp_path):
    with ReviewStore(db) as one:
        import_dataset(one, make_dataset(tmp_path / "data"), author="import")
        key = first(one)
        assert one.approve(key, revision=1, author="alice").status == "approved"
    with ReviewStore(db, approvals_required=2) as two:
        assert two.get(key).status == "partly-approved"
    with ReviewStore(db) as later:  # the export command opens it without the option: the team's rule holds
        assert later.approvals_required == 2 and later.get(key).status == "partly-approved"
    with pytest.raises(MedArtError, match="1 or more"):
        ReviewStore(db, approvals_required=0)


INITIAL_ROWS = [  # as the initial schema (0001) wrote them: one image approved, one edited then flagged
    ("train/a.png", 2, "approved", [("import", "fallback", "generated", "An A"), ("approve", "fallback", "approved", "An A")]),
    ("train/b.png", 3, "flagged", [("import", "fallback", "generated", "A B"), ("edit", "human", "edited", "A b, edited"),
                                   ("flag", "human", "flagged", "A b, edited")]),
]


def make_initial_store(db: str) -> None:
    """A store exactly as the code before team review left it: migrated to 0001, rows written."""
    from alembic import command
    from alembic.config import Config

    from medart_core.store.database import MIGRATIONS, create_store_engine

    engine = create_store_engine(db)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        for number, (key, current, status, history) in enumerate(INITIAL_ROWS, start=1):
            connection.execute(text(
                "INSERT INTO images (id, key, split, file_name, path, content_hash, extra, current_revision, status, "
                "text, source, rule, updated_at) VALUES (:id, :key, 'train', :name, '/nowhere', 'x', '{}', :current, "
                ":status, :text, :source, '', CURRENT_TIMESTAMP)"),
                {"id": number, "key": key, "name": key[6:], "current": current, "status": status,
                 "text": history[-1][3], "source": history[-1][1]})
            for n, (action, source, rev_status, body) in enumerate(history, start=1):
                connection.execute(text(
                    "INSERT INTO revisions (image_id, number, action, text, source, rule, author, status, reason, "
                    "created_at) VALUES (:id, :n, :action, :text, :source, '', 'someone', :status, '', CURRENT_TIMESTAMP)"),
                    {"id": number, "n": n, "action": action, "text": body, "source": source, "status": rev_status})
    engine.dispose()


def test_a_store_made_by_the_initial_schema_upgrades_on_open(db):
    make_initial_store(db)
    with ReviewStore(db) as store:
        a, b = store.get("train/a.png"), store.get("train/b.png")
        assert (a.status, a.text_revision, b.status, b.text_revision) == ("approved", 1, "flagged", 2)
        assert store.approvals("train/a.png") == ["someone"]
        # Approving the flagged image on the revision before its flag: the text is the same, so it counts.
        assert store.approve("train/b.png", revision=2, author="alice").status == "approved"
        team.set_guidelines(store, "# Guidelines", author="alice")
    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"  # 0003 follows 0002
    engine.dispose()


def test_the_migrations_form_one_chain():
    from alembic.script import ScriptDirectory
    from alembic.config import Config

    from medart_core.store.database import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert len(scripts.get_heads()) == 1, scripts.get_heads()
    assert [s.revision for s in scripts.walk_revisions()][-2:] == ["0002", "0001"]


def test_assignments_queues_and_progress(store):
    keys = sorted(store.keys())
    assert team.assign(store, keys, ["alice", "bob", "carol"], mode="round-robin", per_image=2, by="admin") == 16
    queues = {r: team.queue(store, r) for r in ("alice", "bob", "carol")}
    assert sorted(len(q) for q in queues.values()) == [5, 5, 6]  # 8 images x 2 readers, shared evenly
    assert all(sum(k in q for q in queues.values()) == 2 for k in keys)  # two different reviewers each
    assert team.assign(store, keys, ["alice", "bob", "carol"], mode="round-robin", per_image=2, by="admin") == 0
    key = queues["alice"][0]
    store.approve(key, revision=store.get(key).revision, author="alice")
    assert key not in team.queue(store, "alice")
    assert team.progress(store)["alice"]["done"] == 1
    fundus = [e.key for e in store.entries(label="fundus")]
    assert team.assign(store, fundus, ["dave"], mode="by-label", by="admin") == len(fundus)
    with pytest.raises(MedArtError, match="reviewers per image"):
        team.assign(store, keys, ["alice"], mode="round-robin", per_image=2, by="admin")


def test_independent_versions_stay_outside_until_adjudicated(store, tmp_path):
    key = first(store)
    team.assign(store, [key], ["alice", "bob"], independent=True, by="admin")
    draft = store.get(key)
    with pytest.raises(MedArtError, match="not assigned"):
        team.submit_version(store, key, "Carol's text", revision=draft.revision, author="carol")
    a = team.submit_version(store, key, draft.text, revision=draft.revision, author="alice")
    b = team.submit_version(store, key, "A fundus image with a pale disc", revision=draft.revision, author="bob")
    assert (a.decision, b.decision) == ("accept", "edit")
    with pytest.raises(MedArtError, match="being read independently"):  # the draft stays as the readers found it
        store.save(key, "An edit meanwhile", revision=draft.revision, author="carol")
    with pytest.raises(MedArtError, match="being read independently"):
        store.approve(key, revision=draft.revision, author="carol")
    assert not team.preview_replace(store, [key], "image", "photo")
    with pytest.raises(MedArtError, match="already submitted"):
        team.submit_version(store, key, "again", revision=draft.revision, author="bob")
    assert team.queue(store, "alice") == [] and team.queue(store, "bob") == []
    # Not in the history, search, get or export.
    assert [r.text for r in store.history(key)] == [draft.text] and store.get(key).text == draft.text
    assert not store.entries(search="pale disc")
    export_dataset(store, tmp_path / "out", approved_only=False)
    assert "pale disc" not in (tmp_path / "out" / "train" / "metadata.jsonl").read_text()
    assert team.awaiting_adjudication(store) == [key]
    settled = team.adjudicate(store, key, b.text, revision=draft.revision, author="admin")
    assert (settled.action, settled.author, store.get(key).text) == ("adjudicate", "admin", b.text)
    assert team.awaiting_adjudication(store) == []
    kept = team.all_versions(store)
    assert [(v.author, v.adjudicated_revision) for v in kept] == [("alice", settled.number), ("bob", settled.number)]
    assert store.approve(key, revision=settled.number, author="carol").status == "partly-approved"
    with pytest.raises(MedArtError, match="no longer being read independently"):
        team.submit_version(store, key, "late", revision=settled.number, author="alice")


def test_bulk_replace_previews_applies_as_revisions_and_is_refused_whole_when_stale(store):
    keys = [e.key for e in store.entries(label="fundus")]
    changes = team.preview_replace(store, keys, "fundus image", "fundus photograph")
    assert changes and all("fundus photograph" in c.after and c.before != c.after for c in changes)
    stale = changes[0]
    store.save(stale.key, "Someone else's text about a fundus image", revision=stale.revision, author="bob")
    before = {k: store.get(k).revision for k in keys}
    with pytest.raises(StaleRevisionError):
        team.apply_replace(store, [(c.key, c.revision) for c in changes], "fundus image", "fundus photograph",
                           author="alice")
    assert {k: store.get(k).revision for k in keys} == before  # nothing written
    changes = team.preview_replace(store, keys, "fundus image", "fundus photograph")
    written = team.apply_replace(store, [(c.key, c.revision) for c in changes], "fundus image", "fundus photograph",
                                 author="alice")
    assert len(written) == len(changes) and all(r.action == "replace" and r.author == "alice" for r in written)
    key = changes[0].key
    store.revert(key, changes[0].revision, revision=store.get(key).revision, author="alice")  # Undo
    assert store.get(key).text == changes[0].before


def test_guidelines_keep_every_version(store):
    assert team.current_guidelines(store) is None
    team.set_guidelines(store, "# Guidelines\n\n- name the view\n  - axial, coronal", author="alice")
    team.set_guidelines(store, "# Guidelines v2", author="bob")
    history = team.guidelines_history(store)
    assert [(g.author, g.text.splitlines()[0]) for g in history] == [("bob", "# Guidelines v2"), ("alice", "# Guidelines")]
    assert "\n  - axial" in history[1].text  # Markdown keeps its lines
    with pytest.raises(MedArtError, match="control character"):
        team.set_guidelines(store, "bad\x00", author="alice")


def test_review_stats_measure_drafts_agreement_and_words(store):
    keys = sorted(store.keys())
    for key in keys[:4]:  # two approvals each; the first two edited first
        entry = store.get(key)
        if key in keys[:2]:
            store.save(key, entry.text.replace("image", "photograph") + " with drusen", revision=entry.revision,
                       author="alice")
        store.approve(key, revision=store.get(key).revision, author="alice")
        store.approve(key, revision=store.get(key).revision, author="bob")
    store.flag(keys[5], "blurred", revision=store.get(keys[5]).revision, author="bob")
    double = keys[6:8]
    team.assign(store, double, ["alice", "bob"], independent=True, by="admin")
    for key in double:
        draft = store.get(key)
        team.submit_version(store, key, draft.text, revision=draft.revision, author="alice")
        team.submit_version(store, key, draft.text + " edited", revision=draft.revision, author="bob")
    stats = review_stats(store)
    assert set(stats) == {"reviewers", "agreement", "draft_edits", "words"}
    assert set(stats["reviewers"]) == {"alice", "bob"}
    assert stats["reviewers"]["bob"] == {**stats["reviewers"]["bob"], "done": 7, "approved": 4, "flagged": 1, "edited": 2}
    assert stats["reviewers"]["alice"]["median_seconds_per_image"] is not None
    assert stats["draft_edits"]["images"] == 4 and stats["draft_edits"]["unchanged"] == 2
    assert set(stats["draft_edits"]["by_label"]) <= {"fundus", "histology"}
    assert stats["draft_edits"]["by_source"]["fallback"]["images"] == 4
    assert dict(map(tuple, stats["words"]["removed"])) == {"image": 2}
    assert dict(map(tuple, stats["words"]["added"])) == {"photograph": 2, "drusen": 2}
    agreement = stats["agreement"]
    assert (agreement["images"], agreement["method"], agreement["decisions"]) == (2, "cohen", {"accept": 2, "edit": 2})
    assert agreement["kappa"] == 0.0  # alice always accepts, bob always edits: no agreement beyond chance
    assert 0 < agreement["version_edit_distance"] < 0.5 and 0.8 < agreement["version_token_f1"] < 1
    json.dumps(stats)  # JSON as it stands


def test_token_f1_counts_words_as_a_multiset():
    assert token_f1("A pale disc", "disc, pale; a") == 1.0
    assert token_f1("pale disc", "red disc") == 0.5
