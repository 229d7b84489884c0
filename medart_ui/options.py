"""The app's command line and who may sign in.

Every option also comes from an environment variable, so a Hugging Face Space is configured
through its settings and secrets. For sign-in, an option given on the command line wins over the
environment; two contradictory settings at the same level are refused at start.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from medart_core.accounts import Account
from medart_core.errors import MedArtError

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "assets" / "demo"
DEMO_MODEL = ROOT / "assets" / "demo_model"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SIGN_IN_ENV = ("MEDART_AUTH", "MEDART_AUTH_FILE", "MEDART_ACCOUNTS", "MEDART_NO_AUTH")
TRUE, FALSE = ("1", "true", "yes"), ("", "0", "false", "no")

logger = logging.getLogger("medart.app")

DESCRIPTION = """Med-Art web app (Gradio): review image descriptions, generate synthetic images, compare them.

Every option also comes from an environment variable (in brackets), so a Hugging Face Space is
configured through its settings and secrets. Sign-in: --auth-file FILE with USER:ROLE:HASH lines
(`python -m medart_core accounts add USER --role ROLE --file FILE` writes it), or its content in
MEDART_ACCOUNTS; an explicit sign-in option wins over the environment.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from medart_core.bases import supported
    from medart_core.model_presets import preset_help

    env = os.environ.get
    parser = argparse.ArgumentParser(prog="app.py", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=env("MEDART_DATA", str(DEMO_DATA)),
                        help="imagefolder dataset imported into the review store at start (env MEDART_DATA; "
                             "default: the bundled demo dataset assets/demo)")
    parser.add_argument("--db", default=env("MEDART_DB"),
                        help="review store: a SQLite file path or a postgresql+psycopg:// URL (env MEDART_DB; default: "
                             "review.sqlite in --home)")
    parser.add_argument("--home", default=env("MEDART_HOME"),
                        help="writable folder for the default store, uploads, generated images and exports (env "
                             "MEDART_HOME; default: the Space's /data/medart when present, else the user data folder)")
    parser.add_argument("--model", default=env("MEDART_MODEL", str(DEMO_MODEL) if DEMO_MODEL.is_dir() else None),
                        help=f"base pipeline: a preset ({preset_help()}), or a hub id or local folder of a "
                             f"supported pipeline ({supported()}), loaded in the background at start (env "
                             "MEDART_MODEL; default: the bundled demo model assets/demo_model when present)")
    parser.add_argument("--lora", default=env("MEDART_LORA"),
                        help="LoRA adapter folder or training output folder (env MEDART_LORA; default: none)")
    parser.add_argument("--vlm", default=env("MEDART_VLM", "fallback"),
                        help="captioner for new images and 'Regenerate': a VLM preset, hub id or folder, or 'fallback' "
                             "(offline, from measured colour and texture) (env MEDART_VLM; default: fallback)")
    parser.add_argument("--host", default=env("MEDART_HOST", env("GRADIO_SERVER_NAME", "127.0.0.1")),
                        help="address to listen on (env MEDART_HOST, or GRADIO_SERVER_NAME as a Space sets it; "
                             "default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=int(env("MEDART_PORT", env("GRADIO_SERVER_PORT", "7860"))),
                        help="port (env MEDART_PORT or GRADIO_SERVER_PORT; default 7860)")
    parser.add_argument("--approvals-required", type=int, default=int(env("MEDART_APPROVALS_REQUIRED", "1")),
                        metavar="N",
                        help="distinct reviewers who must approve a description's current text before it is "
                             "'approved' and exported as approved; fewer make it 'partly-approved', an edit starts "
                             "the count again; kept in the store for the export command (env "
                             "MEDART_APPROVALS_REQUIRED; default 1)")
    # No environment defaults here: sign_in() resolves them, so an explicit option can win.
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--auth", nargs="+", metavar="USER:PASS", default=None,
                     help="admin accounts with plain passwords, for quick local use: the passwords are visible in "
                          "the process list (env MEDART_AUTH, comma-separated; default: none)")
    who.add_argument("--auth-file", default=None, metavar="FILE",
                     help="accounts file, one USER:ROLE:HASH per line (argon2id; plain USER:PASS lines are read as "
                          "admins, with a warning) (env MEDART_AUTH_FILE, or the file's content in MEDART_ACCOUNTS)")
    who.add_argument("--no-auth", action="store_true", default=False,
                     help="no sign-in even when listening beyond this machine; there everyone is then a reviewer "
                          "(on loopback the one user is admin) and edits are recorded as 'anonymous' (env "
                          "MEDART_NO_AUTH=1; default: off)")
    return parser.parse_args(argv)


@dataclass
class SignIn:
    """Who may sign in, and the role of a request when nobody signs in."""

    accounts: list[Account]  # empty: no sign-in
    default_role: str | None  # the role without sign-in; None when accounts are required
    no_auth: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def required(self) -> bool:
        return bool(self.accounts)


def _chosen_source(args: argparse.Namespace, environ) -> tuple[str, str | list[str] | bool]:
    """(where, value) of the one sign-in setting in force: the command line's, else the environment's."""
    explicit = [(name, value) for name, value in (("--auth", args.auth), ("--auth-file", args.auth_file),
                                                  ("--no-auth", args.no_auth)) if value]
    given = [name for name in SIGN_IN_ENV if environ.get(name, "").strip()]
    flag = environ.get("MEDART_NO_AUTH", "").strip().lower()
    if flag not in TRUE + FALSE:
        raise MedArtError(f"MEDART_NO_AUTH={environ['MEDART_NO_AUTH']!r}: use 1 (no sign-in) or 0")
    if flag in FALSE and "MEDART_NO_AUTH" in given:
        given.remove("MEDART_NO_AUTH")
    if explicit:
        if given:
            logger.info("sign-in from the command line (%s); ignoring %s from the environment", explicit[0][0],
                        ", ".join(given))
        return explicit[0]
    if len(given) > 1:
        raise MedArtError(f"contradictory sign-in settings in the environment: {' and '.join(given)}; keep one "
                          "(or give --auth-file, --auth or --no-auth, which win)")
    if not given:
        return "", None
    name = given[0]
    value = environ[name]
    return name, {"MEDART_AUTH": value.replace(",", " ").split(), "MEDART_NO_AUTH": True}.get(name, value)


def sign_in(args: argparse.Namespace, environ=None) -> SignIn:
    """Resolve the sign-in settings; a MedArtError says what is wrong or contradictory."""
    from medart_core.accounts import parse_accounts, plain_accounts_warning, read_accounts_file

    environ = os.environ if environ is None else environ
    where, value = _chosen_source(args, environ)
    beyond = args.host not in LOOPBACK
    warnings = []
    if where in ("--no-auth", "MEDART_NO_AUTH"):
        return SignIn([], "reviewer" if beyond else "admin", no_auth=True)  # a public Space must not be admin
    if where in ("--auth", "MEDART_AUTH"):
        for entry in value:  # each is USER:PASS; a bad one is named, never echoed whole
            if ":" not in entry.strip(":") or not entry.partition(":")[2]:
                raise MedArtError(f"{where}: {entry.split(':')[0]!r} is not USER:PASS")
        accounts = parse_accounts("\n".join(value), where)
        if where == "--auth":
            warnings.append("--auth puts passwords in the process list, visible to every user of this machine: "
                            "for anything but quick local use, write an accounts file with `python -m medart_core "
                            "accounts add USER --role ROLE --file FILE` and pass --auth-file FILE")
    elif where:  # an accounts file, or its content in MEDART_ACCOUNTS
        accounts = parse_accounts(value, where) if where == "MEDART_ACCOUNTS" else read_accounts_file(value)
        warnings += [w for w in [plain_accounts_warning(accounts, value if where != "MEDART_ACCOUNTS" else where)] if w]
    else:
        accounts = []
    if where and not accounts:
        raise MedArtError(f"{where} names no accounts: add one with `python -m medart_core accounts add USER "
                          "--role ROLE --file FILE`, or pass --no-auth")
    if not accounts and beyond:
        raise MedArtError(f"listening on {args.host} lets other machines in: give accounts with --auth-file FILE "
                          "(or --auth USER:PASS), or pass --no-auth to allow anyone")
    return SignIn(accounts, None if accounts else "admin", warnings=warnings)
