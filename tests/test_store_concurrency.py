"""Concurrent editors lose no accepted edit and hear about every conflict; a killed export leaves
the previous export intact. On SQLite (8 threads, 2 processes) and PostgreSQL (8 threads, 2 processes).

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


def edit_with_threads(db: str, keys: list[str], editors: list[str]) -> list[dict]:
    """One store (one engine, one connection pool) shared by a thread per editor, as in the app."""
    results, errors = {}, []
    start = threading.Barrier(len(editors))
    with ReviewStore(db) as store:
        def work(editor):
            try:
                results[editor] = edit_all(store, keys, editor, start)
            except BaseException as err:  # an unexpected error must fail the test, not vanish in a thread
                errors.append(f"{editor}: {type(err).__name__}: {err}")
        threads = [threading.Thread(target=work, args=(e,)) for e in editors]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    return [o for e in editors for o in results[e]]


def edit_in_processes(db: str, keys: list[str], processes: int, threads: int) -> list[dict]:
    """`processes` editor processes of `threads` threads each, started together."""
    go = time.time() + 2.0  # every process starts editing at this moment, after its imports
    commands = [[sys.executable, __file__, db, json.dumps(keys), str(p), str(threads), str(go)] for p in range(processes)]
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


def _editor_process(db: str, keys: list[str], process: int, threads: int, go: float) -> None:
    editors = [f"process-{process}/thread-{t}" for t in range(threads)]
    time.sleep(max(0.0, go - time.time()))
    print(json.dumps(edit_with_threads(db, keys, editors)))


if __name__ == "__main__":
    _editor_process(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
