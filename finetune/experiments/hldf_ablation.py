"""HLDF ablation: does the pixel-level colour loss fix colours (and distances) at small scale?

    python finetune/experiments/hldf_ablation.py --out runs/hldf_ablation            # ~1 h on 2 CPU cores
    python finetune/experiments/hldf_ablation.py --out runs/hldf_smoke --smoke       # ~1-2 min

From the demo model, LoRA-fine-tunes on the most colourful demo classes (fundus, histology) with
and without HLDF (same seeds, steps and data), plus a sweep over the HLDF settings that matter;
generates the held-out prompts from every run with `python -m medart_core generate` and evaluates
each against the held-out real images with `python -m medart_core evaluate` (colour statistics,
domain Frechet distance with its bootstrap interval, conditional accuracy). Each training run is
its own process, so its wall time and peak memory are its own. Writes results.json, results.md
(the table for the README) and colour_histograms.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict = field(default_factory=dict)  # train.py options that differ from the base


def variants(hldf_every: int, hldf_steps: int, sweep: bool) -> list[Variant]:
    base = {"hldf_every": hldf_every, "hldf_steps": hldf_steps}
    chosen = [Variant("lora only", {"hldf_every": 0}), Variant("HLDF", base)]
    if sweep:
        chosen += [
            Variant(f"HLDF every {hldf_every * 2}", {**base, "hldf_every": hldf_every * 2}),
            Variant(f"HLDF {max(hldf_steps // 2, 1)} sampling steps", {**base, "hldf_steps": max(hldf_steps // 2, 1)}),
            Variant("HLDF weight x4", {**base, "hldf_weight": 4.0 / hldf_steps}),
            Variant("HLDF grad through last 2 steps", {**base, "hldf_grad_last_k": 2}),
        ]
    return chosen


def run(command: list[str], log: Path) -> tuple[float, float]:
    """Run a command to completion; (wall seconds, peak resident MB of that process)."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"command failed ({process.returncode}), see {log}:\n  {' '.join(command)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def subset(data: Path, classes: list[str], out: Path) -> Path:
    """An imagefolder with only the chosen classes (both splits). Images are copied: links out of
    a data folder are refused by the loaders, as a safety rule."""
    from medart_core.data import read_metadata, split_folders, write_jsonl_atomic

    if out.exists():
        shutil.rmtree(out)
    for split, folder in split_folders(data):
        target = out / (split or "")
        target.mkdir(parents=True)
        rows = [r for r in read_metadata(folder) or [] if r.get("label") in classes]
        for row in rows:
            shutil.copy2(folder / row["file_name"], target / row["file_name"])
        write_jsonl_atomic(target / "metadata.jsonl", rows)
    return out


def colour_histograms(folder: Path) -> np.ndarray:
    """Mean per-channel histogram (3 x 32, fractions) of every image in a folder."""
    from medart_core.metrics.color import summarise_files

    return summarise_files(sorted(folder.glob("*.png")))["histogram"]


def summarise(rows: list[dict]) -> dict:
    """mean and std over seeds of each number, per variant."""
    table = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        table[name] = {key: (float(np.mean([r[key] for r in mine])), float(np.std([r[key] for r in mine])))
                       for key in mine[0] if isinstance(mine[0][key], (int, float)) and key != "seed"}
        table[name]["seeds"] = len(mine)
    return table


def markdown(table: dict, settings: dict) -> str:
    columns = [("colour_distance", "colour distance ↓", 4), ("histogram_wasserstein", "histogram W1 ↓", 4),
               ("fd", "domain FD ↓", 2), ("kid", "domain KID ↓", 4), ("conditional_accuracy", "cond. acc. ↑", 2),
               ("train_seconds", "train s", 0), ("train_peak_mb", "peak MB", 0)]
    lines = ["| run | seeds | " + " | ".join(c[1] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, values in table.items():
        cells = [f"{values[k][0]:.{d}f} ± {values[k][1]:.{d}f}" if k in values else "–" for k, _, d in columns]
        lines.append(f"| {name} | {values['seeds']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("mean ± std over seeds; " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return "\n".join(lines) + "\n"


def plot(histograms: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = next(iter(histograms.values())).shape[1]
    centres = (np.arange(bins) + 0.5) / bins
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.4), sharey=True)
    for c, (axis, channel) in enumerate(zip(axes, ("red", "green", "blue"))):
        for name, hist in histograms.items():
            style = {"color": "black", "linewidth": 2.5} if name == "real (held out)" else {"linewidth": 1.5}
            axis.plot(centres, hist[c], label=name, **style)
        axis.set_title(f"{channel} channel")
        axis.set_xlabel("intensity")
    axes[0].set_ylabel("fraction of pixels")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/demo_model", help="base pipeline (default: assets/demo_model)")
    parser.add_argument("--data", default="assets/demo", help="imagefolder with train/ and test/ (default: assets/demo)")
    parser.add_argument("--classes", default="fundus,histology-ihc",
                        help="comma-separated labels to fine-tune on (default: the colourful fundus,histology-ihc)")
    parser.add_argument("--out", default="runs/hldf_ablation", help="output folder (default: runs/hldf_ablation)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default: 100)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size (default: 8)")
    parser.add_argument("--color-pairing", choices=["batch", "per_image"], default="batch",
                        help="hldf_color_pairing of the HLDF runs (default: batch, the pooled loss the published "
                             "figures were measured with; per_image is the trainer's default, the paper's)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="LoRA learning rate (default: 1e-3)")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--hldf-every", type=int, default=5, help="HLDF every N steps in the HLDF runs (default: 5)")
    parser.add_argument("--hldf-steps", type=int, default=8, help="DPM-Solver++ steps of the HLDF sample (default: 8)")
    parser.add_argument("--generate-steps", type=int, default=20, help="sampling steps for evaluation images (default: 20)")
    parser.add_argument("--guidance", type=float, default=4.5,
                        help="guidance scale of the evaluation images, the same for every run (default: 4.5, "
                             "PixArt-alpha's, which over-saturates the demo model: the colour error HLDF targets)")
    parser.add_argument("--images-per-prompt", type=int, default=1, help="images per held-out prompt (default: 1)")
    parser.add_argument("--no-sweep", action="store_true", help="only LoRA vs HLDF, no sweep over HLDF settings")
    parser.add_argument("--sweep-seeds", type=int, nargs="+", default=None,
                        help="seeds for the sweep variants (default: every --seeds seed); LoRA vs HLDF always runs all")
    parser.add_argument("--smoke", action="store_true", help="a seconds-scale run for tests (overrides sizes)")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.steps, args.hldf_every, args.hldf_steps, args.generate_steps = [0], 4, 2, 2, 2
        args.no_sweep, args.batch_size = True, 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = subset(Path(args.data).resolve(), args.classes.split(","), out / "data")
    prompts = data / "test" / "metadata.jsonl"
    from finetune.plan import native_resolution

    resolution = native_resolution(args.model)  # PixArt's KL VAE or Sana's DC-AE
    evaluate_options = ["--metrics", "color,dfd,conditional", "--classifier", str(out / "classifier"), "--no-progress"]
    if args.smoke:
        evaluate_options += ["--classifier-steps", "20", "--bootstrap", "10", "--kid-subsets", "10"]
    python = sys.executable

    def generate_and_evaluate(name: str, lora: Path | None) -> dict:
        images, report = out / "generated" / name, out / "reports" / name
        lora_args = ["--lora", str(lora)] if lora else []
        run([python, "-m", "medart_core", "generate", "--model", args.model, *lora_args, "--prompts", str(prompts),
             "--n", str(args.images_per_prompt), "--steps", str(args.generate_steps), "--guidance", str(args.guidance),
             "--seed", "1000",
             "--device", "cpu", "--out", str(images)], out / "logs" / f"generate-{name}.log")
        run([python, "-m", "medart_core", "evaluate", "--real", str(data), "--fake", str(images), "--out", str(report),
             *evaluate_options], out / "logs" / f"evaluate-{name}.log")
        result = json.loads((report / "report.json").read_text())
        return {"colour_distance": result["color"]["distance"]["distance"],
                "histogram_wasserstein": result["color"]["distance"]["histogram_wasserstein_mean"],
                "fd": result["dfd"]["fd"], "kid": result["dfd"]["kid"]["mean"],
                "conditional_accuracy": result["conditional"]["accuracy"]}

    (out / "logs").mkdir(exist_ok=True)
    rows = [{"variant": "base demo model (no LoRA)", "seed": 0, **generate_and_evaluate("base", None)}]
    for seed in args.seeds:
        sweep = not args.no_sweep and (args.sweep_seeds is None or seed in args.sweep_seeds)
        for variant in variants(args.hldf_every, args.hldf_steps, sweep=sweep):
            slug = variant.name.lower().replace(" ", "-") + f"-seed{seed}"
            options = {"model": args.model, "data": str(data), "output_dir": str(out / "runs" / slug),
                       "resolution": resolution, "train_batch_size": args.batch_size, "max_train_steps": args.steps,
                       "learning_rate": args.learning_rate, "lora_rank": args.lora_rank, "seed": seed,
                       "hldf_steps": args.hldf_steps, "hldf_color_pairing": args.color_pairing,
                       "checkpointing_steps": args.steps, "validation_steps": 0,
                       "validation_inference_steps": args.generate_steps, "mixed_precision": "no", **variant.settings}
            command = [python, str(REPO / "finetune" / "train.py")]
            for key, value in options.items():
                command += [f"--{key}", str(value)]
            seconds, peak = run(command, out / "logs" / f"train-{slug}.log")
            rows.append({"variant": variant.name, "seed": seed, "train_seconds": seconds, "train_peak_mb": peak,
                         **generate_and_evaluate(slug, out / "runs" / slug)})
            print(f"{slug}: {json.dumps({k: round(v, 4) for k, v in rows[-1].items() if isinstance(v, float)})}",
                  flush=True)

    settings = {"classes": args.classes, "steps": args.steps, "batch": args.batch_size, "lr": args.learning_rate,
                "rank": args.lora_rank, "hldf_every": args.hldf_every, "hldf_steps": args.hldf_steps,
                "color_pairing": args.color_pairing,
                "generate_steps": args.generate_steps, "guidance": args.guidance, "held-out prompts": sum(1 for _ in open(prompts))}
    table = summarise(rows)
    (out / "results.json").write_text(json.dumps({"settings": settings, "runs": rows, "summary": table}, indent=1))
    (out / "results.md").write_text(markdown(table, settings))
    first_seed = args.seeds[0]
    histograms = {"real (held out)": colour_histograms(data / "test"),
                  "base demo model": colour_histograms(out / "generated" / "base")}
    for name in ("lora only", "HLDF"):
        histograms[name] = colour_histograms(out / "generated" / (name.lower().replace(" ", "-") + f"-seed{first_seed}"))
    plot(histograms, out / "colour_histograms.png")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
