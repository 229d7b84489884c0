"""Dataset files in the Hugging Face imagefolder layout: metadata.jsonl next to the images.

Columns are the same everywhere (see README, "Formats"): file_name, text, label, simple_caption,
source, rule, and for generated sets seed, steps, guidance, model, adapters, synthetic.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from medart_core.errors import MedArtError

METADATA_FILE = "metadata.jsonl"


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; a malformed line is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise MedArtError(f"file {path} not found")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MedArtError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise MedArtError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write JSON lines to a temp file in the same folder and rename it over `path`: readers see
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_prompts(path: str | Path) -> list[dict]:
    """Prompts from JSONL with `text` and optional `label` (a real set's metadata.jsonl works)."""
    prompts = []
    for number, row in enumerate(read_jsonl(path), start=1):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise MedArtError(f"{path}, prompt {number}: no text (each line needs a non-empty \"text\")")
        label = row.get("label")
        prompts.append({"text": text.strip(), "label": None if label is None else str(label)})
    if not prompts:
        raise MedArtError(f"{path} holds no prompts")
    return prompts
