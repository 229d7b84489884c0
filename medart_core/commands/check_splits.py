"""`python -m medart_core check-splits`: does anything stand in more than one split of a dataset?"""

from __future__ import annotations

import argparse

HELP = ("check a dataset's splits for leakage: images shared between splits (exact, near-duplicate or mirrored) "
        "and source volumes (source_file) or patients (patient) with images in two splits; exits 1 when anything leaks")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="imagefolder dataset with split folders (train/, validation/, test/)")
    parser.add_argument("--copy-threshold", type=float, default=0.95,
                        help="pixel correlation (32x32 thumbnails, each image and its mirror) at or above which two "
                             "images of different splits are near-duplicates, as in the memorisation audit "
                             "(default: 0.95)")
    parser.add_argument("--out", default=None,
                        help="JSON file for the findings (every shared image, source_file and patient; paths relative "
                             "to --data) (default: DATA-leakage.json beside the dataset)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per reading batch (default: 32)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medart_core.data import split_folders, write_json_atomic
    from medart_core.errors import MedArtError
    from medart_core.metrics.leakage import check_leakage, summary_lines
    from medart_core.metrics.sets import load_set

    if not 0 < args.copy_threshold <= 1:
        raise MedArtError(f"--copy-threshold must be in (0, 1], got {args.copy_threshold}")
    data = Path(args.data)
    splits = [name for name, _ in split_folders(data) if name is not None]
    if len(splits) < 2:
        raise MedArtError(f"{data} has {'only the split ' + splits[0] if splits else 'no split folders'}: "
                          "leakage is checked between train/, validation/ and test/ folders")
    sets = [load_set(name, data, prefer=(name,)) for name in splits]
    result = check_leakage(sets, args.copy_threshold, args.batch_size, progress=not args.no_progress)
    out = Path(args.out) if args.out else data.parent / f"{data.resolve().name}-leakage.json"
    write_json_atomic(out, {"data": data.resolve().name, **result})
    print("\n".join(summary_lines(result)))
    print(f"findings: {out}")
    return 1 if result["leaks"] else 0
