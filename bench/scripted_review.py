"""A SCRIPTED team-review session on the demo data, for the README's Dashboard figures.

Nobody reviewed anything here: three scripted reviewers (alice an admin, bob and carol) work
through the real store API with `approvals_required=2`. Each label has one scripted correction a
clinician might make to the offline fallback captioner's draft (e.g. fundus: "mostly red" becomes
"mostly orange-red" and the vessels are named); a reviewer applies it with their own scripted
rate, else accepts the draft, and now and then flags. Some images are read independently by bob
and carol and adjudicated by alice; the rest are assigned round-robin, two reviewers per image.
The figures therefore show what the dashboard computes, not how good the captioner is; the
seconds per image are the script's, not a person's.

    python bench/scripted_review.py [--out docs] [--images 120] [--double 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REVIEWERS = ("alice", "bob", "carol")
EDIT_RATE = {"alice": 0.5, "bob": 0.7, "carol": 0.35}  # how often each corrects a draft
FLAG_RATE = 0.04
GUIDELINES = """# Labelling guidelines (scripted session)

- Start with the simple caption (modality and view); keep it.
- Name the anatomy you can see; say which structures are bright or dark.
- Colour words for the tissue, not for the background.
- Flag an image that is unreadable or mislabelled, and say why.
"""
# (find, replace) steps of the scripted correction per label; a reviewer applies some or all of them.
CORRECTIONS = {
    "fundus": [("mostly red", "mostly orange-red"), ("; moderately bright", " with retinal vessels visible; moderately bright")],
    "histology-ihc": [(" and orange areas", " areas"), ("coarse, heterogeneous texture", "brown DAB-stained nuclei in glands")],
    "head-ct-axial": [("coarse, heterogeneous texture", "bright white skull around the brain"), ("mostly dark grey", "mostly grey")],
    "brain-mri-axial": [("coarse, heterogeneous texture", "clear grey-white matter contrast and dark ventricles")],
    "brain-mri-coronal": [("coarse, heterogeneous texture", "clear grey-white matter contrast and dark ventricles")],
    "brain-mri-sagittal": [("coarse, heterogeneous texture", "the corpus callosum bright"), ("on a dark background", "")],
}


def corrected(text: str, label: str, rng: random.Random, whole: bool) -> str:
    steps = CORRECTIONS.get(label, [])
    chosen = steps if whole else [s for s in steps if rng.random() < 0.6] or steps[:1]
    for find, replacement in chosen:
        text = text.replace(find, replacement)
    return " ".join(text.split())


def decide(reviewer: str, rng: random.Random) -> str:
    roll = rng.random()
    return "flag" if roll < FLAG_RATE else "edit" if roll < FLAG_RATE + EDIT_RATE[reviewer] else "accept"


def review_ordinary(store, key: str, label: str, readers: list[str], rng: random.Random) -> None:
    """The first reader corrects, accepts or flags; the second approves what is there (or corrects it further)."""
    first, second = readers
    entry = store.get(key)
    choice = decide(first, rng)
    if choice == "flag":
        store.flag(key, "scripted: the slice looks mislabelled", revision=entry.revision, author=first)
        return
    if choice == "edit":
        fixed = corrected(entry.text, label, rng, whole=False)
        if fixed != entry.text:
            entry = store.get(key)
            store.save(key, fixed, revision=entry.revision, author=first)
    store.approve(key, revision=store.get(key).revision, author=first)
    entry = store.get(key)
    if decide(second, rng) == "edit":
        fixed = corrected(entry.text, label, rng, whole=True)
        if fixed != entry.text:
            store.save(key, fixed, revision=entry.revision, author=second)
            store.approve(key, revision=store.get(key).revision, author=second)
            store.approve(key, revision=store.get(key).revision, author=first)
            return
    store.approve(key, revision=entry.revision, author=second)


def read_independently(store, team, key: str, label: str, rng: random.Random) -> None:
    """bob and carol each write a version; alice adjudicates (the most edited version) and, with bob, approves."""
    draft = store.get(key)
    versions = []
    for reader in ("bob", "carol"):
        choice = decide(reader, rng)
        text = corrected(draft.text, label, rng, whole=False) if choice == "edit" else draft.text
        reason = "scripted: artefact at the edge" if choice == "flag" else ""
        versions.append(team.submit_version(store, key, text, revision=draft.revision, author=reader, reason=reason))
    chosen = max(versions, key=lambda v: (v.decision == "edit", len(v.text)))
    settled = team.adjudicate(store, key, chosen.text, revision=draft.revision, author="alice")
    store.approve(key, revision=settled.number, author="alice")
    store.approve(key, revision=store.get(key).revision, author="bob")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from medart_core.review_stats import review_stats, stats_figure
    from medart_core.store import ReviewStore, import_dataset, team

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "assets" / "demo"), help="imagefolder to review (default: the demo)")
    parser.add_argument("--out", default=str(ROOT / "docs"),
                        help="folder for team-review-stats.json and team-review-dashboard.png (default: docs/)")
    parser.add_argument("--images", type=int, default=120, help="train images reviewed (default 120)")
    parser.add_argument("--double", type=int, default=30, help="of them, read independently by two (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scripted choices (default 0)")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, ReviewStore(Path(folder) / "review.sqlite",
                                                             approvals_required=2) as store:
        import_dataset(store, args.data, author="import")
        team.set_guidelines(store, GUIDELINES, author="alice")
        train = [e for e in store.entries(split="train")]
        chosen = sorted(rng.sample(train, min(args.images, len(train))), key=lambda e: e.key)
        double, ordinary = chosen[: args.double], chosen[args.double:]
        team.assign(store, [e.key for e in double], ["bob", "carol"], independent=True, by="alice")
        team.assign(store, [e.key for e in ordinary], list(REVIEWERS), mode="round-robin", per_image=2, by="alice")
        for entry in tqdm(chosen, desc="scripted review", unit="image"):
            if entry in double:
                read_independently(store, team, entry.key, entry.label, rng)
            else:
                readers = [r for r in REVIEWERS if entry.key in team.queue(store, r)]
                review_ordinary(store, entry.key, entry.label, readers, rng)
        stats = review_stats(store)
        stats_figure(stats).savefig(out / "team-review-dashboard.png", dpi=90)
        (out / "team-review-stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
        counts = store.counts()
    drafts, agreement = stats["draft_edits"], stats["agreement"]
    print(f"store: {counts}")
    print(f"draft edits: {drafts['images']} images, mean edit distance {drafts['mean_edit_distance']}, "
          f"unchanged {drafts['unchanged']}")
    print(f"agreement: {agreement['images']} images, {agreement['method']} kappa {agreement.get('kappa')}, "
          f"versions' edit distance {agreement['version_edit_distance']}, token F1 {agreement['version_token_f1']}")
    print(f"wrote {out / 'team-review-stats.json'} and {out / 'team-review-dashboard.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
