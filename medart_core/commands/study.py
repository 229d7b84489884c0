"""`python -m medart_core study report`: a reader study's results and exports from the review store."""

from __future__ import annotations

import argparse

HELP = "reader studies (real versus synthetic): `study report` writes a study's results and exports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = actions.add_parser("report", help="write answers.csv, summary.json, ratings.csv (MINIM's layout), "
                                               "roc.png and per_class.png of one study",
                                description="write answers.csv, summary.json, ratings.csv, roc.png and per_class.png")
    report.add_argument("--db", default=None,
                        help="review store: SQLite file path or postgresql+psycopg:// URL (default: the app's, "
                             "review.sqlite in the user data folder or a Space's /data/medart)")
    report.add_argument("--study", required=True, help="the study's name, as created in the app or by create_study")
    report.add_argument("--out", required=True, help="output folder; each file in it is replaced atomically")


def run(args: argparse.Namespace) -> None:
    from medart_core.store import ReviewStore
    from medart_core.store.location import DEFAULT_DB_NAME, default_home
    from medart_core.study_report import write_report

    db = args.db or default_home()[0] / DEFAULT_DB_NAME
    with ReviewStore(db) as store:
        paths = write_report(store, args.study, args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
