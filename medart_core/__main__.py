"""Command line: `python -m medart_core <command> --help` explains each command's options."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medart_core.errors import MedArtError

COMMANDS = {
    "generate": "medart_core.commands.generate",
    "caption": "medart_core.commands.caption",
    "evaluate": "medart_core.commands.evaluate",
    "export": "medart_core.commands.export",
    "convert": "medart_core.commands.convert",
    "check-splits": "medart_core.commands.check_splits",
    "privacy": "medart_core.commands.privacy",
    "accounts": "medart_core.commands.accounts",
    "study": "medart_core.commands.study",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medart_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        status = args.run(args)  # a command may answer with an exit status (check-splits: 1 = leakage found)
    except MedArtError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
