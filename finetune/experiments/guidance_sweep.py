"""Which classifier-free guidance scale suits a model? A sweep scored by a real-trained classifier.

    python finetune/experiments/guidance_sweep.py --model assets/demo_model --data assets/demo --out runs/guidance

Generates the captions of the *train* split at each guidance scale (`python -m medart_core
generate`) and scores every set with the evaluation's own metrics against the train split:
conditional accuracy under one classifier trained on it once (shared by all scales) and the
colour distance. The held-out test split is never looked at, so it stays an honest final check
of the chosen scale (`python -m medart_core evaluate` refuses a real set that overlaps training,
hence the metrics are called directly here).
The best scale has the highest balanced (per-class mean) conditional accuracy; the colour
distance breaks ties. Writes results.json and results.md. Small models trained from scratch
usually want far less guidance than PixArt-alpha's 4.5, which over-saturates them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medart_core.__main__ import main as medart
from medart_core.metrics.classifier import (ClassifierConfig, conditional_accuracy, load_or_train_domain_classifier,
                                            predict)
from medart_core.metrics.color import color_distance, summarise_files
from medart_core.metrics.sets import load_resized, load_set


def scales(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"guidance scales must be >= 1 (1 turns guidance off), got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/demo_model", help="pipeline folder or hub id (default: assets/demo_model)")
    parser.add_argument("--lora", default=None, help="LoRA adapter or training output folder (default: none)")
    parser.add_argument("--data", default="assets/demo",
                        help="imagefolder with a train/ split (captions and labels); only train/ is used "
                             "(default: assets/demo)")
    parser.add_argument("--scales", type=scales, default=scales("1.5,2,3,4.5"),
                        help="comma-separated guidance scales, each >= 1 (default: 1.5,2,3,4.5)")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps (default: 20)")
    parser.add_argument("--n", type=int, default=1, help="images per train caption and scale (default: 1)")
    parser.add_argument("--out", required=True, help="output folder; generated sets resume when rerun")
    return parser.parse_args(argv)


def balanced_accuracy(conditional: dict) -> float:
    per_class = [entry["accuracy"] for entry in conditional["per_class"].values()]
    return sum(per_class) / len(per_class)


def best_result(results: list[dict]) -> dict:
    """The highest balanced accuracy (to 3 decimals, so noise does not decide); then the smaller colour distance."""
    return max(results, key=lambda r: (round(r["balanced_accuracy"], 3), -r["colour_distance"]))


def score(generated: Path, train_colour: dict, classifier) -> dict:
    """Conditional accuracy (per class and balanced) and colour distance of one generated set."""
    fake = load_set("synthetic", generated, ("train",))
    images = load_resized(fake, classifier.config.image_size, progress=False)
    conditional = conditional_accuracy(predict(classifier.model, images, classifier.config.image_size),
                                       fake.labels, classifier.classes)
    return {"balanced_accuracy": balanced_accuracy(conditional), "accuracy": conditional["accuracy"],
            "colour_distance": color_distance(train_colour, summarise_files(r.path for r in fake.records))["distance"],
            "per_class": {label: entry["accuracy"] for label, entry in conditional["per_class"].items()}}


def main(argv=None) -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    args = parse_args(argv)
    train_set = load_set("training", args.data, ("train",))
    out = Path(args.out)
    classifier = load_or_train_domain_classifier(out / "classifier", train_set, ClassifierConfig(), progress=False)
    train_colour = summarise_files(r.path for r in train_set.records)
    prompts = Path(train_set.root, train_set.split or "", "metadata.jsonl")
    lora = ["--lora", args.lora] if args.lora else []
    results = []
    for scale in args.scales:
        generated = out / f"guidance-{scale:g}"
        command = ["generate", "--model", args.model, *lora, "--prompts", str(prompts), "--n", str(args.n),
                   "--steps", str(args.steps), "--guidance", str(scale), "--out", str(generated)]
        if medart(command) != 0:
            raise SystemExit(f"failed: python -m medart_core {' '.join(command)}")
        results.append({"guidance": scale, **score(generated, train_colour, classifier)})
    best = best_result(results)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "results": results, "best": best["guidance"]},
                                                 indent=1))
    labels = list(results[0]["per_class"])
    lines = ["| guidance | balanced accuracy | colour distance | " + " | ".join(labels) + " |",
             "|---" * (3 + len(labels)) + "|"]
    lines += [f"| {r['guidance']:g}{' (best)' if r is best else ''} | {r['balanced_accuracy']:.3f} | "
              f"{r['colour_distance']:.3f} | " + " | ".join(f"{r['per_class'][label]:.2f}" for label in labels) + " |"
              for r in results]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
