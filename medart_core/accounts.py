"""Team accounts for the app: who may sign in, with which role, checked against argon2id hashes.

The file holds one account per line, `USER:ROLE:HASH` (# starts a comment), the hash an argon2id
string from argon2-cffi; the password itself is never written. Plain `USER:PASS` lines (the
format before roles) are still read, as admins, and `accounts convert` hashes them in place.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from medart_core.errors import MedArtError

ROLES = ("admin", "reviewer", "reader")
LEGACY_ROLE = "admin"  # plain USER:PASS accounts could do everything before roles existed
HASH_PREFIX = "$argon2"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Account:
    user: str
    role: str
    secret: str  # an argon2 hash, or the plain password of a legacy line
    line: int = 0  # where it was read, for messages

    @property
    def hashed(self) -> bool:
        return self.secret.startswith(HASH_PREFIX)


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's current recommended cost


def hash_password(password: str) -> str:
    if not password:
        raise MedArtError("the password is empty")
    return _hasher().hash(password)


def check_user_name(user: str) -> str:
    user = user.strip()
    if not user or ":" in user or any(c.isspace() for c in user):
        raise MedArtError(f"{user!r} is not a user name: no spaces and no ':'")
    return user


def check_role(role: str) -> str:
    if role not in ROLES:
        raise MedArtError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def parse_accounts(text: str, where: str) -> list[Account]:
    """The accounts of a file's text; a malformed line is refused with its number."""
    from argon2 import extract_parameters
    from argon2.exceptions import InvalidHashError

    accounts: dict[str, Account] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        role, _, secret = rest.partition(":")
        try:
            if not sep or not rest:
                raise MedArtError("not USER:ROLE:HASH (nor a plain USER:PASS)")
            user = check_user_name(user)
            if secret.startswith(HASH_PREFIX):
                check_role(role)
                try:
                    extract_parameters(secret)
                except InvalidHashError:
                    raise MedArtError("the hash is not an argon2 hash") from None
                account = Account(user, role, secret, number)
            else:  # legacy USER:PASS; the password may itself contain ':'
                account = Account(user, LEGACY_ROLE, rest, number)
            if user in accounts:
                raise MedArtError(f"{user!r} is also on line {accounts[user].line}")
        except MedArtError as err:
            raise MedArtError(f"{where}, line {number}: {err}") from None
        accounts[user] = account
    return list(accounts.values())


def read_accounts_file(path: str | Path) -> list[Account]:
    path = Path(path)
    if not path.is_file():
        raise MedArtError(f"accounts file {path} not found (create it with: python -m medart_core accounts add USER "
                          f"--role ROLE --file {path})")
    return parse_accounts(path.read_text(encoding="utf-8"), str(path))


def format_accounts(accounts: list[Account]) -> str:
    header = "# Med-Art accounts: USER:ROLE:HASH (argon2id). Edit with `python -m medart_core accounts`.\n"
    return header + "".join(f"{a.user}:{a.role}:{a.secret}\n" for a in accounts)


def write_accounts_file(path: str | Path, accounts: list[Account]) -> None:
    """Replace the file atomically, readable by its owner only (it holds hashes, but they can be
    attacked offline)."""
    from medart_core.data import write_text_atomic

    write_text_atomic(path, format_accounts(accounts), mode=0o600)


def plain_accounts_warning(accounts: list[Account], where: str) -> str | None:
    plain = [a.user for a in accounts if not a.hashed]
    if not plain:
        return None
    return (f"{where}: {len(plain)} account(s) with a plain password ({', '.join(plain)}), signed in as "
            f"{LEGACY_ROLE}; hash them with: python -m medart_core accounts convert --file FILE")


class Verifier:
    """Checks a sign-in in constant time per account; an unknown user is checked against a dummy
    hash, so the time taken does not tell which names exist."""

    def __init__(self, accounts: list[Account]):
        self.accounts = {a.user: a for a in accounts}
        self._hasher = _hasher()
        self._dummy = self._hasher.hash("no such user; this hash only costs the same time")

    def role(self, user: str | None) -> str | None:
        account = self.accounts.get(user or "")
        return account.role if account else None

    def __call__(self, user: str, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        account = self.accounts.get(user)
        if account is not None and not account.hashed:
            ok = hmac.compare_digest(password.encode(), account.secret.encode())
        else:
            try:
                ok = self._hasher.verify(account.secret if account else self._dummy, password) and account is not None
            except (VerificationError, InvalidHashError):
                ok = False
        if not ok:
            logger.warning("failed sign-in for user %r", user)  # never the password
        return ok
