"""The reader study's statistics: can readers tell synthetic from real?

Positive = synthetic. Per reader, pooled and per class: accuracy, sensitivity (synthetic called
synthetic), specificity (real called real), balanced accuracy, Wilson 95% intervals
(statsmodels), ROC AUC of the confidence-weighted answer (score +confidence for "synthetic",
-confidence for "real"; scikit-learn) with a percentile bootstrap 95% interval, and a binomial
test against 0.5 (scipy). Agreement between readers: Fleiss' and pairwise Cohen's kappa
(medart_core.agreement). Realism of real versus synthetic images: Mann-Whitney U (scipy).

A figure that cannot be computed is null with a `<name>_reason`, never NaN.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from medart_core.agreement import Figure, agreement

BOOTSTRAP_RESAMPLES = 2000
POSITIVE = "synthetic"


def scores(rows: list[dict]) -> np.ndarray:
    """+confidence for "synthetic", -confidence for "real". One constant answer ranks nothing, so
    its scores are all 0 (AUC 0.5) whatever the confidences."""
    if len({r["answer"] for r in rows}) < 2:
        return np.zeros(len(rows))
    return np.array([r["confidence"] if r["answer"] == POSITIVE else -r["confidence"] for r in rows], dtype=float)


def proportion(k: int, n: int, what: str) -> dict:
    """{value, ci} with the Wilson 95% interval, or null with the reason when n is 0."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return {"value": None, "value_reason": f"no {what} trials answered", "ci": None, "k": 0, "n": 0}
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    return {"value": k / n, "ci": [float(low), float(high)], "k": k, "n": n}


def auc(truth: np.ndarray, score: np.ndarray) -> Figure:
    from sklearn.metrics import roc_auc_score

    if len(set(truth.tolist())) < 2:
        return Figure(None, "AUC needs both real and synthetic trials answered")
    return Figure(float(roc_auc_score(truth, score)))


def bootstrap_auc(truth: np.ndarray, rows: list[dict], seed: int) -> Figure | tuple[float, float]:
    """Percentile 95% interval of the AUC over answers resampled with replacement. Vectorised as
    the Mann-Whitney form of the AUC (rank sum of the positives, ties averaged), which is what
    roc_auc_score computes; a resample with one kind of trial only is skipped, and one with a
    single constant answer scores 0.5 as above."""
    from scipy.stats import rankdata

    if len(set(truth.tolist())) < 2:
        return Figure(None, "AUC needs both real and synthetic trials answered")
    answers = np.array([r["answer"] == POSITIVE for r in rows])
    signed = np.where(answers, 1.0, -1.0) * np.array([r["confidence"] for r in rows], dtype=float)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(rows), size=(BOOTSTRAP_RESAMPLES, len(rows)))
    y, a, s = truth[index], answers[index], signed[index]
    constant = a.all(axis=1) | (~a).all(axis=1)
    s = np.where(constant[:, None], 0.0, s)
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    usable = (positives > 0) & (negatives > 0)
    ranks = rankdata(s, axis=1)
    u = (ranks * y).sum(axis=1) - positives * (positives + 1) / 2
    values = (u[usable] / (positives[usable] * negatives[usable]))
    if len(values) < BOOTSTRAP_RESAMPLES // 2:
        return Figure(None, f"only {len(values)} of {BOOTSTRAP_RESAMPLES} resamples held both kinds of trial")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def binomial(correct_real: int, n_real: int, correct_synthetic: int, n_synthetic: int) -> dict:
    """Accuracy against 0.5; with unequal real and synthetic counts, balanced accuracy (its
    successes rounded to k = round(balanced accuracy x n))."""
    from scipy.stats import binomtest

    n = n_real + n_synthetic
    if n == 0:
        return {"tested": None, "p_value": None, "p_value_reason": "no answers"}
    if n_real == n_synthetic or n_real == 0 or n_synthetic == 0:
        tested, k = "accuracy", correct_real + correct_synthetic
    else:
        balanced = (correct_real / n_real + correct_synthetic / n_synthetic) / 2
        tested, k = "balanced accuracy", int(round(balanced * n))
    return {"tested": tested, "k": k, "n": n, "p_value": float(binomtest(k, n, 0.5).pvalue)}


def figures(rows: list[dict], seed: int = 0) -> dict:
    """The detection figures of a set of answers (one reader's, a class's, or all)."""
    n = len(rows)
    if n == 0:
        return {"n": 0, "accuracy": None, "accuracy_reason": "no answers yet", "sensitivity": None,
                "sensitivity_reason": "no answers yet", "specificity": None, "specificity_reason": "no answers yet",
                "auc": None, "auc_reason": "no answers yet"}
    truth = np.array([r["kind"] == POSITIVE for r in rows], dtype=int)
    said = np.array([r["answer"] == POSITIVE for r in rows], dtype=int)
    n_synthetic, n_real = int(truth.sum()), int(n - truth.sum())
    hits, rejections = int((truth & said).sum()), int(((1 - truth) & (1 - said)).sum())
    accuracy = proportion(hits + rejections, n, "")
    sensitivity, specificity = proportion(hits, n_synthetic, "synthetic"), proportion(rejections, n_real, "real")
    out = {"n": n, "n_real": n_real, "n_synthetic": n_synthetic, "accuracy": accuracy["value"],
           "accuracy_ci": accuracy["ci"]}
    for name, p in (("sensitivity", sensitivity), ("specificity", specificity)):
        out[name] = p["value"]
        out[f"{name}_ci"] = p["ci"]
        if p["value"] is None:
            out[f"{name}_reason"] = p["value_reason"]
    if sensitivity["value"] is not None and specificity["value"] is not None:
        out["balanced_accuracy"] = (sensitivity["value"] + specificity["value"]) / 2
    else:
        out |= {"balanced_accuracy": None, "balanced_accuracy_reason": "needs both real and synthetic trials"}
    out |= auc(truth, scores(rows)).as_json("auc")
    interval = bootstrap_auc(truth, rows, seed)
    out |= {"auc_ci": list(interval)} if isinstance(interval, tuple) else interval.as_json("auc_ci")
    out["binomial_test"] = binomial(rejections, n_real, hits, n_synthetic)
    seconds = [r["seconds"] for r in rows if r.get("seconds") is not None and math.isfinite(r["seconds"])]
    out |= ({"seconds_median": float(np.median(seconds)), "seconds_mean": float(np.mean(seconds))} if seconds else
            {"seconds_median": None, "seconds_median_reason": "no timed answers"})
    return out


def realism(rows: list[dict]) -> dict:
    """Realism (1-5) of real versus synthetic images, with the two-sided Mann-Whitney U test."""
    from scipy.stats import mannwhitneyu

    groups = {kind: [r["realism"] for r in rows if r["kind"] == kind] for kind in ("real", "synthetic")}
    out = {f"{kind}_n": len(v) for kind, v in groups.items()}
    for kind, values in groups.items():
        out[f"{kind}_mean"] = float(np.mean(values)) if values else None
        out[f"{kind}_median"] = float(np.median(values)) if values else None
    if not groups["real"] or not groups["synthetic"]:
        return out | {"mann_whitney_u": None, "p_value": None,
                      "p_value_reason": "needs realism ratings of both real and synthetic images"}
    test = mannwhitneyu(groups["real"], groups["synthetic"], alternative="two-sided")
    p = float(test.pvalue)
    return out | {"mann_whitney_u": float(test.statistic),
                  **(Figure(p) if math.isfinite(p) else Figure(None, "every rating is the same")).as_json("p_value")}


def study_results(rows: list[dict], readers: list[dict], seed: int = 0) -> dict:
    """`readers`, `pooled`, `agreement`, `per_class`, `realism` of a study's answers
    (Studies.answers) and invited readers (Studies.readers)."""
    by_reader, by_class = _group(rows, "reader"), _group(rows, "label")
    per_reader = {}
    for reader in readers:
        user = reader["user"]
        entry = figures(by_reader[user], seed)
        entry |= {"expert_level": reader["expert_level"], "blind": reader["blind"]}
        if not reader["blind"]:
            entry["not_blind_reason"] = (f"invited with the {reader['role']} role, which can browse the real images "
                                         "and generate")
        per_reader[user] = entry
    per_class = {}
    for label, class_rows in sorted(by_class.items()):
        readers_of_class = sorted(_group(class_rows, "reader").items())
        per_class[label] = figures(class_rows, seed) | {
            "accuracy_by_reader": {user: figures(r, seed)["accuracy"] for user, r in readers_of_class}}
    answers = {user: {r["image"]: r["answer"] for r in user_rows} for user, user_rows in by_reader.items()}
    return {"readers": per_reader, "pooled": figures(rows, seed), "agreement": agreement(answers),
            "per_class": per_class, "realism": realism(rows)}


def _group(rows: list[dict], key: str) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped
