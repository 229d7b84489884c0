"""`python -m medart_core accounts add|list|remove|passwd|convert`: the app's sign-in accounts file."""

from __future__ import annotations

import argparse
import sys

from medart_core.errors import MedArtError

HELP = "manage the app's accounts file (USER:ROLE:HASH lines, argon2id hashes; the app reads it with --auth-file)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medart_core.accounts import ROLES

    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    file_help = "the accounts file, replaced atomically and readable by its owner only"
    add = actions.add_parser("add", help="add an account; the password is read from standard input when it is not "
                                         "a terminal, else asked twice without echo")
    add.add_argument("user", help="user name (no spaces, no ':'); every edit records it")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="admin: everything; reviewer: review, generate, compare; reader: only the reader "
                          "studies the user is invited to")
    listing = actions.add_parser("list", help="print user and role of every account (never the hashes)")
    remove = actions.add_parser("remove", help="remove an account")
    remove.add_argument("user")
    passwd = actions.add_parser("passwd", help="set a new password (read as for add); the old one stops working")
    passwd.add_argument("user")
    passwd.add_argument("--role", choices=ROLES, default=None, help="also change the role (default: keep it)")
    convert = actions.add_parser("convert", help="hash the plain USER:PASS lines of an older file in place "
                                                 "(they become admin accounts, as the app treated them)")
    for sub in (add, listing, remove, passwd, convert):
        sub.add_argument("--file", required=True, help=file_help)


def read_new_password(user: str) -> str:
    """From standard input when it is piped (scripts, tests), else asked twice at the terminal."""
    import getpass

    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != password:
            raise MedArtError("the two passwords differ; nothing changed")
    if not password:
        raise MedArtError("the password is empty; nothing changed")
    return password


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from medart_core.accounts import (Account, LEGACY_ROLE, check_user_name, hash_password, read_accounts_file,
                                      write_accounts_file)

    path = Path(args.file)
    accounts = read_accounts_file(path) if (args.action != "add" or path.exists()) else []
    users = {a.user: a for a in accounts}
    user = check_user_name(args.user) if hasattr(args, "user") else None
    if args.action == "list":
        for account in accounts:
            print(f"{account.user}\t{account.role}" + ("" if account.hashed else "\t(plain password: run convert)"))
        return
    if args.action == "add" and user in users:
        raise MedArtError(f"{user} already has an account in {path}; use `accounts passwd {user}` to change it")
    if args.action in ("remove", "passwd") and user not in users:
        raise MedArtError(f"no account {user!r} in {path}")
    if args.action == "add":
        users[user] = Account(user, args.role, hash_password(read_new_password(user)))
    elif args.action == "passwd":
        users[user] = Account(user, args.role or users[user].role, hash_password(read_new_password(user)))
    elif args.action == "remove":
        del users[user]
    elif args.action == "convert":
        users = {name: a if a.hashed else Account(name, LEGACY_ROLE, hash_password(a.secret)) for name, a in users.items()}
    write_accounts_file(path, list(users.values()))
    print(f"{path}: {len(users)} account(s)")
