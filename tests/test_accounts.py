"""The accounts file and its command: argon2id hashes and never a password, a changed password
works and the old one does not, a malformed file is refused with the line number, sign-in checks
unknown users as slowly as known ones and logs no password."""

from __future__ import annotations

import contextlib
import io
import logging
import stat
import sys
from types import SimpleNamespace

import pytest

from medart_core.accounts import Verifier, parse_accounts, read_accounts_file
from medart_core.errors import MedArtError


def accounts_command(*args: str, password: str | None = None) -> SimpleNamespace:
    """`python -m medart_core accounts ...` (its main, in this process) with the password on a
    standard input that is not a terminal, as a pipe gives it."""
    from medart_core.__main__ import main

    out, err, stdin = io.StringIO(), io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(password or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["accounts", *args])
    finally:
        sys.stdin = stdin
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_the_file_holds_hashes_and_a_changed_password_replaces_the_old(tmp_path):
    path = tmp_path / "team" / "accounts.txt"
    added = accounts_command("add", "dana", "--role", "reviewer", "--file", str(path), password="first secret\n")
    assert added.returncode == 0, added.stderr
    assert "first secret" not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [account] = read_accounts_file(path)
    assert (account.user, account.role) == ("dana", "reviewer") and account.secret.startswith("$argon2id$")
    assert Verifier([account])("dana", "first secret")

    changed = accounts_command("passwd", "dana", "--file", str(path), password="second secret\n")
    assert changed.returncode == 0, changed.stderr
    verify = Verifier(read_accounts_file(path))
    assert verify("dana", "second secret") and not verify("dana", "first secret")
    assert verify.role("dana") == "reviewer"

    listing = accounts_command("list", "--file", str(path))
    assert listing.stdout.split() == ["dana", "reviewer"] and "$argon2" not in listing.stdout
    assert accounts_command("add", "dana", "--role", "admin", "--file", str(path), password="x\n").returncode == 2
    assert accounts_command("remove", "dana", "--file", str(path)).returncode == 0
    assert read_accounts_file(path) == []


def test_plain_lines_are_read_as_admins_and_converted_in_place(tmp_path):
    path = tmp_path / "old.txt"
    path.write_text("# before roles\nerin:pass:with:colons\n")
    [legacy] = read_accounts_file(path)
    assert (legacy.role, legacy.hashed, legacy.secret) == ("admin", False, "pass:with:colons")
    assert accounts_command("convert", "--file", str(path)).returncode == 0
    [converted] = read_accounts_file(path)
    assert converted.hashed and "pass:with:colons" not in path.read_text()
    assert Verifier([converted])("erin", "pass:with:colons")


@pytest.mark.parametrize("text, line, why", [
    ("ok:admin:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\nnocolon\n", 2, "not USER:ROLE:HASH"),
    ("# comment\n\nfrank:boss:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA\n", 3, "unknown role"),
    ("gina:reader:$argon2id$broken\n", 1, "not an argon2 hash"),
    ("hal:x\nhal:y\n", 2, "also on line 1"),
    ("bad name:reader:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA\n", 1, "not a user name"),
])
def test_a_malformed_file_is_refused_with_the_line_number(tmp_path, text, line, why):
    path = tmp_path / "accounts.txt"
    path.write_text(text)
    with pytest.raises(MedArtError, match=f"line {line}: .*{why}"):
        read_accounts_file(path)
    listing = accounts_command("list", "--file", str(path))
    assert listing.returncode == 2 and f"line {line}" in listing.stderr and listing.stderr.count("\n") == 1


def test_sign_in_checks_unknown_users_against_a_hash_and_logs_no_password(caplog, team_accounts):
    verify = Verifier(read_accounts_file(team_accounts))
    checked, hasher = [], verify._hasher

    class Recording:  # argon2's PasswordHasher has slots: wrap it to see which hash each sign-in checks
        def verify(self, hash_, password):
            checked.append(hash_)
            return hasher.verify(hash_, password)

    verify._hasher = Recording()
    with caplog.at_level(logging.WARNING, logger="medart_core.accounts"):
        assert not verify("nobody", "guess-one")
        assert not verify("alice", "guess-two")
    assert len(checked) == 2 and checked[0] == verify._dummy  # the unknown name costs one argon2 check too
    assert "nobody" in caplog.text and "alice" in caplog.text
    assert "guess-one" not in caplog.text and "guess-two" not in caplog.text


def test_parse_accounts_keeps_roles(team_accounts):
    roles = {a.user: a.role for a in parse_accounts(team_accounts.read_text(), "x")}
    assert roles == {"alice": "admin", "bob": "reviewer", "carol": "reader"}
