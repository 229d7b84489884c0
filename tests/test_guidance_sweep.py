"""The guidance sweep generates each scale from the train captions and scores it with the evaluation's metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "finetune" / "experiments"))

import guidance_sweep  # noqa: E402


@pytest.fixture(scope="module")
def classifier_of_the_train_set(tmp_path_factory):
    """Where the first sweep leaves its domain classifier: the next model's sweep reuses it (the
    sweep's own resume), as training it is most of a sweep's time."""
    return tmp_path_factory.mktemp("sweep-classifier") / "classifier"


@pytest.mark.parametrize("model_fixture", ["tiny_pipeline_dir", "tiny_sana_dir"], ids=["pixart", "sana"])
def test_sweep_scores_every_scale_and_names_the_best(model_fixture, tiny_train_data, tmp_path, request,
                                                     classifier_of_the_train_set):
    import shutil

    out = tmp_path / "sweep"
    if classifier_of_the_train_set.is_dir():
        shutil.copytree(classifier_of_the_train_set, out / "classifier")
    guidance_sweep.main(["--model", str(request.getfixturevalue(model_fixture)), "--data", str(tiny_train_data),
                         "--scales", "1,3", "--steps", "2", "--out", str(out)])
    if not classifier_of_the_train_set.is_dir():
        shutil.copytree(out / "classifier", classifier_of_the_train_set)
    results = json.loads((out / "results.json").read_text())
    assert [r["guidance"] for r in results["results"]] == [1.0, 3.0]
    for result in results["results"]:
        generated = [json.loads(line) for line in (out / f"guidance-{result['guidance']:g}" / "metadata.jsonl").open()]
        assert len(generated) == 8 and {r["guidance"] for r in generated} == {result["guidance"]}
        assert set(result["per_class"]) == {"fundus", "histology"}
        assert result["balanced_accuracy"] == sum(result["per_class"].values()) / 2
        assert result["colour_distance"] > 0
    best = guidance_sweep.best_result(results["results"])["guidance"]
    assert results["best"] == best
    marked = [line for line in (out / "results.md").read_text().splitlines() if "(best)" in line]
    assert len(marked) == 1 and marked[0].startswith(f"| {best:g} (best) |")


def test_best_scale_is_the_most_accurate_then_the_truest_colour():
    def result(guidance, accuracy, colour):
        return {"guidance": guidance, "balanced_accuracy": accuracy, "colour_distance": colour}

    best = guidance_sweep.best_result
    assert best([result(1.5, 0.60, 0.01), result(3.0, 0.95, 0.30)])["guidance"] == 3.0  # accuracy first
    assert best([result(1.5, 0.95, 0.10), result(3.0, 0.95, 0.30)])["guidance"] == 1.5  # then colour
    # accuracies equal to 3 decimals are a tie: sampling noise does not pick the scale
    assert best([result(2.0, 0.9704, 0.20), result(4.5, 0.9701, 0.05)])["guidance"] == 4.5
