"""Where the review store and the app's files live by default: a writable per-user data folder,
or a Hugging Face Space's persistent storage (/data); never inside the repository."""

from __future__ import annotations

import os
from pathlib import Path

SPACE_STORAGE = Path("/data")
DEFAULT_DB_NAME = "review.sqlite"


def default_home(space_storage: Path = SPACE_STORAGE) -> tuple[Path, str | None]:
    """(folder, warning): the warning says when edits will not survive a restart."""
    import platformdirs

    if os.environ.get("SPACE_ID"):
        if space_storage.is_dir() and os.access(space_storage, os.W_OK):
            return space_storage / "medart", None
        return (Path(platformdirs.user_data_dir("medart")),
                "This Space has no persistent storage: reviews are lost when it restarts. Enable persistent storage "
                "in the Space's settings, or point --db (MEDART_DB) at a PostgreSQL server.")
    return Path(platformdirs.user_data_dir("medart")), None
