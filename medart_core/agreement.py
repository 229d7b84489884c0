"""Agreement between readers: Cohen's kappa for two, Fleiss' kappa for more, from scikit-learn and
statsmodels. Shared by the review dashboard (independent double reading) and the reader study.

Kappa is undefined when chance agreement is 1 (every rating the same category, or fewer than two
items); such a figure is a `Figure` with value None and the reason, so JSON gets `null` and a
sentence instead of NaN."""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple


class Figure(NamedTuple):
    """A statistic that may be undefined: `value` a float, or None with `reason` saying why."""
    value: float | None
    reason: str | None = None

    def as_json(self, name: str) -> dict:
        """`{name: value}`, plus `{name}_reason` when the value is null."""
        return {name: self.value} if self.value is not None else {name: None, f"{name}_reason": self.reason}


def _defined(value: float, reason: str) -> Figure:
    return Figure(float(value)) if math.isfinite(value) else Figure(None, reason)


def _one_category(labels) -> str:
    return f"every rating is {sorted(map(str, set(labels)))[0]!r}: kappa is undefined when chance agreement is 1"


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> Figure:
    """Cohen's kappa of two raters' labels for the same items, in the same order."""
    from sklearn.metrics import cohen_kappa_score

    if len(first) != len(second):
        raise ValueError(f"two raters' labels differ in length ({len(first)} vs {len(second)})")
    if len(first) < 2:
        return Figure(None, f"{len(first)} item(s) rated by both: kappa needs at least 2")
    labels = [str(x) for x in (*first, *second)]
    if len(set(labels)) < 2:
        return Figure(None, _one_category(labels))
    kappa = cohen_kappa_score([str(x) for x in first], [str(x) for x in second])
    return _defined(kappa, "chance agreement is 1")


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> Figure:
    """Fleiss' kappa: one row per item, holding the labels its raters gave (the same number per row)."""
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

    counts = {len(row) for row in ratings}
    if len(counts) > 1:
        raise ValueError(f"every item needs the same number of ratings for Fleiss' kappa (found {sorted(counts)})")
    if len(ratings) < 2:
        return Figure(None, f"{len(ratings)} item(s) rated by every reader: kappa needs at least 2")
    if counts.pop() < 2:
        return Figure(None, "Fleiss' kappa needs at least 2 ratings per item")
    labels = [str(x) for row in ratings for x in row]
    if len(set(labels)) < 2:
        return Figure(None, _one_category(labels))
    table, _ = aggregate_raters([[str(x) for x in row] for row in ratings])
    return _defined(statsmodels_fleiss(table, method="fleiss"), "chance agreement is 1")


def agreement(labels_by_rater: Mapping[str, Mapping[Hashable, Hashable]]) -> dict:
    """JSON-ready agreement of raters over the items all of them rated: `method` (cohen for two
    raters, fleiss for more), `kappa` (or null with `kappa_reason`), and `pairwise` Cohen's kappa
    for every pair ("a vs b"), each over the items that pair shares."""
    raters = sorted(labels_by_rater)
    if len(raters) < 2:
        return {"raters": raters, "items": 0, "method": None, "kappa": None,
                "kappa_reason": f"{len(raters)} reader(s): agreement needs at least 2", "pairwise": {}}
    common = set.intersection(*(set(labels_by_rater[r]) for r in raters))
    items = sorted(common, key=str)
    if len(raters) == 2:
        method = "cohen"
        overall = cohen_kappa(*([labels_by_rater[r][i] for i in items] for r in raters))
    else:
        method = "fleiss"
        overall = fleiss_kappa([[labels_by_rater[r][i] for r in raters] for i in items])
    pairwise = {}
    for a, b in itertools.combinations(raters, 2):
        shared = sorted(set(labels_by_rater[a]) & set(labels_by_rater[b]), key=str)
        figure = cohen_kappa([labels_by_rater[a][i] for i in shared], [labels_by_rater[b][i] for i in shared])
        pairwise[f"{a} vs {b}"] = {"items": len(shared), **figure.as_json("kappa")}
    return {"raters": raters, "items": len(items), "method": method, **overall.as_json("kappa"), "pairwise": pairwise}
