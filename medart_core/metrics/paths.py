"""Paths in evaluation files: relative, never the absolute folders of the machine they were made on.

A report travels (it is committed next to the demo model, attached to papers): an absolute path
tells nothing to its reader and names the author's machine and temp folders. Data folders are
written as given when relative, else relative to the working folder when inside it, else by
their name; image paths follow their folder's form (`gen/000016.png`).
"""

from __future__ import annotations

from pathlib import Path


def portable(path: str | Path) -> str:
    """`path` as written in reports: as given when relative, relative to the working folder when
    inside it, else its last component."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return path.name


def scrub_paths(value, folders):
    """A copy of the plain report `value` where every string naming one of `folders` (or a file
    under one) by its absolute path names it by `portable(folder)` instead."""
    replacements = {}
    for folder in folders:
        if folder is None:
            continue
        folder = Path(folder)
        for absolute in {str(folder.absolute()), str(folder.resolve())}:
            replacements[absolute] = portable(folder)
    ordered = sorted(replacements.items(), key=lambda item: -len(item[0]))  # the deepest folder first

    def scrub(item):
        if isinstance(item, dict):
            return {key: scrub(v) for key, v in item.items()}
        if isinstance(item, list):
            return [scrub(v) for v in item]
        if isinstance(item, str):
            for absolute, shown in ordered:
                item = item.replace(absolute, shown)
        return item

    return scrub(value)
