"""Concurrent editors lose no accepted edit and hear about every conflict; a killed export leaves
the previous export intact. On SQLite (8 threads, 2 processes) and PostgreSQL (8 threads, 2 processes).
Reviewers approving and editing at once under "2 approvals required" never make an image approved
with fewer than 2 approvals of its current text (threads on SQLite, processes on PostgreSQL).

Run as a script, this file is one editor process (see `edit_in_process`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from medart_core.store import ReviewStore, StaleRevisionError, export_dataset, import_dataset

N_DESCRIPTIONS = 50
PASSES = 2


def edit_all(store: ReviewStore, keys: list[str], editor: str, start: threading.Barrier | None = None) -> list[dict]:
    """Open each description and save a new text made on the revision read; record the outcome.
    Every editor walks the keys in the same order, so they collide on the same description."""
    outcomes = []
    if start is not None:
        start.wait()
    for round_ in range(PASSES):
        for key in keys:
            seen = store.get(key).revision
            time.sleep(0.001)  # reading takes a moment: others may save meanwhile
            text = f"{editor} round {round_} edits {key}"
            try:
                saved = store.save(key, text, revision=seen, author=editor)
                outcomes.append({"key": key, "seen": seen, "text": text, "editor": editor, "saved": saved.number})
            except StaleRevisionError as err:
                assert err.seen == seen and err.current.number > seen
                outcomes.append({"key": key, "seen": seen, "text": text, "editor": editor, "conflict": str(err)})
    return outcomes


def edit_with_threads(db: str, keys: list[str], editors: list[str], walk=None, **store_options) -> list[dict]:
    """One store (one engine, one connection pool) shared by a thread per editor, as in the app;
    each thread runs `walk` (default edit_all) over the keys."""
    results, errors = {}, []
    start = threading.Barrier(len(editors))
    walk = walk or edit_all
    with ReviewStore(db, **store_options) as store:
        def work(editor):
            try:
                results[editor] = walk(store, keys, editor, start)
            except BaseException as err:  # an unexpected error must fail the test, not vanish in a thread
                errors.append(f"{editor}: {type(err).__name__}: {err}")
        threads = [threading.Thread(target=work, args=(e,)) for e in editors]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    return [o for e in editors for o in results[e]]


def edit_in_processes(db: str, keys: list[str], processes: int, threads: int, mode: str = "edit") -> list[dict]:
    """`processes` editor (or, mode "review", reviewer) processes of `threads` threads each, started together."""
    go = time.time() + 2.0  # every process starts editing at this moment, after its imports
    commands = [[sys.executable, __file__, db, json.dumps(keys), str(p), str(threads), str(go), mode]
                for p in range(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in commands]
    outcomes = []
    for proc in running:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outcomes += json.loads(out)
    return outcomes


def check_no_lost_edit(store: ReviewStore, keys: list[str], outcomes: list[dict], initial: dict[str, str]) -> dict:
    """Every accepted save is in the history with its text and author, in the revision it was
    given; every other attempt was reported as a conflict and left no trace."""
    attempts = len(keys) * PASSES
    assert len(outcomes) == attempts * len({o["editor"] for o in outcomes})
    accepted = [o for o in outcomes if "saved" in o]
    conflicts = [o for o in outcomes if "conflict" in o]
    assert len(accepted) + len(conflicts) == len(outcomes)
    assert len({(o["key"], o["saved"]) for o in accepted}) == len(accepted), "two saves got the same revision"
    assert all(o["saved"] == o["seen"] + 1 for o in accepted)
    per_key = Counter(o["key"] for o in accepted)
    stored_texts = set()
    for key in keys:
        history = store.history(key)
        assert [r.number for r in history] == list(range(1, len(history) + 1))
        assert len(history) == 1 + per_key[key], f"{key}: {len(history) - 1} revisions for {per_key[key]} accepted saves"
        assert history[0].text == initial[key]
        by_number = {r.number: r for r in history}
        for o in (o for o in accepted if o["key"] == key):
            assert (by_number[o["saved"]].text, by_number[o["saved"]].author) == (o["text"], o["editor"])
        last = max((o for o in accepted if o["key"] == key), key=lambda o: o["saved"], default=None)
        assert store.get(key).text == (last["text"] if last else initial[key])
        stored_texts |= {r.text for r in history}
    assert not stored_texts & {o["text"] for o in conflicts}, "a refused save was written"
    assert conflicts, "the editors never collided: the test did not exercise conflicts"
    return {"attempts": len(outcomes), "accepted": len(accepted), "conflicts": len(conflicts)}


def store_kind(db: str) -> str:
    return "postgresql" if db.startswith("postgresql") else "sqlite"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "review.sqlite")
    return request.getfixturevalue("postgres_url")


def _fifty_descriptions(db: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    from test_store import make_dataset

    data = make_dataset(tmp_path / "data", n_train=N_DESCRIPTIONS, n_test=0)
    with ReviewStore(db) as store:
        import_dataset(store, data, author="importer")
        entries = store.entries()
    assert len(entries) == N_DESCRIPTIONS
    return [e.key for e in entries], {e.key: e.text for e in entries}


def check_store_after_edits(db, keys, outcomes, initial) -> dict:
    """No accepted edit lost (check_no_lost_edit) and, on SQLite, an intact database file."""
    with ReviewStore(db) as store:
        figures = check_no_lost_edit(store, keys, outcomes, initial)
        if db.endswith(".sqlite"):
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    return figures


@pytest.mark.slow
def test_eight_threads_lose_no_accepted_edit(db, tmp_path, record_property):
    keys, initial = _fifty_descriptions(db, tmp_path)
    started = time.perf_counter()
    outcomes = edit_with_threads(db, keys, [f"editor-{i}" for i in range(8)])
    elapsed = time.perf_counter() - started
    figures = check_store_after_edits(db, keys, outcomes, initial)
    record_property("concurrency", {**figures, "seconds": round(elapsed, 2)})
    print(f"\n8 threads on {store_kind(db)}: {figures} in {elapsed:.1f}s")


@pytest.mark.slow
def test_two_processes_lose_no_accepted_edit(db, tmp_path, record_property):
    keys, initial = _fifty_descriptions(db, tmp_path)
    started = time.perf_counter()
    outcomes = edit_in_processes(db, keys, processes=2, threads=4)
    elapsed = time.perf_counter() - started
    assert {o["editor"].split("/")[0] for o in outcomes} == {"process-0", "process-1"}
    figures = check_store_after_edits(db, keys, outcomes, initial)
    record_property("concurrency", {**figures, "seconds": round(elapsed, 2)})
    print(f"\n2 processes x 4 threads on {store_kind(db)}: {figures} in {elapsed:.1f}s")


KILLER = """
import json, os, signal, sys
import medart_core.store.transfer as transfer
from medart_core.store import ReviewStore, export_dataset

db, out, where = sys.argv[1], sys.argv[2], sys.argv[3]
if where == "mid-file":  # die while the first split's metadata.jsonl (test/) is half written
    real_dumps, count = json.dumps, [0]
    def dumps(*args, **kwargs):
        count[0] += 1
        if count[0] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_dumps(*args, **kwargs)
    json.dumps = dumps
else:  # die after the first split's file was replaced, before the second
    real_write, calls = transfer.write_metadata_jsonl, [0]
    def write(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(*args, **kwargs)
    transfer.write_metadata_jsonl = write
export_dataset(ReviewStore(db), out, approved_only=False)
"""


@pytest.mark.parametrize("where", ["mid-file", "between-files"])
def test_a_killed_export_leaves_the_previous_export_intact(tmp_path, where):
    import datasets

    from test_store import make_dataset

    db = str(tmp_path / "review.sqlite")
    data = make_dataset(tmp_path / "data", n_train=40, n_test=10)
    out = tmp_path / "export"
    with ReviewStore(db) as store:
        import_dataset(store, data, author="importer")
        export_dataset(store, out, approved_only=False)
        before = {split: (out / split / "metadata.jsonl").read_bytes() for split in ("train", "test")}
        for entry in store.entries():
            store.save(entry.key, f"Second text of {entry.key}", revision=entry.revision, author="alice")
    result = subprocess.run([sys.executable, "-c", KILLER, db, str(out), where], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -9, result.stderr[-2000:]
    after = {split: (out / split / "metadata.jsonl").read_bytes() for split in ("train", "test")}
    assert after["train"] == before["train"]
    if where == "mid-file":
        assert after["test"] == before["test"]
    else:  # test/ (written first) was replaced whole: every row has the new text
        assert all(json.loads(line)["text"].startswith("Second text") for line in after["test"].splitlines())
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out))
    assert loaded["train"].num_rows == 40 and loaded["test"].num_rows == 10
    export_dataset(ReviewStore(db), out, approved_only=False)  # the next export cleans up and completes
    assert not list(out.rglob("*.tmp"))
    assert all(json.loads(line)["text"].startswith("Second text")
               for line in (out / "train" / "metadata.jsonl").read_text().splitlines())


# Team review (issue 17): approvals required = 2, reviewers approving and editing the same images at once.

APPROVALS = 2
REVIEWED = 20


def review_all(store: ReviewStore, keys: list[str], reviewer: str, start: threading.Barrier | None = None) -> list[dict]:
    """Walk the keys approving what was read, editing one in three (a different one per reviewer);
    record each outcome. Approvals of an older revision with the same text must be accepted."""
    from medart_core.errors import MedArtError

    outcomes, salt = [], sum(map(ord, reviewer))
    if start is not None:
        start.wait()
    for round_ in range(PASSES):
        for i, key in enumerate(keys):
            entry = store.get(key)
            time.sleep(0.001)
            outcome = {"key": key, "seen": entry.revision, "editor": reviewer, "read": entry.text}
            try:
                if (i + salt + round_) % 3 == 0:
                    text = f"{reviewer} round {round_} edits {key}"
                    outcome |= {"text": text, "saved": store.save(key, text, revision=entry.revision,
                                                                  author=reviewer).number}
                else:
                    approved = store.approve(key, revision=entry.revision, author=reviewer)
                    outcome |= {"approved": approved.number, "status": approved.status, "text": approved.text}
            except StaleRevisionError:
                outcome["conflict"] = True
            except MedArtError as err:
                assert "already approved" in str(err)
                outcome["again"] = True
            outcomes.append(outcome)
    return outcomes


def review_with_threads(db: str, keys: list[str], reviewers: list[str]) -> list[dict]:
    return edit_with_threads(db, keys, reviewers, review_all, approvals_required=APPROVALS)


def check_approvals_and_edits(db: str, keys: list[str], outcomes: list[dict]) -> dict:
    """No image was ever approved with fewer than APPROVALS distinct approvals of its text at the
    time; every accepted edit and approval is in the history, in the revision it was given."""
    from medart_core.store.review import approvals_since_text

    accepted = [o for o in outcomes if "saved" in o or "approved" in o]
    numbers = [(o["key"], o.get("saved") or o["approved"]) for o in accepted]
    assert len(set(numbers)) == len(numbers), "two changes got the same revision"
    with ReviewStore(db) as store:
        for key in keys:
            history = store.history(key)
            assert [r.number for r in history] == list(range(1, len(history) + 1))
            by_number = {r.number: r for r in history}
            for o in (o for o in accepted if o["key"] == key):
                rev = by_number[o.get("saved") or o["approved"]]
                assert (rev.author, rev.text) == (o["editor"], o["text"])
                if "approved" in o:
                    assert o["read"] == rev.text, "an approval was counted for a text its reviewer did not read"
            for n, rev in by_number.items():
                approvers = approvals_since_text(history[:n])
                if rev.status == "approved":
                    assert len(approvers) >= APPROVALS, f"{key} revision {n}: approved by {approvers} only"
                if rev.action == "approve":
                    assert rev.status == ("approved" if len(approvers) >= APPROVALS else "partly-approved")
            entry = store.get(key)
            assert entry.status == history[-1].status and entry.text == history[-1].text
    statuses = Counter(o.get("status") for o in accepted if "approved" in o)
    assert statuses["approved"] and statuses["partly-approved"], statuses
    assert any("conflict" in o for o in outcomes), "the reviewers never collided"
    return {"attempts": len(outcomes), "edits": sum("saved" in o for o in outcomes),
            "approvals": len(accepted) - sum("saved" in o for o in outcomes), "approved": statuses["approved"],
            "conflicts": sum("conflict" in o for o in outcomes)}


def _reviewed_descriptions(db: str, tmp_path: Path) -> list[str]:
    from test_store import make_dataset

    data = make_dataset(tmp_path / "data", n_train=REVIEWED, n_test=0)
    with ReviewStore(db, approvals_required=APPROVALS) as store:
        import_dataset(store, data, author="importer")
        return sorted(store.keys())


@pytest.mark.slow
def test_reviewers_approving_and_editing_at_once_never_approve_with_fewer_than_n(db, tmp_path, record_property):
    keys = _reviewed_descriptions(db, tmp_path)
    if store_kind(db) == "sqlite":  # threads sharing one store, as in the app
        outcomes = review_with_threads(db, keys, [f"reviewer-{i}" for i in range(4)])
    else:  # processes of threads, as several app servers on one database
        outcomes = edit_in_processes(db, keys, processes=2, threads=2, mode="review")
    figures = check_approvals_and_edits(db, keys, outcomes)
    record_property("approvals", figures)
    print(f"\nreviewers on {store_kind(db)}: {figures}")


def _editor_process(db: str, keys: list[str], process: int, threads: int, go: float, mode: str = "edit") -> None:
    editors = [f"process-{process}/thread-{t}" for t in range(threads)]
    time.sleep(max(0.0, go - time.time()))
    work = review_with_threads if mode == "review" else edit_with_threads
    print(json.dumps(work(db, keys, editors)))


if __name__ == "__main__":
    _editor_process(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]),
                    *sys.argv[6:])
