"""A reader study's report folder: every answer as CSV, the JSON summary (medart_core.study_stats),
a ratings CSV in the layout MINIM trained on clinician feedback with (`image_path, rating,
modality, expert_level, prompt`), an ROC plot and a per-class bar chart. Each file is replaced
atomically. The image paths are the stored files: synthetic ones keep their SYNTHETIC marking."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from medart_core.data import atomic_path, write_text_atomic
from medart_core.store.studies import Studies
from medart_core.study_stats import POSITIVE, scores, study_results

ANSWER_COLUMNS = ["study", "reader", "expert_level", "blind", "position", "trial", "image", "class", "truth", "answer",
                  "correct", "confidence", "realism", "matches", "comment", "seconds", "answered_at", "description",
                  "image_path"]
RATING_COLUMNS = ["image_path", "rating", "modality", "expert_level", "prompt"]  # MINIM's clinician-feedback layout
FILES = {"answers": "answers.csv", "summary": "summary.json", "ratings": "ratings.csv", "roc": "roc.png",
         "per_class": "per_class.png"}


def summary(store, name: str) -> dict:
    """The study's settings and its results (study_stats.study_results), JSON-ready."""
    studies = Studies(store)
    study = studies.get(name)
    results = study_results(studies.answers(name), studies.readers(name), seed=study.seed)
    return {"study": study.name, "state": study.state, "seed": study.seed, "classes": list(study.classes),
            "ask_match": study.ask_match, "size": study.size, **results}


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def answer_rows(name: str, answers: list[dict]) -> list[dict]:
    return [{**a, "study": name, "class": a["label"], "truth": a["kind"], "correct": a["kind"] == a["answer"],
             "image_path": a["path"]} for a in answers]


def rating_rows(answers: list[dict]) -> list[dict]:
    """One row per realism rating of a synthetic image (what MINIM's feedback training reads)."""
    return [{"image_path": a["path"], "rating": a["realism"], "modality": a["modality"] or a["label"],
             "expert_level": a["expert_level"] or "", "prompt": a["description"]}
            for a in answers if a["kind"] == POSITIVE]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def roc_plot(answers: list[dict], path: Path) -> Path:
    from sklearn.metrics import roc_curve

    from medart_core.metrics.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    groups = {r: [a for a in answers if a["reader"] == r] for r in sorted({a["reader"] for a in answers})}
    for label, rows in [*groups.items(), ("pooled", answers)]:
        truth = np.array([a["kind"] == POSITIVE for a in rows], dtype=int)
        if len(set(truth.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(truth, scores(rows))
        ax.plot(fpr, tpr, marker="o", linewidth=2.5 if label == "pooled" else 1.2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("1 - specificity (real called synthetic)")
    ax.set_ylabel("sensitivity (synthetic called synthetic)")
    ax.set_title("ROC of the confidence-weighted answer")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def per_class_plot(per_class: dict, path: Path) -> Path:
    from medart_core.metrics.plots import _pyplot

    plt = _pyplot()
    labels = list(per_class)
    values = [per_class[c]["accuracy"] or 0.0 for c in labels]
    errors = np.array([[v - (per_class[c]["accuracy_ci"] or [v, v])[0], (per_class[c]["accuracy_ci"] or [v, v])[1] - v]
                       for c, v in zip(labels, values)]).T.reshape(2, -1)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), values, yerr=errors, capsize=4, color="#4c72b0")
    ax.axhline(0.5, color="grey", linestyle=":", label="chance (0.5)")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title("Accuracy per class, all readers")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def write_report(store, name: str, out: str | Path) -> dict[str, Path]:
    """Write the report files into `out`; returns their paths by kind (FILES)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    answers = Studies(store).answers(name)
    data = summary(store, name)
    paths = {kind: out / file for kind, file in FILES.items()}
    write_text_atomic(paths["answers"], _csv(answer_rows(name, answers), ANSWER_COLUMNS))
    write_text_atomic(paths["summary"], json.dumps(data, indent=2, allow_nan=False) + "\n")  # never NaN
    write_text_atomic(paths["ratings"], _csv(rating_rows(answers), RATING_COLUMNS))
    roc_plot(answers, paths["roc"])
    per_class_plot(data["per_class"], paths["per_class"])
    return paths
