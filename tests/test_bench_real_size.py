"""bench/bench_real_size.py and bench/gpu_check.sh cannot rot: the plain part runs on the tiny
model, and the GPU script parses, lists its parts and refuses an unknown one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def run_part(which: str, model: Path, results: Path, *options: str) -> tuple[str, dict]:
    """One bench part on a tiny model folder at 32 px: its last printed line and its JSON figures."""
    done = run([sys.executable, "bench/bench_real_size.py", "--which", which, "--model", str(model),
                "--resolution", "32", "--device", "cpu", "--json", str(results), *options])
    assert done.returncode == 0, done.stderr[-3000:]
    (figures,) = json.loads(results.read_text())["results"]
    return done.stdout.strip().splitlines()[-1], figures


def test_plain_part_measures_a_step_beside_the_plan_and_writes_its_figures(tiny_pipeline_dir, tmp_path):
    results = tmp_path / "results.json"
    last, figures = run_part("plain", tiny_pipeline_dir, results)
    assert re.fullmatch(r"plain: measured \d+ MB, planned \d+ MB, ratio \d+\.\d\d", last), last
    assert figures["part"] == "plain" and figures["resolution"] == 32 and figures["batch"] == 1
    assert figures["seconds"] > 0 and figures["measured_mb"] > 0 and figures["planned_mb"] > 0
    table = run([sys.executable, "bench/bench_real_size.py", "--markdown", str(results)])
    assert table.returncode == 0, table.stderr
    assert re.search(r"^\| plain \| \d{4}-\d\d-\d\d, PixArt-alpha, cpu fp32, .*32 px, batch 1 \|", table.stdout, re.M), table.stdout


def test_gpu_check_lists_every_part_and_refuses_an_unknown_one():
    assert run(["bash", "-n", "bench/gpu_check.sh"]).returncode == 0
    listed = run(["bash", "bench/gpu_check.sh", "--dry-run"])
    assert listed.returncode == 0, listed.stderr
    lines = dict(line.split(": ", 1) for line in listed.stdout.strip().splitlines())
    assert list(lines) == ["gen512", "gen1024", "plain", "hldf", "text-cache", "quant-t5", "caption", "sana-gen512"]
    assert "--which plain --config finetune/configs/paper.yaml" in lines["plain"]
    assert "--text-encoder full" in lines["hldf"] and "--resolution 1024" in lines["gen1024"]
    assert "--base sana" in lines["sana-gen512"] and "--which generate" in lines["sana-gen512"]
    wrong = run(["bash", "bench/gpu_check.sh", "--parts", "plain,warp"])
    assert wrong.returncode == 2 and "unknown part 'warp'" in wrong.stderr


def test_sana_generate_part_compares_the_three_paths_and_names_its_base(tiny_sana_dir, tmp_path):
    results = tmp_path / "results.json"
    last, figures = run_part("generate", tiny_sana_dir, results)
    assert re.fullmatch(r"sana generate: medart/stock \d+\.\d{3}, medart/floor \d+\.\d{3}", last), last
    assert figures["base"] == "Sana" and figures["steps"] == 4
    assert set(figures["seconds"]) == {"stock", "medart", "floor", "decode"}
    table = run([sys.executable, "bench/bench_real_size.py", "--markdown", str(results)])
    assert re.search(r"^\| generate \| \d{4}-\d\d-\d\d, Sana, cpu fp32, Gemma-2 of sana, process CPU seconds, 32 px",
                     table.stdout, re.M), table.stdout


def test_sana_hldf_part_runs_its_step_without_vae_checkpointing_beside_the_plan(tiny_sana_dir, tmp_path):
    """DC-AE has no gradient checkpointing: the bench's HLDF settings must not ask train.py for it."""
    last, figures = run_part("hldf", tiny_sana_dir, tmp_path / "results.json", "--hldf-resolution", "32")
    assert re.fullmatch(r"sana hldf: measured \d+ MB, planned \d+ MB, ratio \d+\.\d\d", last), last
    assert figures["base"] == "Sana" and figures["resolution"] == 32 and figures["floor_seconds"] > 0
    assert figures["plan_rows_mb"]["hldf"] > 0 and figures["clock"] == "process CPU"
