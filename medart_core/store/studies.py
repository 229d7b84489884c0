"""Reader studies in the review store: create one, hand each reader their next trial, take one
answer per trial, close it. The truth (real or synthetic) stays in these tables; what leaves for
a reader is a neutral token, a position and a blinded copy (medart_core/reader_study.py).

An answer is one INSERT guarded by a unique constraint on its trial, so two browser tabs (or two
processes) answering the same trial cannot both succeed: the second is refused. Served copies are
recorded with their trial and deleted after its answer and when the study closes.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from medart_core.errors import MedArtError
from medart_core.store.database import WRITE
from medart_core.store.review import _as_utc, now
from medart_core.store.study_schema import KINDS, studies, study_answers, study_images, study_readers, study_trials
from medart_core.text_limits import check_text, whole_number

ANSWERS = ("real", "synthetic")
RATING = range(1, 6)  # confidence and realism, 1..5
NAME_CHARS = 200


@dataclass(frozen=True)
class Reader:
    """An invited reader: a user name, an optional expert level, and their account's role (a
    reviewer or admin has seen the real images and can generate, so is not blind)."""

    user: str
    expert_level: str | None = None
    role: str | None = None

    @property
    def blind(self) -> bool:
        return self.role in (None, "reader")


@dataclass(frozen=True)
class StudyImage:
    kind: str  # real | synthetic
    label: str
    description: str
    path: Path  # a real image's file, or a synthetic PNG that keeps its SYNTHETIC text chunks
    image_key: str | None = None
    seed: int | None = None
    modality: str | None = None


@dataclass(frozen=True)
class Trial:
    """What a reader may know of one trial, plus the stored file its copy is made from (server side)."""

    study_id: int
    token: str
    position: int
    total: int
    description: str | None
    source: Path
    copy_name: str
    size: int
    copy_path: Path | None
    cache_path: Path | None


def check_study_name(name) -> str:
    name = check_text(name, "the study name")
    if not name:
        raise MedArtError("give the study a name, e.g. 'brain-mri-turing-2026'")
    if len(name) > NAME_CHARS:
        raise MedArtError(f"the study name is {len(name)} characters; keep it under {NAME_CHARS}")
    return name


def check_rating(value, what: str) -> int:
    number = whole_number(value, what)
    if number not in RATING:
        raise MedArtError(f"{what} must be 1 to 5, got {str(number)[:20]}")
    return number


def reader_order(seed: int, study: str, user: str, n: int) -> list[int]:
    """Indices 0..n-1 in this reader's own order: seeded by the study's seed, its name and the
    reader, so it is reproducible and differs between readers (random.Random hashes a str seed
    with SHA-512, the same in every process)."""
    order = list(range(n))
    random.Random(f"{seed}/{study}/{user}").shuffle(order)
    return order


def delete_files(paths) -> None:
    """Delete served copies (and gradio's cached folder of one when it is left empty)."""
    for path in paths:
        if not path:
            continue
        path = Path(path)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # gradio caches each file in a folder of its own hash
        except OSError:
            pass


class Studies:
    """The reader studies of a ReviewStore (same engine, same migrations)."""

    def __init__(self, store):
        self.engine = store.engine

    # Creating and reading ------------------------------------------------------------------

    def create(self, name: str, *, seed: int, classes: list[str], ask_match: bool, size: int,
               readers: list[Reader], images: list[StudyImage], author: str) -> int:
        """Store a study with a trial per reader and image, each reader in their own order.
        Returns the number of trials per reader."""
        name = check_study_name(name)
        if not readers:
            raise MedArtError("invite at least one reader")
        if not images:
            raise MedArtError("the study has no images")
        if {i.kind for i in images} - set(KINDS):
            raise MedArtError(f"an image kind must be one of {KINDS}")
        stamp = now()
        try:
            with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                study_id = conn.execute(insert(studies).values(
                    name=name, seed=int(seed), classes=list(classes), ask_match=bool(ask_match), size=int(size),
                    state="open", created_by=author, created_at=stamp).returning(studies.c.id)).scalar_one()
                image_ids = [conn.execute(insert(study_images).values(
                    study_id=study_id, kind=i.kind, label=i.label, description=i.description, path=str(i.path),
                    image_key=i.image_key, seed=i.seed, modality=i.modality).returning(study_images.c.id)).scalar_one()
                    for i in images]
                for reader in readers:
                    reader_id = conn.execute(insert(study_readers).values(
                        study_id=study_id, reader=reader.user, expert_level=reader.expert_level, role=reader.role,
                        blind=reader.blind).returning(study_readers.c.id)).scalar_one()
                    order = reader_order(seed, name, reader.user, len(image_ids))
                    conn.execute(insert(study_trials), [
                        {"reader_id": reader_id, "image_id": image_ids[index], "position": position,
                         "token": secrets.token_hex(8), "copy_name": secrets.token_hex(8)}
                        for position, index in enumerate(order, start=1)])
        except IntegrityError as err:
            if self._exists(name):
                raise MedArtError(f"a study named {name!r} exists already; choose another name") from None
            raise MedArtError(f"the study could not be stored ({err.orig})") from None
        return len(image_ids)

    def _exists(self, name: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(studies.c.id).where(studies.c.name == name)).first() is not None

    def get(self, name: str):
        """The study's row, or a MedArtError for an unknown name."""
        with self.engine.connect() as conn:
            row = conn.execute(select(studies).where(studies.c.name == name)).first()
        if row is None:
            raise MedArtError(f"no study named {str(name)[:200]!r}")
        return row

    def names(self, *, user: str | None = None, state: str | None = None) -> list[str]:
        """Study names, newest first; only those `user` is invited to, when given."""
        query = select(studies.c.name).order_by(studies.c.id.desc())
        if user is not None:
            query = query.join(study_readers, study_readers.c.study_id == studies.c.id).where(
                study_readers.c.reader == user)
        if state is not None:
            query = query.where(studies.c.state == state)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def readers(self, name: str) -> list[dict]:
        study = self.get(name)
        with self.engine.connect() as conn:
            rows = conn.execute(select(study_readers).where(study_readers.c.study_id == study.id)
                                .order_by(study_readers.c.reader)).all()
        return [{"user": r.reader, "expert_level": r.expert_level, "role": r.role, "blind": r.blind} for r in rows]

    def _reader(self, conn, study, user: str | None):
        row = conn.execute(select(study_readers).where(study_readers.c.study_id == study.id,
                                                       study_readers.c.reader == user)).first()
        if row is None:
            raise MedArtError(f"you ({user or 'nobody signed in'}) are not invited to the study {study.name!r}")
        return row

    @staticmethod
    def _open(study):
        if study.state != "open":
            raise MedArtError(f"the study {study.name!r} is closed: no more trials are shown or answered")

    # A reader's trials ---------------------------------------------------------------------

    def progress(self, name: str, user: str | None) -> tuple[int, int]:
        """(answered, total) trials of this reader."""
        study = self.get(name)
        with self.engine.connect() as conn:
            reader = self._reader(conn, study, user)
            total = conn.execute(select(func.count()).select_from(study_trials)
                                 .where(study_trials.c.reader_id == reader.id)).scalar_one()
            answered = conn.execute(select(func.count()).select_from(study_answers).join(
                study_trials, study_trials.c.id == study_answers.c.trial_id)
                .where(study_trials.c.reader_id == reader.id)).scalar_one()
        return answered, total

    def next_trial(self, name: str, user: str | None) -> Trial | None:
        """The reader's first unanswered trial in their order (marked shown), or None at the end."""
        study = self.get(name)
        self._open(study)
        answered = select(study_answers.c.trial_id)
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            reader = self._reader(conn, study, user)
            total = conn.execute(select(func.count()).select_from(study_trials)
                                 .where(study_trials.c.reader_id == reader.id)).scalar_one()
            row = conn.execute(
                select(study_trials, study_images.c.path, study_images.c.description)
                .join(study_images, study_images.c.id == study_trials.c.image_id)
                .where(study_trials.c.reader_id == reader.id, study_trials.c.id.not_in(answered))
                .order_by(study_trials.c.position).limit(1)).first()
            if row is None:
                return None
            if row.served_at is None:
                conn.execute(update(study_trials).where(study_trials.c.id == row.id,
                                                        study_trials.c.served_at.is_(None)).values(served_at=now()))
        return Trial(study.id, row.token, row.position, total, row.description if study.ask_match else None,
                     Path(row.path), row.copy_name, study.size, row.copy_path and Path(row.copy_path),
                     row.cache_path and Path(row.cache_path))

    def record_copies(self, token: str, copy_path: Path, cache_path: Path | None) -> bool:
        """Remember the files served for a trial, to serve them to its reader only and delete them
        later. A trial answered meanwhile (from another tab) gets none: its files are deleted at once."""
        answered = select(study_answers.c.trial_id)
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            recorded = conn.execute(update(study_trials).where(
                study_trials.c.token == token, study_trials.c.id.not_in(answered)).values(
                copy_path=str(copy_path), cache_path=str(cache_path) if cache_path else None)).rowcount
        if not recorded:
            delete_files([copy_path, cache_path])
        return bool(recorded)

    def answer(self, name: str, user: str | None, token, answer, confidence, realism, comment: str = "",
               matches=None) -> dict:
        """Record the reader's one answer to a trial and delete its served copies. Refused for a
        reader not invited, an unknown or not yet shown trial, a second answer, an answer other
        than real/synthetic, or a rating outside 1..5."""
        study = self.get(name)
        self._open(study)
        if answer not in ANSWERS:
            raise MedArtError(f"answer 'real' or 'synthetic', not {str(answer)[:40]!r}")
        confidence, realism = check_rating(confidence, "confidence"), check_rating(realism, "realism")
        comment = check_text(comment, "the comment")
        if study.ask_match:
            if matches not in (True, False):
                raise MedArtError("say whether the image matches the description (matches true or false)")
        else:
            matches = None
        stamp = now()
        with self.engine.connect().execution_options(**WRITE) as conn:
            with conn.begin():
                reader = self._reader(conn, study, user)
                trial = conn.execute(select(study_trials).where(study_trials.c.reader_id == reader.id,
                                                                study_trials.c.token == str(token))).first()
            if trial is None:
                raise MedArtError(f"no trial {str(token)[:40]!r} of yours in the study {study.name!r}")
            if trial.served_at is None:
                raise MedArtError("that trial has not been shown to you yet; answer the image shown (next_trial)")
            seconds = (stamp - _as_utc(trial.served_at)).total_seconds()
            try:
                with conn.begin():
                    conn.execute(insert(study_answers).values(
                        trial_id=trial.id, answer=answer, confidence=confidence, realism=realism, matches=matches,
                        comment=comment, seconds=seconds, answered_at=stamp))
            except IntegrityError:
                raise MedArtError(f"trial {trial.position} is answered already; an answer once given is final") \
                    from None
            with conn.begin():
                conn.execute(update(study_trials).where(study_trials.c.id == trial.id).values(
                    copy_path=None, cache_path=None))
        delete_files([trial.copy_path, trial.cache_path])
        answered, total = self.progress(name, user)
        return {"trial": trial.token, "answered": answered, "total": total, "done": answered == total}

    def served_files(self, user: str | None = None) -> set[Path]:
        """The copies that exist now (of open studies; only `user`'s when given)."""
        query = (select(study_trials.c.copy_path, study_trials.c.cache_path)
                 .join(study_readers, study_readers.c.id == study_trials.c.reader_id)
                 .join(studies, studies.c.id == study_readers.c.study_id)
                 .where(studies.c.state == "open", study_trials.c.copy_path.is_not(None),
                        study_trials.c.id.not_in(select(study_answers.c.trial_id))))
        if user is not None:
            query = query.where(study_readers.c.reader == user)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {Path(p) for row in rows for p in row if p}

    def close(self, name: str) -> int:
        """Close the study: no more trials, and every served copy deleted. Returns the copies deleted."""
        study = self.get(name)
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            ids = select(study_readers.c.id).where(study_readers.c.study_id == study.id)
            rows = conn.execute(select(study_trials.c.copy_path, study_trials.c.cache_path)
                                .where(study_trials.c.reader_id.in_(ids), study_trials.c.copy_path.is_not(None))).all()
            conn.execute(update(study_trials).where(study_trials.c.reader_id.in_(ids)).values(
                copy_path=None, cache_path=None))
            conn.execute(update(studies).where(studies.c.id == study.id).values(state="closed", closed_at=now()))
        delete_files([p for row in rows for p in row])
        return len(rows)

    # Results -------------------------------------------------------------------------------

    def answers(self, name: str) -> list[dict]:
        """Every answer of the study with its truth, reader and image, in reader then position order."""
        study = self.get(name)
        query = (select(study_readers.c.reader, study_readers.c.expert_level, study_readers.c.blind,
                        study_trials.c.position, study_trials.c.token.label("trial"), study_images.c.id.label("image"),
                        study_images.c.kind, study_images.c.label, study_images.c.description,
                        study_images.c.path, study_images.c.modality, study_answers.c.answer,
                        study_answers.c.confidence, study_answers.c.realism, study_answers.c.matches,
                        study_answers.c.comment, study_answers.c.seconds, study_answers.c.answered_at)
                 .select_from(study_answers)
                 .join(study_trials, study_trials.c.id == study_answers.c.trial_id)
                 .join(study_readers, study_readers.c.id == study_trials.c.reader_id)
                 .join(study_images, study_images.c.id == study_trials.c.image_id)
                 .where(study_readers.c.study_id == study.id)
                 .order_by(study_readers.c.reader, study_trials.c.position))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{**row._mapping, "answered_at": _as_utc(row.answered_at).isoformat()} for row in rows]
