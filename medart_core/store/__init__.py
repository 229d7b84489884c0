"""The caption review store: every image's description, every revision of it, who made it.

SQLite by default (a file; WAL mode), PostgreSQL for a team (`postgresql+psycopg://...`), the same
code through SQLAlchemy; the schema is migrated by alembic on open (migrations/versions/).

    store = ReviewStore("review.sqlite")
    import_dataset(store, "assets/demo", author="alice")
    entry = store.get("train/x.png")
    store.save(entry.key, "An axial ...", revision=entry.revision, author="alice")  # StaleRevisionError if changed meanwhile
    export_dataset(store, "exported/")  # approved descriptions -> imagefolder with metadata.jsonl per split
"""

from medart_core.store.review import Entry, ReviewStore, Revision, StaleRevisionError
from medart_core.store.schema import STATUSES
from medart_core.store.transfer import ExportSummary, ImportSummary, caption_describer, export_dataset, import_dataset

__all__ = ["Entry", "ExportSummary", "ImportSummary", "ReviewStore", "Revision", "STATUSES", "StaleRevisionError",
           "caption_describer", "export_dataset", "import_dataset"]
