"""The HLDF ablation runs end to end (smoke settings) and writes its table and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_split_data(tiny_train_data, tmp_path_factory):
    """The two-class tiny images as train/ and test/ splits (the ablation fine-tunes on one, scores on the other)."""
    import shutil

    root = tmp_path_factory.mktemp("split-data")
    for split in ("train", "test"):
        shutil.copytree(tiny_train_data / "train", root / split)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model_fixture", ["tiny_pipeline_dir", "tiny_sana_dir"], ids=["pixart", "sana"])
def test_ablation_smoke_writes_table_and_colour_plot(model_fixture, tmp_path, request):
    """PixArt on the demo data; Sana (flow sampler, DC-AE, Gemma2) on the tiny two-class images, which
    keeps its run to the eight subprocesses' start-up."""
    out = tmp_path / "ablation"
    data = (["--data", "assets/demo"] if model_fixture == "tiny_pipeline_dir" else
            ["--data", str(request.getfixturevalue("tiny_split_data")), "--classes", "fundus,histology"])
    command = [sys.executable, "finetune/experiments/hldf_ablation.py", "--model",
               str(request.getfixturevalue(model_fixture)), *data, "--out", str(out), "--smoke"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["runs"]] == ["base demo model (no LoRA)", "lora only", "HLDF"]
    hldf = next(r for r in results["runs"] if r["variant"] == "HLDF")
    assert hldf["train_seconds"] > 0 and hldf["train_peak_mb"] > 0 and hldf["colour_distance"] >= 0
    table = (out / "results.md").read_text()
    assert "| HLDF | 1 |" in table and "colour distance" in table
    assert (out / "colour_histograms.png").stat().st_size > 10_000
    # the HLDF run did log its colour loss; the LoRA-only run did not
    hldf_log = (out / "runs" / "hldf-seed0" / "train_log.jsonl").read_text()
    lora_log = (out / "runs" / "lora-only-seed0" / "train_log.jsonl").read_text()
    assert "loss/color" in hldf_log and "loss/color" not in lora_log
