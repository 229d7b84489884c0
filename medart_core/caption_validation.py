"""Validation of generated descriptions: what a description must be to train PixArt-alpha on it.

A description must start with its simple caption (so every prompt names the class the way users
will), must describe rather than parrot the template's feature list, and must fit the T5 text
encoder's budget (the base's limit: 120 tokens for PixArt-alpha, 300 for PixArt-Sigma; longer
prompts are silently truncated). `check_description` names
the first rule a text breaks; `repair_description` makes a text pass when retries ran out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from medart_core.bases import PIXART_ALPHA, detect_base, read_model_index
from medart_core.errors import MedArtError

MAX_T5_TOKENS = PIXART_ALPHA.max_prompt_tokens  # the paper's limit, when no pipeline says otherwise

# Rule names, as recorded in the `rule` column.
EMPTY = "empty"
MISSING_SIMPLE_CAPTION = "missing_simple_caption"
PARROTS_FEATURES = "parrots_features"
TOO_LONG = "too_long"

# What a retry is told, per rule ({simple_caption} and {max_words} are filled in).
RETRY_HINTS = {
    EMPTY: "Your previous answer was empty: describe the image.",
    MISSING_SIMPLE_CAPTION: 'Your previous answer did not begin with "{simple_caption}": begin with exactly that.',
    PARROTS_FEATURES: "Your previous answer repeated the list of features: describe what you see instead.",
    TOO_LONG: "Your previous answer was too long: use at most {max_words} words.",
}

TokenCounter = Callable[[str], int]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def estimate_t5_tokens(text: str) -> int:
    """A deliberately generous estimate of T5 tokens when no tokenizer is given: one per
    punctuation mark, one per 4 letters of each word (at least one), plus end-of-sequence.
    T5's sentencepiece gives ~1.3 tokens per English word; this counts ~1.6, so a text that
    passes the estimate also fits the real budget."""
    count = 1
    for piece in _WORD.findall(text):
        count += 1 if not piece[0].isalnum() else max(1, math.ceil(len(piece) / 4))
    return count


def default_token_budget(tokenizer: str | None) -> int:
    """The prompt limit of the base a `--tokenizer` pipeline (folder, hub id or preset) belongs to;
    PixArt-alpha's (the paper's) for a bare tokenizer or none."""
    from medart_core.model_presets import PRESETS

    if tokenizer and (tokenizer in PRESETS or read_model_index(tokenizer) is not None):
        return detect_base(tokenizer).max_prompt_tokens
    return MAX_T5_TOKENS


def load_token_counter(tokenizer: str | None) -> tuple[TokenCounter, str]:
    """(counter, description): T5 tokens counted with the given tokenizer (a hub id, a tokenizer
    folder, a pipeline folder with tokenizer/, or a model preset), else estimated."""
    if not tokenizer:
        return estimate_t5_tokens, "estimated T5 tokens (no --tokenizer given)"
    from pathlib import Path

    from transformers import AutoTokenizer

    from medart_core.model_presets import PRESETS

    if tokenizer in PRESETS:  # a PixArt-Sigma transformer repository has no tokenizer; its components one has
        tokenizer = PRESETS[tokenizer].components_repo
    path = Path(tokenizer)
    attempts = [{"subfolder": "tokenizer"}] if (path / "tokenizer").is_dir() else [{}, {"subfolder": "tokenizer"}]
    errors = []
    for kwargs in attempts:
        try:
            loaded = AutoTokenizer.from_pretrained(tokenizer, **kwargs)
            break
        except Exception as err:  # transformers raises OSError, ValueError, HF hub errors...
            errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
    else:
        raise MedArtError(f"cannot load tokenizer {tokenizer!r} ({errors[-1]}); pass a local tokenizer folder "
                          "or a PixArt pipeline folder, or leave out --tokenizer to use the estimate")

    def count(text: str) -> int:
        return len(loaded(text, add_special_tokens=True).input_ids)

    return count, f"T5 tokens counted with {tokenizer}"


@dataclass(frozen=True)
class Rules:
    """What a description of one image must satisfy."""

    simple_caption: str
    features: tuple[str, ...]
    count_tokens: TokenCounter = estimate_t5_tokens
    max_tokens: int = MAX_T5_TOKENS
    parrot_run: int = 3  # this many feature names in a row, joined only by commas/and/or, is parroting

    def hint(self, rule: str, max_words: int) -> str:
        return RETRY_HINTS[rule].format(simple_caption=self.simple_caption, max_words=max_words)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(" .:;,")


def starts_with_simple_caption(text: str, simple_caption: str) -> bool:
    """Case and spacing do not matter; the caption must be followed by a word boundary."""
    head, caption = " ".join(text.lower().split()), _normalise(simple_caption)
    return head.startswith(caption) and (len(head) == len(caption) or not head[len(caption)].isalnum())


def parroting_pattern(features: tuple[str, ...], run: int) -> re.Pattern | None:
    """A regex for `run` or more feature names in a row joined only by separators — the shape of
    the instruction's list echoed back, not of a description ("pink, round" has no feature names)."""
    if len(features) < 2:
        return None
    names = "|".join(re.escape(f.lower()) for f in sorted(features, key=len, reverse=True))
    separator = r"\s*(?:,|;|/|\band\b|\bor\b|,\s*and\b|,\s*or\b)\s*"
    needed = min(run, len(features))
    return re.compile(rf"\b(?:{names})\b(?:{separator}\b(?:{names})\b){{{needed - 1},}}")


def parrots_features(text: str, rules: Rules) -> bool:
    pattern = parroting_pattern(rules.features, rules.parrot_run)
    return bool(pattern and pattern.search(" ".join(text.lower().split())))


def check_description(text: str, rules: Rules) -> str | None:
    """The first rule `text` breaks (EMPTY, MISSING_SIMPLE_CAPTION, PARROTS_FEATURES, TOO_LONG), or None."""
    if not text.strip():
        return EMPTY
    if not starts_with_simple_caption(text, rules.simple_caption):
        return MISSING_SIMPLE_CAPTION
    if parrots_features(text, rules):
        return PARROTS_FEATURES
    if rules.count_tokens(text) > rules.max_tokens:
        return TOO_LONG
    return None


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def shorten_to_budget(text: str, rules: Rules) -> str:
    """The longest run of whole leading sentences within the token budget. If even the first
    sentence is too long, it is cut at the last word that fits and closed with a full stop."""
    kept: list[str] = []
    for sentence in split_sentences(text):
        if rules.count_tokens(" ".join(kept + [sentence])) > rules.max_tokens:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept)
    words = text.split()
    low, high = 0, len(words)  # binary search: the most words whose text (plus ".") fits
    while low < high:
        middle = (low + high + 1) // 2
        if rules.count_tokens(" ".join(words[:middle]).rstrip(",;:") + ".") <= rules.max_tokens:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        raise MedArtError(f"the simple caption {rules.simple_caption!r} alone is over the {rules.max_tokens}-token budget")
    return " ".join(words[:low]).rstrip(",;:.") + "."


def repair_description(text: str, rules: Rules) -> str:
    """Make a text that still breaks a rule after the last retry pass, keeping as much of it as
    possible: parroting sentences dropped, the simple caption put in front, then shortened."""
    sentences = [s for s in split_sentences(text) if not parrots_features(s, rules)]
    text = " ".join(sentences)
    if not starts_with_simple_caption(text, rules.simple_caption):
        caption = rules.simple_caption.rstrip(" .")
        text = f"{caption}. {text}" if text else f"{caption}."
    if rules.count_tokens(text) > rules.max_tokens:
        text = shorten_to_budget(text, rules)
    return text
