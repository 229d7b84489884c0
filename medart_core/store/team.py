"""Team review on top of the review store: who reads which image (assignments and queues),
independent double reading with adjudication, bulk find and replace, and the labelling guidelines.

Independent versions live in their own table, outside the description's history, search,
`get` and the export, until an admin adjudicates: the chosen (or merged) text becomes the
description's next revision and the versions are marked with it; every version is kept.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update

from medart_core.errors import MedArtError
from medart_core.store.database import WRITE
from medart_core.store.review import HUMAN, ReviewStore, StaleRevisionError, _as_utc, _author, now
from medart_core.store.schema import assignments, guidelines, images, revisions, versions
from medart_core.text_limits import check_revision, check_text

ASSIGN_MODES = ("all", "round-robin", "by-label")
DECISIONS = ("accept", "edit", "flag")  # of an independent reader: the draft unchanged, edited, or flagged
# What a person does to a description (not the importer or the captioner).
PEOPLES_ACTIONS = ("edit", "approve", "flag", "revert", "replace", "adjudicate")


@dataclass(frozen=True)
class Version:
    """One independent reader's version of a description."""

    id: int
    key: str
    author: str
    draft_revision: int
    decision: str
    text: str
    reason: str
    created_at: datetime
    adjudicated_revision: int | None


@dataclass(frozen=True)
class Change:
    """One description a find and replace would change, as previewed."""

    key: str
    revision: int
    before: str
    after: str


def _image_ids(conn, keys: list[str]) -> dict[str, int]:
    rows = conn.execute(select(images.c.key, images.c.id).where(images.c.key.in_(keys))).all()
    found = dict(rows)
    missing = [k for k in keys if k not in found]
    if missing:
        raise MedArtError(f"no image {missing[0]!r} in the review store")
    return found


# Assignments and queues ---------------------------------------------------------------------------

def assign(store: ReviewStore, keys: list[str], reviewers: list[str], *, mode: str = "all", per_image: int = 1,
           independent: bool = False, by: str) -> int:
    """Assign the images `keys` (in the order given) to reviewers: "all" / "by-label" (the caller
    filtered the keys by label) gives every image to every reviewer; "round-robin" gives each image
    `per_image` reviewers in turn, so the work is shared evenly. An image already assigned to a
    reviewer keeps that assignment. Returns how many assignments are new."""
    reviewers = list(dict.fromkeys(r.strip() for r in reviewers if r and r.strip()))
    if mode not in ASSIGN_MODES:
        raise MedArtError(f"unknown assignment mode {mode!r}; use one of {', '.join(ASSIGN_MODES)}")
    if not reviewers:
        raise MedArtError("name the reviewers to assign the images to")
    if not keys:
        raise MedArtError("no images match the filters: nothing to assign")
    if mode == "round-robin":
        if not 1 <= per_image <= len(reviewers):
            raise MedArtError(f"round-robin needs 1 to {len(reviewers)} reviewers per image (the reviewers named), "
                              f"not {per_image}")
        if independent and per_image < 2:
            raise MedArtError("independent double reading needs at least 2 reviewers per image")
        # Image i goes to reviewers i*K .. i*K+K-1 (mod R): K different ones, everyone equally loaded.
        pairs = [(key, reviewers[(i * per_image + j) % len(reviewers)]) for i, key in enumerate(keys)
                 for j in range(per_image)]
    else:
        if independent and len(reviewers) < 2:
            raise MedArtError("independent double reading needs at least 2 reviewers")
        pairs = [(key, reviewer) for key in keys for reviewer in reviewers]
    by, stamp = _author(by), now()
    with store.engine.connect().execution_options(**WRITE) as conn, conn.begin():
        ids = _image_ids(conn, list(dict.fromkeys(keys)))
        taken = set(conn.execute(select(assignments.c.image_id, assignments.c.reviewer)
                                 .where(assignments.c.image_id.in_(ids.values()))).all())
        new = [{"image_id": ids[key], "reviewer": reviewer, "independent": independent, "assigned_by": by,
                "created_at": stamp} for key, reviewer in pairs if (ids[key], reviewer) not in taken]
        if new:
            conn.execute(insert(assignments), new)
        if independent:  # the draft stays as the readers found it until an admin adjudicates
            conn.execute(update(images).where(images.c.id.in_(ids.values())).values(independent_reading=True))
    return len(new)


def _assignment_rows(store: ReviewStore, reviewer: str | None = None):
    query = (select(assignments.c.reviewer, assignments.c.independent, assignments.c.created_at, images.c.key,
                    images.c.id.label("image_id")).join(images, images.c.id == assignments.c.image_id)
             .order_by(images.c.key))
    if reviewer is not None:
        query = query.where(assignments.c.reviewer == reviewer)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
        acted = set(conn.execute(select(revisions.c.image_id, revisions.c.author, revisions.c.created_at)
                                 .where(revisions.c.action.in_(PEOPLES_ACTIONS))).all())
        read = set(conn.execute(select(versions.c.image_id, versions.c.author, versions.c.created_at)).all())
    return rows, acted, read


def _done(row, acted, read) -> bool:
    """An assignment is done once its reviewer acted on the image after it was assigned: for
    independent reading, by submitting a version; otherwise by any edit, approval, flag or undo."""
    since = _as_utc(row.created_at)
    done_by = read if row.independent else acted
    return any(i == row.image_id and a == row.reviewer and _as_utc(t) >= since for i, a, t in done_by)


def queue(store: ReviewStore, reviewer: str) -> list[str]:
    """The images assigned to `reviewer` that they have not done yet, in key order."""
    rows, acted, read = _assignment_rows(store, reviewer)
    return [row.key for row in rows if not _done(row, acted, read)]


def independent_for(store: ReviewStore, key: str, reviewer: str) -> bool:
    """Whether `reviewer` is to read `key` independently (write a version, not edit the description)."""
    query = (select(assignments.c.independent).join(images, images.c.id == assignments.c.image_id)
             .where(images.c.key == key, assignments.c.reviewer == reviewer))
    with store.engine.connect() as conn:
        return bool(conn.execute(query).scalar())


def progress(store: ReviewStore) -> dict[str, dict[str, int]]:
    """Per reviewer: images assigned, done, and left."""
    rows, acted, read = _assignment_rows(store)
    figures: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = figures.setdefault(row.reviewer, {"assigned": 0, "done": 0, "left": 0})
        entry["assigned"] += 1
        entry["done" if _done(row, acted, read) else "left"] += 1
    return dict(sorted(figures.items()))


# Independent double reading ---------------------------------------------------------------------------

def _version(row) -> Version:
    return Version(row.id, row.key, row.author, row.draft_revision, row.decision, row.text, row.reason,
                   _as_utc(row.created_at), row.adjudicated_revision)


def _versions_query():
    return (select(versions, images.c.key).join(images, images.c.id == versions.c.image_id)
            .order_by(images.c.key, versions.c.id))


def submit_version(store: ReviewStore, key: str, text: str, *, revision: int, author: str, reason: str = "") -> Version:
    """An independent reader's own version of `key`, written from the draft they read at `revision`
    without seeing the others'. With a `reason` it is a flag (the text is kept as it stands).
    Refused if the reader is not assigned to read it independently, already has a version waiting
    for adjudication, or the draft's text changed since `revision`."""
    author, seen = _author(author), check_revision(revision)
    text = check_text(text, f"your version of {key}")
    reason = check_text(reason or "", f"the flag reason of {key}")
    if not text:
        raise MedArtError(f"your version of {key} is empty; write what the image shows")
    if not independent_for(store, key, author):
        raise MedArtError(f"{key} is not assigned to {author} for independent reading")
    entry = store.get(key)
    if not entry.independent_reading:
        raise MedArtError(f"{key} is no longer being read independently (an admin adjudicated it); edit it as usual")
    if entry.text_revision > seen or seen > entry.revision:
        raise StaleRevisionError(key, seen, store.revision(key, entry.text_revision))
    draft = store.revision(key, seen).text
    decision = "flag" if reason else ("accept" if " ".join(text.split()) == " ".join(draft.split()) else "edit")
    with store.engine.connect().execution_options(**WRITE) as conn, conn.begin():
        image_id = _image_ids(conn, [key])[key]
        pending = conn.execute(select(versions.c.id).where(
            versions.c.image_id == image_id, versions.c.author == author,
            versions.c.adjudicated_revision.is_(None))).first()
        if pending is not None:
            raise MedArtError(f"you already submitted a version of {key}; it waits for an admin's adjudication")
        new_id = conn.execute(insert(versions).values(
            image_id=image_id, author=author, draft_revision=seen, decision=decision, text=text,
            reason=reason, created_at=now()).returning(versions.c.id)).scalar_one()
        row = conn.execute(_versions_query().where(versions.c.id == new_id)).first()
    return _version(row)


def pending_versions(store: ReviewStore, key: str) -> list[Version]:
    """The versions of `key` waiting for adjudication (for the admin only: readers never see others')."""
    with store.engine.connect() as conn:
        rows = conn.execute(_versions_query().where(images.c.key == key, versions.c.adjudicated_revision.is_(None)))
        return [_version(r) for r in rows]


def all_versions(store: ReviewStore) -> list[Version]:
    """Every version ever submitted, adjudicated or not, in image then submission order."""
    with store.engine.connect() as conn:
        return [_version(r) for r in conn.execute(_versions_query())]


def awaiting_adjudication(store: ReviewStore) -> list[str]:
    """Images with versions waiting for adjudication, in key order."""
    query = (select(images.c.key).join(versions, images.c.id == versions.c.image_id)
             .where(versions.c.adjudicated_revision.is_(None)).distinct().order_by(images.c.key))
    with store.engine.connect() as conn:
        return list(conn.execute(query).scalars())


def adjudicate(store: ReviewStore, key: str, text: str, *, revision: int, author: str):
    """The admin's decision on an image's independent versions: `text` (one version's, or a merged
    one) becomes the description's next revision, made on `revision` like any change, and every
    waiting version is marked with it (kept, never deleted)."""
    waiting = pending_versions(store, key)
    if not waiting and not store.get(key).independent_reading:
        raise MedArtError(f"{key} has no versions waiting for adjudication")
    text = check_text(text, f"the description of {key}")
    if not text:
        raise MedArtError(f"the adjudicated description of {key} is empty; pick a version or write the text")
    ids = [v.id for v in waiting]

    def settle(conn, image_id, new):
        conn.execute(update(versions).where(versions.c.id.in_(ids), versions.c.adjudicated_revision.is_(None))
                     .values(adjudicated_revision=new.number))

    names = ", ".join(sorted({v.author for v in waiting})) or "nobody (no version came)"
    return store._append(key, revision, author=author, action="adjudicate", status="edited", text=text,
                         source=HUMAN, reason=f"adjudicated the versions of {names}", then=settle)


# Bulk find and replace -----------------------------------------------------------------------------------

def preview_replace(store: ReviewStore, keys: list[str], find: str, replacement: str) -> list[Change]:
    """What replacing `find` by `replacement` (literally, case-sensitive) would change in the
    descriptions of `keys`: one Change per description that holds `find`; images being read
    independently are left out (their draft must stay as the readers found it)."""
    if not find:
        raise MedArtError("say what to find")
    wanted = set(keys)
    return [Change(e.key, e.revision, e.text, e.text.replace(find, replacement))
            for e in store.entries() if e.key in wanted and find in e.text and not e.independent_reading]


def apply_replace(store: ReviewStore, previewed: list[tuple[str, int]], find: str, replacement: str, *,
                  author: str) -> list:
    """Apply a previewed replacement: the (key, revision) pairs of the preview become ordinary
    revisions by `author` (Undo reverts each). Refused as a whole, nothing written, if any of them
    changed since the preview."""
    if not previewed:
        raise MedArtError("nothing to replace: preview first")
    changes = []
    for key, seen in previewed:
        entry = store.get(key)
        seen = check_revision(seen)
        if entry.revision != seen:
            raise StaleRevisionError(key, seen, store.revision(key, entry.revision))
        changes.append((key, seen, entry.text.replace(find, replacement)))
    return store.save_many(changes, author=author, action="replace",
                           reason=f"replaced {find!r} with {replacement!r}")


# Guidelines ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Guidelines:
    text: str
    author: str
    created_at: datetime


MAX_GUIDELINES_CHARS = 20_000  # a few pages of Markdown


def check_guidelines(text) -> str:
    """Markdown keeps its line breaks and indentation (check_text would join them into one line)."""
    if not isinstance(text, str):
        raise MedArtError(f"the guidelines must be text, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").strip()
    if len(text) > MAX_GUIDELINES_CHARS:
        raise MedArtError(f"the guidelines are {len(text):,} characters, over the limit of {MAX_GUIDELINES_CHARS:,}")
    control = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t"), None)
    if control is not None:
        raise MedArtError(f"the guidelines hold the control character U+{ord(control):04X}; remove it")
    return text


def set_guidelines(store: ReviewStore, text: str, *, author: str) -> Guidelines:
    """A new version of the labelling guidelines (Markdown); every earlier one is kept."""
    text = check_guidelines(text)
    author, stamp = _author(author), now()
    with store.engine.connect().execution_options(**WRITE) as conn, conn.begin():
        conn.execute(insert(guidelines).values(text=text, author=author, created_at=stamp))
    return Guidelines(text, author, stamp)


def guidelines_history(store: ReviewStore) -> list[Guidelines]:
    """Every version of the guidelines, newest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(guidelines).order_by(guidelines.c.id.desc())).all()
    return [Guidelines(r.text, r.author, _as_utc(r.created_at)) for r in rows]


def current_guidelines(store: ReviewStore) -> Guidelines | None:
    history = guidelines_history(store)
    return history[0] if history else None
