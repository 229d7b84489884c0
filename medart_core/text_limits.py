"""Limits on text that people type or files bring in: stored descriptions, reasons, searches, prompts.

One place for them, so the store, the importer, the app and the generation path agree:

- MAX_TEXT_CHARS (2,000): any text written to the review store. T5 reads 120 tokens (PixArt-alpha,
  ~500 characters; Sigma 300), so a longer "description" is no description, and a huge one makes
  every page that shows it slow. The import truncates longer captions with a warning (the file is
  not the user's to fix mid-import); a write through the store refuses them with the limit.
- MAX_PROMPT_CHARS (4,000): a prompt is cut here, before PixArt's caption cleaning, whose regular
  expressions are quadratic on a long unbroken run (100,000 characters froze the server for ~40 s).
  Generous: twice the text limit, far more than T5 reads, so a normal prompt is never touched.
"""

from __future__ import annotations

import unicodedata

from medart_core.errors import MedArtError

MAX_TEXT_CHARS = 2000
MAX_PROMPT_CHARS = 4000
# Revisions are SQL INTEGERs (32-bit on PostgreSQL): a larger number names no revision.
MAX_REVISION = 2**31 - 1


def cut_at_word(text: str, limit: int) -> str:
    """`text` shortened to at most `limit` characters, at the last space when there is one."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] or text[:limit]


def bound_prompt(prompt: str) -> str:
    """A prompt cut at MAX_PROMPT_CHARS (at a space), before any cleaning; shorter ones unchanged."""
    return cut_at_word(prompt, MAX_PROMPT_CHARS)


def _invisible(char: str) -> bool:
    # Cc: controls (NUL, ...), Cf: format (zero-width, direction overrides), Z*: separators.
    return unicodedata.category(char)[0] in "CZ" or char.isspace()


def check_text(text, what: str) -> str:
    """`text` with runs of whitespace made single spaces, or a MedArtError naming `what` when it is
    empty, only invisible characters (NUL, zero-width, direction overrides), holds a control
    character, or is over MAX_TEXT_CHARS. Every write to the review store goes through this."""
    if text is not None and not isinstance(text, str):
        raise MedArtError(f"{what} must be text, got {type(text).__name__}")
    text = " ".join((text or "").split())
    if len(text) > MAX_TEXT_CHARS:
        raise MedArtError(f"{what} is {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}; shorten it "
                          "(the text encoder reads about 500)")
    control = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise MedArtError(f"{what} holds the control character U+{ord(control):04X}; remove it")
    if text and all(_invisible(c) for c in text):
        raise MedArtError(f"{what} holds only invisible characters (zero-width or direction marks); write visible text")
    return text


def check_search(search: str | None) -> str:
    """A search term, refused over MAX_TEXT_CHARS: it could match no description anyway."""
    if search is not None and not isinstance(search, str):
        raise MedArtError(f"the search must be text, got {type(search).__name__}")
    search = (search or "").strip()
    if len(search) > MAX_TEXT_CHARS:
        raise MedArtError(f"the search is {len(search):,} characters, over the limit of {MAX_TEXT_CHARS:,} "
                          "(no description is longer)")
    return search


def whole_number(value, what: str) -> int:
    """An int from what a form or a raw API call sent (3, 3.0, "3"), or a MedArtError naming `what`:
    NaN, infinity, a fraction, a bool or other text would otherwise end in a generic internal error."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MedArtError(f"{what} must be a whole number, got {value!r:.40}")
    try:
        return int(value)
    except ValueError:
        raise MedArtError(f"{what} must be a whole number, got {value!r:.40}") from None


def check_revision(revision) -> int:
    """A revision number from a form or an API call, refused unless a whole number in 1..MAX_REVISION."""
    number = whole_number(revision, "revision")
    if not 1 <= number <= MAX_REVISION:
        raise MedArtError(f"revision {str(number)[:40]} is out of range: revisions are numbered 1 to {MAX_REVISION:,}")
    return number
