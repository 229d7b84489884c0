"""Where finetune/train.py keeps its checkpoints: OUT/checkpoints/checkpoint-<step>/ with the
adapters and the full resume state. Light on imports, so the app can list a run's checkpoints
without importing the trainer (torch, diffusers) in its request threads."""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "training_state.pt"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with their resume state), oldest step first. A `checkpoint-N.partial`
    folder being written is not one (the app lists checkpoints while the trainer writes them)."""
    folders = [p for p in (Path(output_dir) / "checkpoints").glob("checkpoint-*")
               if p.name.split("-", 1)[1].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(folders, key=lambda p: int(p.name.split("-", 1)[1]))
