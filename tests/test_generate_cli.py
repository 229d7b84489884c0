"""`python -m medart_core generate`: imagefolder output, synthetic marks, resume, sharding, errors."""

from __future__ import annotations

import json
import os

import pytest

import medart_core.generation
from medart_core.__main__ import main
from medart_core.synthetic import is_marked_synthetic, read_png_text

PROMPTS = [
    {"text": "An axial brain MRI slice", "label": "brain-axial"},
    {"text": "An immunohistochemistry tile", "label": "ihc"},
    {"text": "A fundus photograph of the retina", "label": "fundus"},
]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def generate_args(model_dir, prompt_file, out, *extra):
    return ["generate", "--model", str(model_dir), "--prompts", str(prompt_file), "--n", "2",
            "--steps", "3", "--batch-size", "4", "--device", "cpu", "--out", str(out), *extra]


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_imagefolder_with_marked_pngs(tiny_pipeline_dir, prompt_file, tmp_path):
    out = tmp_path / "synthetic"
    assert main(generate_args(tiny_pipeline_dir, prompt_file, out)) == 0
    rows = read_rows(out / "metadata.jsonl")
    assert [r["label"] for r in rows] == ["brain-axial"] * 2 + ["ihc"] * 2 + ["fundus"] * 2
    assert [r["seed"] for r in rows] == list(range(6))
    assert set(rows[0]) == {"file_name", "text", "label", "seed", "steps", "guidance", "model", "adapters", "synthetic"}
    assert all(r["synthetic"] is True and r["steps"] == 3 and r["guidance"] == 4.5 for r in rows)
    for row in rows:
        assert is_marked_synthetic(out / row["file_name"])
    chunks = read_png_text(out / rows[3]["file_name"])
    assert chunks["prompt"] == "An immunohistochemistry tile" and chunks["seed"] == "3"
    assert "SYNTHETIC" in chunks["Description"] and chunks["model"] == str(tiny_pipeline_dir)

    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(dataset) == 6 and dataset[0]["image"].size == (32, 32)


def test_interrupted_run_resumes_where_it_stopped(tiny_pipeline_dir, prompt_file, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert main(generate_args(tiny_pipeline_dir, prompt_file, reference, "--batch-size", "2")) == 0

    out = tmp_path / "interrupted"
    real_save = medart_core.generation.save_synthetic_png
    saved = []

    def save_then_interrupt(image, path, record):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(path.name)
        return real_save(image, path, record)

    monkeypatch.setattr(medart_core.generation, "save_synthetic_png", save_then_interrupt)
    assert main(generate_args(tiny_pipeline_dir, prompt_file, out, "--batch-size", "2")) == 130
    assert not (out / "metadata.jsonl").exists()
    assert sorted(p.name for p in out.glob("*.png")) == saved == ["000000.png", "000001.png", "000002.png"]
    before = {name: os.stat(out / name).st_mtime_ns for name in saved}

    monkeypatch.setattr(medart_core.generation, "save_synthetic_png", real_save)
    assert main(generate_args(tiny_pipeline_dir, prompt_file, out, "--batch-size", "2")) == 0
    assert {name: os.stat(out / name).st_mtime_ns for name in saved} == before  # not redone
    assert read_rows(out / "metadata.jsonl") == read_rows(reference / "metadata.jsonl")
    for row in read_rows(reference / "metadata.jsonl"):
        assert (out / row["file_name"]).read_bytes() == (reference / row["file_name"]).read_bytes()


def test_resuming_with_other_settings_is_refused(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main(generate_args(tiny_pipeline_dir, prompt_file, out)) == 0
    assert main(generate_args(tiny_pipeline_dir, prompt_file, out, "--guidance", "2.0")) == 2
    assert "different generation run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a, tmp: a.__setitem__(a.index("--model") + 1, str(tmp / "nowhere")), "not found"),
        (lambda a, tmp: a.extend(["--lora", str(tmp)]), "not a LoRA adapter"),
        (lambda a, tmp: a.__setitem__(a.index("--n") + 1, "0"), "--n must be at least 1"),
        (lambda a, tmp: a.__setitem__(a.index("--steps") + 1, "0"), "steps must be at least 1"),
    ],
)
def test_bad_arguments_give_one_clear_message(tiny_pipeline_dir, prompt_file, tmp_path, capsys, change, message):
    args = generate_args(tiny_pipeline_dir, prompt_file, tmp_path / "out")
    change(args, tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_prompt_files_are_reported_with_line_numbers(tiny_pipeline_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "An axial brain MRI slice"}\n{"text": "unterminated\n')
    assert main(generate_args(tiny_pipeline_dir, bad, tmp_path / "out")) == 2
    assert "line 2" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "   ", "label": "x"}\n')
    assert main(generate_args(tiny_pipeline_dir, empty, tmp_path / "out2")) == 2
    assert "no text" in capsys.readouterr().err


@pytest.mark.slow
def test_accelerate_two_processes_shard_prompts_into_one_metadata(
    tiny_pipeline_dir, prompt_file, tmp_path, launch_two_cpu_processes
):
    single = tmp_path / "single"
    assert main(generate_args(tiny_pipeline_dir, prompt_file, single)) == 0
    sharded = tmp_path / "sharded"
    result = launch_two_cpu_processes(["-m", "medart_core", "-v", *generate_args(tiny_pipeline_dir, prompt_file, sharded)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1 of 2" in result.stderr
    assert read_rows(sharded / "metadata.jsonl") == read_rows(single / "metadata.jsonl")
    for row in read_rows(single / "metadata.jsonl"):
        assert (sharded / row["file_name"]).read_bytes() == (single / row["file_name"]).read_bytes()


def with_card(pipeline_dir, destination, front_matter: str):
    import shutil

    shutil.copytree(pipeline_dir, destination)
    (destination / "README.md").write_text(f"---\n{front_matter}---\n\n# a model\n")
    return destination


def test_sampling_defaults_come_from_the_model_card(tiny_pipeline_dir, prompt_file, tmp_path):
    model = with_card(tiny_pipeline_dir, tmp_path / "carded",
                      "inference:\n  parameters:\n    guidance_scale: 2.0\n    num_inference_steps: 4\n")
    common = ["generate", "--model", str(model), "--prompts", str(prompt_file), "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "card")]) == 0
    assert {(r["guidance"], r["steps"]) for r in read_rows(tmp_path / "card" / "metadata.jsonl")} == {(2.0, 4)}
    assert main([*common, "--guidance", "3", "--steps", "2", "--out", str(tmp_path / "flags")]) == 0
    assert {(r["guidance"], r["steps"]) for r in read_rows(tmp_path / "flags" / "metadata.jsonl")} == {(3.0, 2)}


def test_a_card_without_or_with_bad_sampling_settings_keeps_pixart_defaults(tiny_pipeline_dir, tmp_path, caplog):
    from medart_core.model_card import SamplingDefaults, sampling_defaults

    assert sampling_defaults(tiny_pipeline_dir) == SamplingDefaults(guidance=4.5, steps=20)  # no README.md
    plain = with_card(tiny_pipeline_dir, tmp_path / "plain", "library_name: diffusers\n")
    assert sampling_defaults(plain) == SamplingDefaults()
    bad = with_card(tiny_pipeline_dir, tmp_path / "bad", "inference:\n  parameters:\n    guidance_scale: strong\n")
    assert sampling_defaults(bad) == SamplingDefaults()
    negative = with_card(tiny_pipeline_dir, tmp_path / "negative", "inference:\n  parameters:\n    guidance_scale: 0.5\n")
    assert sampling_defaults(negative) == SamplingDefaults()
    assert "ignoring the sampling settings" in caplog.text
    assert sampling_defaults("no-such-org/no-such-model") == SamplingDefaults()  # offline, not cached
