"""Pseudonyms that let a dataset be split and checked by patient and by volume without carrying
the identifiers themselves.

  - `patient`: HMAC-SHA256 of the DICOM PatientID under a secret key. A plain hash would not do:
    patient IDs are short and guessable (a hospital's numbering), so anyone could hash every
    candidate and find the patient. The key is made once (32 random bytes) and kept in the
    user's data folder (or MEDART_PATIENT_KEY, or --patient-key: a team shares one key file so
    its pseudonyms agree), never in the dataset.
  - `source_file` of a DICOM series: SHA-256 of its SeriesInstanceUID, the same for every file of
    the series. A UID is long and random, so an unkeyed hash reveals nothing, and anyone holding
    the original series can recompute it (as `sha256sum` recomputes a file's reference).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from medart_core.errors import MedArtError

KEY_FILE = "patient-key"
KEY_ENV = "MEDART_PATIENT_KEY"
KEY_BYTES = 32


def default_key_path() -> Path:
    """MEDART_PATIENT_KEY, else `patient-key` in the user data folder (beside the review store)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    from medart_core.store.location import default_home

    return default_home()[0] / KEY_FILE


def load_or_create_key(path: str | Path | None = None, *, refuse_inside: Path | None = None) -> bytes:
    """The pseudonym key at `path` (default: `default_key_path()`), made on first use, readable by
    its owner only. A key inside `refuse_inside` (the dataset being written) is refused: whoever
    holds the dataset and the key can test guesses of patient IDs."""
    path = Path(path) if path is not None else default_key_path()
    if refuse_inside is not None and path.resolve().is_relative_to(Path(refuse_inside).resolve()):
        raise MedArtError(f"the patient pseudonym key {path} is inside the dataset folder {refuse_inside}; keep it "
                          "outside (default: the user data folder), or the pseudonyms can be reversed by guessing")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two conversions starting at once must not make two keys
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise MedArtError(f"the patient pseudonym key {path} is unreadable or not a hex key ({type(err).__name__}); "
                          "restore it (pseudonyms made with another key will not match)") from None
    if len(key) < 16:
        raise MedArtError(f"the patient pseudonym key {path} is too short ({len(key)} bytes; 16 at least)")
    return key


def patient_pseudonym(patient_id: str, key: bytes) -> str:
    """`patient-` and 16 hex digits of HMAC-SHA256(key, PatientID)."""
    return "patient-" + hmac.new(key, patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def series_reference(series_uid: str) -> str:
    """`dicom-series-` and 16 hex digits of SHA-256(SeriesInstanceUID)."""
    return "dicom-series-" + hashlib.sha256(series_uid.strip().encode("ascii", "replace")).hexdigest()[:16]
