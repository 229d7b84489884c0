"""The team-review dashboard's figures: what each reviewer did and how fast, how well independent
readers agree, how much clinicians changed the captioner's drafts before approving them, and the
words they most often removed and added (feedback for the modality templates).

Distances come from rapidfuzz (`Levenshtein.normalized_distance`, 0 = same text, 1 = nothing in
common), kappa from medart_core.agreement (scikit-learn / statsmodels). Words are rapidfuzz's
default tokenisation (`utils.default_process`: lower case, non-alphanumerics become spaces, then
split on spaces); the word lists leave out scikit-learn's English stop words.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import numpy as np
from sqlalchemy import select

from medart_core.agreement import agreement as kappa_agreement
from medart_core.store.review import HUMAN, ReviewStore, _as_utc, _revision
from medart_core.store.schema import images, revisions
from medart_core.store.team import PEOPLES_ACTIONS, all_versions

GAP_CAP_SECONDS = 600  # a longer pause between two actions is a break, not time spent on an image
TOP_WORDS = 15
EDITING = ("edit", "revert", "replace", "adjudicate")


def words(text: str) -> list[str]:
    from rapidfuzz.utils import default_process

    return default_process(text or "").split()


def edit_distance(a: str, b: str) -> float:
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(a or "", b or ""))


def token_f1(a: str, b: str) -> float:
    """F1 of the two texts' words as multisets (1 = the same words, in any order)."""
    first, second = Counter(words(a)), Counter(words(b))
    total = sum(first.values()) + sum(second.values())
    if total == 0:
        return 1.0
    return 2 * sum((first & second).values()) / total


def _mean(values) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def _median(values) -> float | None:
    return round(float(np.median(values)), 4) if len(values) else None


def _history_by_image(store: ReviewStore):
    """{key: (label, [Revision, ...])}, every image's history in order."""
    query = (select(revisions, images.c.key, images.c.label).join(images, images.c.id == revisions.c.image_id)
             .order_by(images.c.key, revisions.c.number))
    by_image: dict[str, tuple[str | None, list]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            by_image.setdefault(row.key, (row.label, []))[1].append(_revision(row))
    return by_image


def reviewer_figures(by_image, versions) -> dict:
    """Per person: images done (acted on), approvals, flags, edits (independent versions included:
    accepting the draft unchanged counts as an approval), and the median seconds between their
    consecutive actions, each gap capped at GAP_CAP_SECONDS (bulk replacements left out)."""
    counts = defaultdict(lambda: {"images": set(), "approved": 0, "flagged": 0, "edited": 0, "times": []})
    for key, (_, history) in by_image.items():
        for rev in history:
            if rev.action not in PEOPLES_ACTIONS:
                continue
            person = counts[rev.author]
            person["images"].add(key)
            if rev.action != "replace":  # a bulk replace stamps many images at once: no time per image
                person["times"].append(rev.created_at)
            person["approved" if rev.action == "approve" else "flagged" if rev.action == "flag" else "edited"] += 1
    for version in versions:
        person = counts[version.author]
        person["images"].add(version.key)
        person["times"].append(version.created_at)
        person["flagged" if version.decision == "flag" else "edited" if version.decision == "edit" else "approved"] += 1
    figures = {}
    for name, person in sorted(counts.items()):
        times = sorted(t.timestamp() for t in person["times"])
        gaps = np.minimum(np.diff(times), GAP_CAP_SECONDS) if len(times) > 1 else []
        figures[name] = {"done": len(person["images"]), "approved": person["approved"], "flagged": person["flagged"],
                         "edited": person["edited"], "median_seconds_per_image": _median(gaps)}
    return figures


def agreement_figures(versions) -> dict:
    """Agreement of independent readers on the decision per image (accept the draft unchanged,
    edit, flag): Cohen's kappa for two readers, Fleiss' for more (medart_core.agreement), and the
    similarity of the versions of the same image (mean pairwise edit distance and token F1)."""
    rounds = defaultdict(list)  # one reading round: the versions of an image made from the same draft
    for version in versions:
        rounds[(version.key, version.draft_revision)].append(version)
    double = {item: vs for item, vs in rounds.items() if len({v.author for v in vs}) >= 2}
    decisions: dict[str, dict] = defaultdict(dict)
    distances, f1s = [], []
    for item, vs in double.items():
        for version in vs:
            decisions[version.author][f"{item[0]}@{item[1]}"] = version.decision
        for a, b in itertools.combinations(vs, 2):
            distances.append(edit_distance(a.text, b.text))
            f1s.append(token_f1(a.text, b.text))
    figures = kappa_agreement(decisions)
    return {"images": len(double), **figures,
            "decisions": dict(Counter(v.decision for vs in double.values() for v in vs)),
            "version_edit_distance": _mean(distances), "version_token_f1": _mean(f1s)}


def approved_drafts(by_image) -> list[dict]:
    """Every description with at least one approval of its current text, next to the captioner's
    draft it started from (the last text not written by a person); texts imported as human have
    no draft and are left out."""
    pairs = []
    for key, (label, history) in by_image.items():
        last = history[-1]
        if last.status not in ("approved", "partly-approved"):
            continue
        draft = next((r for r in reversed(history) if r.source != HUMAN and r.action not in ("approve", "flag")), None)
        if draft is not None:
            pairs.append({"key": key, "label": label or "", "source": draft.source, "draft": draft.text,
                          "final": last.text})
    return pairs


def draft_edit_figures(pairs: list[dict]) -> dict:
    """How much the drafts were changed before approval: normalised edit distance overall, per
    class and per captioner source."""
    def summary(group):
        values = [edit_distance(p["draft"], p["final"]) for p in group]
        return {"images": len(values), "mean_edit_distance": _mean(values), "median_edit_distance": _median(values),
                "unchanged": sum(v == 0 for v in values)}

    by = lambda field: {name: summary(list(group)) for name, group in itertools.groupby(  # noqa: E731
        sorted(pairs, key=lambda p: p[field]), key=lambda p: p[field])}
    return {**summary(pairs), "by_label": by("label"), "by_source": by("source")}


def word_changes(pairs: list[dict]) -> dict:
    """The words most often removed from and added to the drafts: [[word, times], ...], most first."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    removed, added = Counter(), Counter()
    for p in pairs:
        draft, final = Counter(words(p["draft"])), Counter(words(p["final"]))
        removed += draft - final
        added += final - draft
    keep = lambda counter: [[w, n] for w, n in counter.most_common() if w not in ENGLISH_STOP_WORDS  # noqa: E731
                            and not w.isdigit()][:TOP_WORDS]
    return {"removed": keep(removed), "added": keep(added)}


def review_stats(store: ReviewStore) -> dict:
    """The dashboard's JSON: {reviewers, agreement, draft_edits, words}."""
    by_image, versions = _history_by_image(store), all_versions(store)
    pairs = approved_drafts(by_image)
    return {"reviewers": reviewer_figures(by_image, versions), "agreement": agreement_figures(versions),
            "draft_edits": draft_edit_figures(pairs), "words": word_changes(pairs)}


def stats_figure(stats: dict):
    """One matplotlib figure of the dashboard: work per reviewer, draft edit distance per class,
    and the words most removed and added."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 7.5), layout="constrained")
    (work, per_class), (removed, added) = figure.subplots(2, 2)
    people = list(stats["reviewers"])
    x = np.arange(len(people))
    for offset, field in enumerate(("approved", "edited", "flagged")):
        work.bar(x + (offset - 1) * 0.27, [stats["reviewers"][p][field] for p in people], 0.27, label=field)
    work.set_xticks(x, people, rotation=20)
    work.set_title("Actions per reviewer")
    work.legend()
    by_label = stats["draft_edits"]["by_label"]
    per_class.barh(list(by_label), [g["mean_edit_distance"] or 0 for g in by_label.values()], color="tab:purple")
    per_class.set_xlim(0, 1)
    per_class.set_title("How much the drafts were changed before approval\n(mean normalised edit distance)")
    for axes, field, colour in ((removed, "removed", "tab:red"), (added, "added", "tab:green")):
        pairs = stats["words"][field][::-1]
        axes.barh([w for w, _ in pairs], [n for _, n in pairs], color=colour)
        axes.set_title(f"Words reviewers most often {field}")
    for axes, empty in ((work, not people), (per_class, not by_label), (removed, not stats["words"]["removed"]),
                        (added, not stats["words"]["added"])):
        if empty:
            axes.set_axis_off()
            axes.text(0.5, 0.5, "nothing approved or reviewed yet", ha="center", va="center", color="grey")
    return figure
