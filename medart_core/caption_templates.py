"""Modality prompt templates for the Visual Symptom Generator: data files, not code.

A template (YAML, shipped in medart_core/templates/captioning/ or the user's own file) says how
the simple caption of a class reads ("An endoscopic image of {label}"), which visual features the
VLM should describe, and the instruction it is given. Adding a modality means adding a file.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from medart_core.errors import MedArtError

TEMPLATE_PACKAGE_DIR = ("templates", "captioning")
PLACEHOLDERS = {"simple_caption", "label", "features", "max_words"}
DEFAULT_MAX_WORDS = 60  # ~100 T5 tokens of English: room under the 120-token budget


@dataclass(frozen=True)
class CaptionTemplate:
    """How images of one modality are described; `source` says which file it came from."""

    name: str
    simple_caption: str  # with {label}
    features: tuple[str, ...]
    instruction: str  # with any of PLACEHOLDERS
    max_words: int = DEFAULT_MAX_WORDS
    source: str = ""

    def simple_caption_for(self, label: str) -> str:
        return self.simple_caption.format(label=humanise_label(label)).strip()

    def prompt(self, simple_caption: str, label: str | None, hint: str = "") -> str:
        """The instruction given to the VLM; a retry appends the hint saying what was wrong."""
        text = self.instruction.format(
            simple_caption=simple_caption,
            label=humanise_label(label) if label else simple_caption,
            features=", ".join(self.features),
            max_words=self.max_words,
        ).strip()
        return f"{text} {hint}".strip() if hint else text


def humanise_label(label: str) -> str:
    """'normal-cecum' -> 'normal cecum': class names are often folder names."""
    return " ".join(str(label).replace("_", " ").replace("-", " ").split())


def builtin_template_names() -> list[str]:
    """Names of the templates shipped with the package (feeds --help and the app's dropdown)."""
    folder = resources.files("medart_core").joinpath(*TEMPLATE_PACKAGE_DIR)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _check_fields(text: str, allowed: set[str], where: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise MedArtError(f"{where}: {err} (write a literal brace as {{{{ or }}}})") from err
    unknown = fields - allowed
    if unknown:
        raise MedArtError(f"{where}: unknown placeholder(s) {', '.join(sorted('{' + f + '}' for f in unknown))}; "
                          f"allowed: {', '.join(sorted('{' + f + '}' for f in allowed))}")


def parse_template(data: object, source: str) -> CaptionTemplate:
    """A CaptionTemplate from a YAML mapping, refusing missing keys and unknown placeholders."""
    if not isinstance(data, dict):
        raise MedArtError(f"template {source}: expected a mapping with name, simple_caption, features, instruction")
    missing = [key for key in ("simple_caption", "features", "instruction") if not data.get(key)]
    if missing:
        raise MedArtError(f"template {source}: missing {', '.join(missing)}")
    features = data["features"]
    if not isinstance(features, list) or not all(isinstance(f, str) and f.strip() for f in features):
        raise MedArtError(f"template {source}: features must be a list of words, e.g. [colour, shape]")
    _check_fields(str(data["simple_caption"]), {"label"}, f"template {source}, simple_caption")
    _check_fields(str(data["instruction"]), PLACEHOLDERS, f"template {source}, instruction")
    max_words = data.get("max_words", DEFAULT_MAX_WORDS)
    if not isinstance(max_words, int) or max_words < 5:
        raise MedArtError(f"template {source}: max_words must be a whole number of at least 5, got {max_words!r}")
    return CaptionTemplate(
        name=str(data.get("name") or Path(source).stem),
        simple_caption=str(data["simple_caption"]),
        features=tuple(f.strip() for f in features),
        instruction=" ".join(str(data["instruction"]).split()),
        max_words=max_words,
        source=source,
    )


@lru_cache(maxsize=64)
def load_template(name_or_path: str) -> CaptionTemplate:
    """A built-in template by name (e.g. "endoscopy") or a user's YAML file by path."""
    import yaml

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise MedArtError(f"template file {path} not found")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        names = builtin_template_names()
        if name_or_path not in names:
            raise MedArtError(f"unknown modality {name_or_path!r}; use one of {', '.join(names)} or a template .yaml file")
        entry = resources.files("medart_core").joinpath(*TEMPLATE_PACKAGE_DIR, f"{name_or_path}.yaml")
        text, source = entry.read_text(encoding="utf-8"), name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # Only the position: the error's own text quotes the offending line, which need not be a template's.
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise MedArtError(f"template {source} is not valid YAML{where}") from None
    return parse_template(data, source)


def load_row_template(modality: str, data_root: str | Path) -> CaptionTemplate:
    """The template a metadata row's `modality` names: a built-in name, or a .yaml/.yml file inside
    the data folder (relative to it). Anything else is refused before it is opened: a metadata file
    must not make the program parse, and quote, any other file of the machine."""
    if modality in builtin_template_names():
        return load_template(modality)
    root = Path(data_root).resolve()
    relative = Path(modality)
    candidate = (root / relative).resolve()
    if relative.is_absolute() or not candidate.is_relative_to(root) or candidate.suffix not in (".yaml", ".yml") \
            or not candidate.is_file():
        raise MedArtError(f"modality {modality[:80]!r} is neither a built-in template ({', '.join(builtin_template_names())}) "
                          "nor a template .yaml file inside the data folder; refused")
    return load_template(str(candidate))
