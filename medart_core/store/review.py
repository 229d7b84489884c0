"""The review store: images, their descriptions, and every revision of every description.

Every change appends a revision; nothing is updated in place or deleted. A change names the
revision it was made on (optimistic concurrency): if someone else changed the description since,
the change is refused with `StaleRevisionError` and nothing is written. The check and the write
are one guarded UPDATE (`... WHERE current_revision = :seen`) in one transaction, so two
clinicians, threads or processes saving at once cannot both succeed on the same revision.

Approvals (team review): a description is "approved" once `approvals_required` distinct reviewers
approved its current text, "partly-approved" before that. An approval is itself a revision; it
names the revision it read and is refused only if the text changed since (another approval in
between is no conflict); every other change (edit, flag, undo, ...) starts the count again. The
approval's UPDATE locks the image's row (PostgreSQL) or the database (SQLite) before the approvals
are counted, so two reviewers approving at once are both counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import delete, func, insert, select, update

from medart_core.errors import MedArtError
from medart_core.store.database import WRITE, create_store_engine, migrate
from medart_core.store.schema import STATUSES, images, revisions, settings
from medart_core.text_limits import check_revision, check_search, check_text, whole_number

HUMAN = "human"
APPROVALS_SETTING = "approvals_required"


@dataclass(frozen=True)
class Revision:
    """One version of a description, and who made it when."""

    number: int
    action: str  # import, describe, edit, approve, flag, revert, rehash, replace, adjudicate
    text: str
    source: str
    rule: str
    author: str
    status: str
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class Entry:
    """An image and its current description."""

    key: str
    split: str
    file_name: str
    path: Path
    content_hash: str
    label: str | None
    simple_caption: str | None
    source_file: str | None
    slice: int | None
    extra: dict = field(default_factory=dict)
    revision: int = 0
    status: str = "generated"
    text: str = ""
    source: str = ""
    rule: str = ""
    updated_at: datetime | None = None
    text_revision: int = 1  # the revision that wrote the current text
    independent_reading: bool = False  # waiting for independent versions and their adjudication


class StaleRevisionError(MedArtError):
    """A change was made on a revision that is no longer the current one; nothing was written."""

    def __init__(self, key: str, seen: int, current: Revision):
        self.key, self.seen, self.current = key, seen, current
        when = current.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        super().__init__(
            f"not saved: the description of {key} changed after you opened revision {seen} "
            f"(now revision {current.number}, {current.action} by {current.author} at {when}). "
            "Reload it, reapply your change and save again."
        )


def now() -> datetime:
    return datetime.now(timezone.utc)


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; the store writes UTC only."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _revision(row) -> Revision:
    return Revision(row.number, row.action, row.text, row.source, row.rule, row.author, row.status,
                    row.reason, _as_utc(row.created_at))


def _entry(row) -> Entry:
    return Entry(row.key, row.split, row.file_name, Path(row.path), row.content_hash, row.label, row.simple_caption,
                 row.source_file, row.slice, dict(row.extra or {}), row.current_revision, row.status, row.text,
                 row.source, row.rule, _as_utc(row.updated_at), row.text_revision, row.independent_reading)


def status_after_text(source: str) -> str:
    """A person's text is "edited"; a captioner's is "generated" (it still needs a review)."""
    return "edited" if source == HUMAN else "generated"


def approvals_since_text(history: list[Revision]) -> list[str]:
    """The distinct reviewers who approved the current text: the approvals after the last revision
    of any other kind (an edit, flag or undo starts the count again)."""
    names = []
    for rev in reversed(history):
        if rev.action != "approve":
            break
        if rev.author not in names:
            names.insert(0, rev.author)
    return names


def check_approvals_required(value) -> int:
    number = whole_number(value, "approvals required")
    if number < 1:
        raise MedArtError(f"approvals required must be 1 or more, not {number}")
    return number


class ReviewStore:
    """Open with `ReviewStore(db)`: a SQLite file path or a database URL; the schema is migrated to
    the newest version on open.

    `approvals_required=N` sets the team's rule, kept in the store (so `export` and every other
    process follow the app's `--approvals-required`); a changed N re-rates approved descriptions (an
    image approved once under N=1 becomes partly-approved under N=2). None: the stored rule (1 by default)."""

    def __init__(self, db: str | Path, *, approvals_required: int | None = None):
        self.engine = create_store_engine(db)
        migrate(self.engine)
        with self.engine.connect() as conn:
            stored = conn.execute(select(settings.c.value).where(settings.c.name == APPROVALS_SETTING)).scalar()
        self.approvals_required = int(stored or 1)
        if approvals_required is not None and check_approvals_required(approvals_required) != self.approvals_required:
            self.approvals_required = approvals_required
            with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                conn.execute(delete(settings).where(settings.c.name == APPROVALS_SETTING))
                conn.execute(insert(settings).values(name=APPROVALS_SETTING, value=str(approvals_required)))
            self._recount_approvals()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # Reading --------------------------------------------------------------------------------

    def get(self, key: str) -> Entry:
        with self.engine.connect() as conn:
            row = conn.execute(select(images).where(images.c.key == key)).first()
        if row is None:
            raise MedArtError(f"no image {key!r} in the review store")
        return _entry(row)

    def history(self, key: str) -> list[Revision]:
        """Every revision of the image's description, oldest first."""
        query = (select(revisions).join(images, images.c.id == revisions.c.image_id)
                 .where(images.c.key == key).order_by(revisions.c.number))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            self.get(key)  # raises the "no image" message
        return [_revision(r) for r in rows]

    def approvals(self, key: str) -> list[str]:
        """Who approved the image's current text (distinct names, in order)."""
        return approvals_since_text(self.history(key))

    def revision(self, key: str, number: int) -> Revision:
        for rev in self.history(key):
            if rev.number == number:
                return rev
        raise MedArtError(f"{key} has no revision {number}")

    def entries(self, *, status: str | None = None, label: str | None = None, search: str | None = None,
                split: str | None = None) -> list[Entry]:
        """Images and current descriptions, in key order, filtered by status, label, split and a
        case-insensitive text search over description and file name."""
        query = select(images).order_by(images.c.key)
        if status:
            check_status(status)
            query = query.where(images.c.status == status)
        if label:
            query = query.where(images.c.label == label)
        if split is not None:
            query = query.where(images.c.split == split)
        term = check_search(search)
        if term:
            query = query.where(images.c.text.icontains(term, autoescape=True)
                                | images.c.key.icontains(term, autoescape=True))
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(query)]

    def keys(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(images.c.key)).scalars())

    def labels(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(l for l in conn.execute(select(images.c.label).distinct()).scalars() if l)

    def counts(self) -> dict[str, int]:
        """Images per status, plus "total" and "reviewed" (approved or flagged)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(images.c.status, func.count()).group_by(images.c.status)).all()
        counts = {status: 0 for status in STATUSES} | {status: n for status, n in rows}
        counts["total"] = sum(n for _, n in rows)
        counts["reviewed"] = counts["approved"] + counts["flagged"]
        return counts

    # Changing -------------------------------------------------------------------------------

    def save(self, key: str, text: str, *, revision: int, author: str, source: str = HUMAN, rule: str = "",
             action: str | None = None) -> Revision:
        """A new text for the description, made on `revision`. A person's text (source "human")
        becomes "edited"; a captioner's "generated". An approval does not carry over to new text.
        Text over MAX_TEXT_CHARS, or of invisible characters only, is refused (text_limits.check_text)."""
        text = check_text(text, f"the description of {key}")
        if not text:
            raise MedArtError(f"the description of {key} is empty; write what the image shows")
        return self._append(key, revision, author=author, action=action or ("edit" if source == HUMAN else "describe"),
                            status=status_after_text(source), text=text, source=source, rule=rule)

    def approve(self, key: str, *, revision: int, author: str) -> Revision:
        """Approve the text read at `revision`. The description becomes "approved" (it goes into an
        approved-only export) when `approvals_required` distinct reviewers approved this text,
        "partly-approved" before. Refused (StaleRevisionError) only if the text changed since
        `revision`; refused too if this reviewer already approved it."""
        seen, author = check_revision(revision), _author(author)
        stamp = now()
        guarded = (update(images).where(images.c.key == key, images.c.text_revision <= seen,
                                        images.c.current_revision >= seen, images.c.independent_reading.is_(False))
                   .values(current_revision=images.c.current_revision + 1, updated_at=stamp)
                   .returning(images.c.id, images.c.current_revision, images.c.text, images.c.source, images.c.rule))
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            row = conn.execute(guarded).first()  # from here the row (PostgreSQL) or the database (SQLite) is locked
            if row is not None:
                earlier = self._approvers(conn, row.id)
                if author in earlier:
                    raise MedArtError(f"{author} already approved this text of {key}; it needs "
                                      f"{self.approvals_required} different reviewers")
                status = "approved" if len(earlier) + 1 >= self.approvals_required else "partly-approved"
                conn.execute(update(images).where(images.c.id == row.id).values(status=status))
                new = Revision(row.current_revision, "approve", row.text, row.source, row.rule, author, status, "", stamp)
                self._insert_revision(conn, row.id, new)
        if row is None:
            self._refuse(key, seen, text_only=True)
        return new

    @staticmethod
    def _approvers(conn, image_id: int) -> list[str]:
        """Inside a write transaction: who approved the image's current text so far."""
        rows = conn.execute(select(revisions).where(revisions.c.image_id == image_id).order_by(revisions.c.number)).all()
        return approvals_since_text([_revision(r) for r in rows])

    def _recount_approvals(self) -> None:
        """Approved / partly-approved statuses as `approvals_required` says now (it may have changed
        since they were given); a status only, no revision: the history keeps what was true then."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(images.c.id, images.c.current_revision, images.c.status)
                                .where(images.c.status.in_(("approved", "partly-approved")))).all()
        for row in rows:
            with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                count = len(self._approvers(conn, row.id))
                status = "approved" if count >= self.approvals_required else "partly-approved"
                if status != row.status:
                    conn.execute(update(images).where(images.c.id == row.id,
                                                      images.c.current_revision == row.current_revision)
                                 .values(status=status))

    def flag(self, key: str, reason: str, *, revision: int, author: str) -> Revision:
        """Mark the description as needing attention, with the reason."""
        reason = check_text(reason, f"the flag reason of {key}")
        if not reason:
            raise MedArtError(f"say why {key} is flagged (e.g. 'wrong laterality', 'image unreadable')")
        return self._append(key, revision, author=author, action="flag", status="flagged", reason=reason)

    def revert(self, key: str, to: int, *, revision: int, author: str) -> Revision:
        """Undo: a new revision with the text of an earlier one (history is never rewritten)."""
        old = self.revision(key, to)
        return self._append(key, revision, author=author, action="revert", status=status_after_text(old.source),
                            text=old.text, source=old.source, rule=old.rule, reason=f"back to revision {to}")

    def save_many(self, changes: list[tuple[str, int, str]], *, author: str, action: str = "replace",
                  reason: str = "") -> list[Revision]:
        """New texts for several descriptions, (key, revision read, text) each, in one transaction:
        all are written, or none (StaleRevisionError for the first that changed since it was read).
        Each is an ordinary revision by `author`, so Undo reverts it."""
        checked = []
        for key, seen, text in changes:
            text = check_text(text, f"the description of {key}")
            if not text:
                raise MedArtError(f"the description of {key} would be empty; nothing was changed")
            checked.append((key, check_revision(seen), text))
        author, stamp, written, stale = _author(author), now(), [], None
        with self.engine.connect().execution_options(**WRITE) as conn:
            with conn.begin() as transaction:
                for key, seen, text in checked:
                    row = conn.execute(self._guarded(key, seen, status_after_text(HUMAN), stamp, text, HUMAN)).first()
                    if row is None:
                        stale = (key, seen)
                        transaction.rollback()  # all or nothing
                        break
                    new = Revision(seen + 1, action, text, HUMAN, "", author, status_after_text(HUMAN), reason, stamp)
                    self._insert_revision(conn, row.id, new)
                    written.append(new)
        if stale:
            self._refuse(*stale)
        return written

    def _guarded(self, key: str, seen: int, status: str, stamp: datetime, text: str | None = None,
                 source: str | None = None, rule: str | None = None, *, new_reading: bool = False,
                 settles_reading: bool = False):
        """The UPDATE that moves an image from revision `seen` to the next, or matches nothing if
        it is no longer at `seen` (optimistic concurrency) or is being read independently (only
        the adjudication, `settles_reading`, or a changed image file, `new_reading`, goes through)."""
        values = {"current_revision": seen + 1, "status": status, "updated_at": stamp}
        if text is not None:
            values |= {"text": text, "source": source, "rule": rule or ""}
        if text is not None or new_reading:  # approvals of what was read before no longer count
            values["text_revision"] = seen + 1
        query = update(images).where(images.c.key == key, images.c.current_revision == seen)
        if settles_reading:
            values["independent_reading"] = False
        elif not new_reading:
            query = query.where(images.c.independent_reading.is_(False))
        return query.values(**values).returning(images.c.id, images.c.text, images.c.source, images.c.rule)

    @staticmethod
    def _insert_revision(conn, image_id: int, new: Revision) -> None:
        conn.execute(insert(revisions).values(
            image_id=image_id, number=new.number, action=new.action, text=new.text, source=new.source,
            rule=new.rule, author=new.author, status=new.status, reason=new.reason, created_at=new.created_at))

    def _append(self, key: str, seen: int, *, author: str, action: str, status: str, text: str | None = None,
                source: str | None = None, rule: str | None = None, reason: str = "",
                then: Callable | None = None) -> Revision:
        """Append one revision made on `seen`; `then(conn, image_id, revision)` runs inside the same
        transaction (e.g. to mark independent versions adjudicated)."""
        author, seen = _author(author), check_revision(seen)
        stamp = now()
        guarded = self._guarded(key, seen, status, stamp, text, source, rule, new_reading=action == "rehash",
                                settles_reading=action == "adjudicate")
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            row = conn.execute(guarded).first()
            if row is not None:
                new = Revision(seen + 1, action, row.text, row.source, row.rule, author, status, reason, stamp)
                self._insert_revision(conn, row.id, new)
                if then is not None:
                    then(conn, row.id, new)
        if row is None:  # refused after the transaction ended, so the write lock is not held meanwhile
            self._refuse(key, seen)
        return new

    def _refuse(self, key: str, seen: int, *, text_only: bool = False):
        entry = self.get(key)  # raises for an unknown image
        if seen > entry.revision or seen < 1:
            raise MedArtError(f"{key} has no revision {seen} (its current revision is {entry.revision})")
        if entry.independent_reading and (entry.text_revision <= seen if text_only else entry.revision == seen):
            raise MedArtError(f"{key} is being read independently: its readers submit their own versions (Review "
                              "tab, 'Independent reading'); it can be edited or approved once an admin adjudicates")
        # An approval is refused only for a new text: name the revision that wrote it, not a later approval.
        raise StaleRevisionError(key, seen, self.revision(key, entry.text_revision if text_only else entry.revision))

    def add(self, rows: Iterable[dict], *, author: str, action: str = "import") -> int:
        """Insert new images with their first revision, in one transaction; `rows` hold the
        `images` columns (key, split, file_name, path, content_hash, label, ...) and the first
        description's text, source, rule."""
        stamp, count = now(), 0
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            for row in rows:
                status = status_after_text(row["source"])
                image_id = conn.execute(insert(images).values(
                    **row, current_revision=1, text_revision=1, status=status, updated_at=stamp)
                    .returning(images.c.id)).scalar_one()
                conn.execute(insert(revisions).values(
                    image_id=image_id, number=1, action=action, text=row["text"], source=row["source"],
                    rule=row.get("rule") or "", author=author, status=status, reason="", created_at=stamp))
                count += 1
        return count

    def relocate(self, key: str, path: str | Path) -> None:
        """The image file moved (same bytes): remember where it is now."""
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(update(images).where(images.c.key == key).values(path=str(path)))

    def rehash(self, key: str, path: str | Path, content_hash: str, *, author: str) -> Revision:
        """The image file changed since it was described: flag its description for a new look."""
        entry = self.get(key)
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(update(images).where(images.c.key == key).values(path=str(path), content_hash=content_hash))
        return self._append(key, entry.revision, author=author, action="rehash", status="flagged",
                            reason="the image file changed after it was described")


def _author(author) -> str:
    if not author or not str(author).strip():
        raise MedArtError("every change needs an author (the signed-in user)")
    return str(author).strip()


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise MedArtError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    return status
