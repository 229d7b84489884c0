"""`python -m medart_core export`: reviewed descriptions from the review store -> an imagefolder for training."""

from __future__ import annotations

import argparse

HELP = "export the review store's approved (or all) descriptions as an imagefolder with metadata.jsonl per split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None,
                        help="review store: SQLite file path or postgresql+psycopg:// URL (default: the app's, "
                             "review.sqlite in the user data folder or a Space's /data/medart)")
    parser.add_argument("--out", required=True,
                        help="output folder: images are copied in (unless already there) and each split folder gets "
                             "its metadata.jsonl, replaced atomically")
    parser.add_argument("--all", action="store_true",
                        help="export every description, reviewed or not (default: approved ones only)")
    parser.add_argument("--import-data", default=None, metavar="DIR",
                        help="first import this imagefolder into the store (images already there keep their reviews)")


def run(args: argparse.Namespace) -> None:
    from medart_core.store import ReviewStore, export_dataset, import_dataset
    from medart_core.store.location import DEFAULT_DB_NAME, default_home

    db = args.db or default_home()[0] / DEFAULT_DB_NAME
    with ReviewStore(db) as store:
        if args.import_data:
            print(import_dataset(store, args.import_data, author="import"))
        summary = export_dataset(store, args.out, approved_only=not args.all)
        counts = store.counts()
        required = store.approvals_required  # the team's rule, kept in the store by the app
    print(f"{summary}; the store holds {counts['approved']} approved of {counts['total']} descriptions "
          f"({required} approval{'s' if required > 1 else ''} required, {counts['partly-approved']} partly approved)")
