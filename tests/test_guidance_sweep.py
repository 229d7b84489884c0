"""The guidance sweep generates each scale from the train captions and scores it with the evaluation's metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "finetune" / "experiments"))

import guidance_sweep  # noqa: E402


def test_sweep_scores_every_scale_and_names_the_best(tiny_pipeline_dir, tiny_train_data, tmp_path):
    out = tmp_path / "sweep"
    guidance_sweep.main(["--model", str(tiny_pipeline_dir), "--data", str(tiny_train_data), "--scales", "1,3",
                         "--steps", "2", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert [r["guidance"] for r in results["results"]] == [1.0, 3.0]
    for result in results["results"]:
        generated = [json.loads(line) for line in (out / f"guidance-{result['guidance']:g}" / "metadata.jsonl").open()]
        assert len(generated) == 8 and {r["guidance"] for r in generated} == {result["guidance"]}
        assert set(result["per_class"]) == {"fundus", "histology"}
        assert result["balanced_accuracy"] == sum(result["per_class"].values()) / 2
        assert result["colour_distance"] > 0
    assert results["best"] in (1.0, 3.0)
    assert "(best)" in (out / "results.md").read_text()
