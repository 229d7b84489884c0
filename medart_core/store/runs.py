"""Training runs launched from the app, kept in the review store so an app restart loses none.

training_runs             one row per run: preset, settings, base model, state, the trainer's pid and
                          process start time (to recognise it after a restart), folders, times, outcome
training_run_descriptions the data snapshot: which revision of which description a run trained on

States: queued -> running -> done | failed | cancelled | interrupted (died while nobody watched, or was
stopped by someone else's signal); cancelled, interrupted and failed runs can be resumed (-> queued).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import (JSON, Boolean, Column, DateTime, Float, ForeignKey, Integer, String, Table, Text, delete,
                        insert, select, update)

from medart_core.errors import MedArtError
from medart_core.store.database import WRITE
from medart_core.store.review import _as_utc, now
from medart_core.store.schema import metadata

RUN_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
RESUMABLE = ("cancelled", "interrupted", "failed")

training_runs = Table(
    "training_runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("preset", String(64), nullable=False),
    Column("model", Text, nullable=False),  # the base model the app runs, as given to --model
    Column("descriptions", String(16), nullable=False),  # approved | all
    Column("settings", JSON, nullable=False),  # what the form asked for (0 / null: the preset's own)
    Column("folder", Text, nullable=False),  # the run's own folder: data/, output/, train.log
    Column("author", String(256), nullable=False),
    Column("pid", Integer),
    Column("process_started", Float),  # psutil create_time of that pid: a reused pid does not match
    Column("stop_requested", Boolean, nullable=False, default=False),
    Column("error", Text, nullable=False, default=""),
    Column("summary", JSON, nullable=False, default=dict),  # step, total, final losses when it ended
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
)

training_run_descriptions = Table(
    "training_run_descriptions", metadata,
    Column("run_id", Integer, ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True),
    Column("image_key", String(1024), primary_key=True),
    Column("revision", Integer, nullable=False),  # the revision (of the review store) whose text was exported
)


@dataclass(frozen=True)
class Run:
    id: int
    state: str
    preset: str
    model: str
    descriptions: str
    settings: dict
    folder: Path
    author: str
    pid: int | None
    process_started: float | None
    stop_requested: bool
    error: str
    summary: dict = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def output(self) -> Path:
        return self.folder / "output"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "train.log"


def _run(row) -> Run:
    return Run(row.id, row.state, row.preset, row.model, row.descriptions, dict(row.settings or {}), Path(row.folder),
               row.author, row.pid, row.process_started, bool(row.stop_requested), row.error or "",
               dict(row.summary or {}), _as_utc(row.created_at), _as_utc(row.started_at), _as_utc(row.finished_at))


class RunStore:
    """The runs table of a review store (`RunStore(review_store.engine)`; migrated when the store opened)."""

    def __init__(self, engine):
        self.engine = engine

    def create(self, *, preset: str, model: str, descriptions: str, settings: dict, folder_of, author: str) -> Run:
        """A new queued run; `folder_of(run_id)` names its folder (the id is known only once inserted)."""
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            run_id = conn.execute(insert(training_runs).values(
                state="queued", preset=preset, model=model, descriptions=descriptions, settings=settings, folder="",
                author=author, stop_requested=False, error="", summary={}, created_at=now(),
            ).returning(training_runs.c.id)).scalar_one()
            conn.execute(update(training_runs).where(training_runs.c.id == run_id)
                         .values(folder=str(folder_of(run_id))))
        return self.get(run_id)

    def record_snapshot(self, run_id: int, revisions: dict[str, int]) -> None:
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(delete(training_run_descriptions).where(training_run_descriptions.c.run_id == run_id))
            if revisions:
                conn.execute(insert(training_run_descriptions), [
                    {"run_id": run_id, "image_key": key, "revision": number} for key, number in revisions.items()])

    def snapshot(self, run_id: int) -> dict[str, int]:
        """image key -> the revision of its description the run trained on."""
        query = select(training_run_descriptions).where(training_run_descriptions.c.run_id == run_id)
        with self.engine.connect() as conn:
            return {row.image_key: row.revision for row in conn.execute(query)}

    def get(self, run_id: int) -> Run:
        with self.engine.connect() as conn:
            row = conn.execute(select(training_runs).where(training_runs.c.id == int(run_id))).first()
        if row is None:
            raise MedArtError(f"no training run {run_id}")
        return _run(row)

    def all(self, *, state: str | None = None) -> list[Run]:
        """Runs, newest first (or oldest first for one state: the queue's order)."""
        query = select(training_runs)
        if state:
            query = query.where(training_runs.c.state == state).order_by(training_runs.c.id)
        else:
            query = query.order_by(training_runs.c.id.desc())
        with self.engine.connect() as conn:
            return [_run(row) for row in conn.execute(query)]

    def update(self, run_id: int, *, expect: tuple[str, ...] | None = None, **values) -> bool:
        """Change a run's columns; with `expect`, only while its state is one of those (False if not)."""
        if "state" in values and values["state"] not in RUN_STATES:
            raise ValueError(f"unknown run state {values['state']!r}")
        query = update(training_runs).where(training_runs.c.id == int(run_id))
        if expect:
            query = query.where(training_runs.c.state.in_(expect))
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            return conn.execute(query.values(**values)).rowcount == 1

    def delete(self, run_id: int) -> None:
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(delete(training_run_descriptions).where(training_run_descriptions.c.run_id == int(run_id)))
            conn.execute(delete(training_runs).where(training_runs.c.id == int(run_id)))
