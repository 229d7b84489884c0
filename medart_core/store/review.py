"""The review store: images, their descriptions, and every revision of every description.

Every change appends a revision; nothing is updated in place or deleted. A change names the
revision it was made on (optimistic concurrency): if someone else changed the description since,
the change is refused with `StaleRevisionError` and nothing is written. The check and the write
are one guarded UPDATE (`... WHERE current_revision = :seen`) in one transaction, so two
clinicians, threads or processes saving at once cannot both succeed on the same revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from sqlalchemy import func, insert, select, update

from medart_core.errors import MedArtError
from medart_core.store.database import WRITE, create_store_engine, migrate
from medart_core.store.schema import STATUSES, images, revisions
from medart_core.text_limits import check_revision, check_search, check_text

HUMAN = "human"


@dataclass(frozen=True)
class Revision:
    """One version of a description, and who made it when."""

    number: int
    action: str  # import, describe, edit, approve, flag, revert, rehash
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
                 row.source, row.rule, _as_utc(row.updated_at))


def status_after_text(source: str) -> str:
    """A person's text is "edited"; a captioner's is "generated" (it still needs a review)."""
    return "edited" if source == HUMAN else "generated"


class ReviewStore:
    """Open with `ReviewStore(db)`: a SQLite file path or a database URL; the schema is migrated
    to the newest version on open."""

    def __init__(self, db: str | Path):
        self.engine = create_store_engine(db)
        migrate(self.engine)

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
        """Mark the text of `revision` as approved: it goes into an approved-only export."""
        return self._append(key, revision, author=author, action="approve", status="approved")

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

    def _append(self, key: str, seen: int, *, author: str, action: str, status: str, text: str | None = None,
                source: str | None = None, rule: str | None = None, reason: str = "") -> Revision:
        if not author or not str(author).strip():
            raise MedArtError("every change needs an author (the signed-in user)")
        seen = check_revision(seen)
        stamp = now()
        values = {"current_revision": seen + 1, "status": status, "updated_at": stamp}
        if text is not None:
            values |= {"text": text, "source": source, "rule": rule or ""}
        guarded = (update(images).where(images.c.key == key, images.c.current_revision == seen).values(**values)
                   .returning(images.c.id, images.c.text, images.c.source, images.c.rule))
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            row = conn.execute(guarded).first()
            if row is not None:
                new = Revision(seen + 1, action, row.text, row.source, row.rule, str(author).strip(), status,
                               reason, stamp)
                conn.execute(insert(revisions).values(
                    image_id=row.id, number=new.number, action=new.action, text=new.text, source=new.source,
                    rule=new.rule, author=new.author, status=new.status, reason=new.reason,
                    created_at=new.created_at))
        if row is None:  # refused after the transaction ended, so the write lock is not held meanwhile
            self._refuse(key, seen)
        return new

    def _refuse(self, key: str, seen: int):
        entry = self.get(key)  # raises for an unknown image
        if seen > entry.revision or seen < 1:
            raise MedArtError(f"{key} has no revision {seen} (its current revision is {entry.revision})")
        raise StaleRevisionError(key, seen, self.revision(key, entry.revision))

    def add(self, rows: Iterable[dict], *, author: str, action: str = "import") -> int:
        """Insert new images with their first revision, in one transaction; `rows` hold the
        `images` columns (key, split, file_name, path, content_hash, label, ...) and the first
        description's text, source, rule."""
        stamp, count = now(), 0
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            for row in rows:
                status = status_after_text(row["source"])
                image_id = conn.execute(insert(images).values(
                    **row, current_revision=1, status=status, updated_at=stamp).returning(images.c.id)).scalar_one()
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


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise MedArtError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    return status
