"""`python -m medart_core privacy`: per-prompt re-identification of a generator's images, as medical
generative benchmarks measure privacy (see medart_core/metrics/privacy.py)."""

from __future__ import annotations

import argparse

HELP = ("privacy as medical benchmarks measure it: --n images for every distinct training prompt (or an existing "
        "--fake folder), each prompt's closest own training image vs the rest of the training set, pixel and feature "
        "space, mirrors included -> report.json, report.md, a worst-case sheet and a histogram")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medart_core.commands.generate import add_model_arguments

    parser.add_argument("--data", required=True,
                        help="the training dataset (imagefolder): its train/ split (or all of it) is the training set, "
                             "its test/ (or validation/) split the held-out reference")
    parser.add_argument("--fake", default=None,
                        help="score this generated folder instead of generating (its metadata.jsonl texts are the "
                             "prompts; give --model or --fake)")
    add_model_arguments(parser, model_required=False)
    parser.add_argument("--n", type=int, default=10,
                        help="images generated per distinct training prompt (default: 10; see the README for the cost)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image k gets seed+k (default: 0)")
    parser.add_argument("--copy-threshold", type=float, default=0.95,
                        help="pixel correlation (32x32, as the memorisation audit) at or above which a prompt's closest "
                             "own training image re-identifies it (default: 0.95)")
    parser.add_argument("--feature-threshold", type=float, default=None,
                        help="cosine similarity in the feature space at or above which it does (default: the largest "
                             "nearest-training similarity of a held-out real image)")
    parser.add_argument("--features", default="domain",
                        help="feature space: domain (a classifier trained on the training set, in --classifier), "
                             "domain:PATH, or efficientnet (ImageNet EfficientNet-Lite0, offline) (default: domain)")
    parser.add_argument("--classifier", default=None,
                        help="domain classifier folder, trained there when absent and reused after; the evaluate "
                             "command's works (default: the PATH of --features domain:PATH, else OUT/classifier)")
    parser.add_argument("--classifier-steps", type=int, default=500, help="steps of a newly trained classifier (default: 500)")
    parser.add_argument("--classifier-size", type=int, default=64, help="classifier input size in pixels (default: 64)")
    parser.add_argument("--sheet-rows", type=int, default=12, help="prompts on the worst-case sheet (default: 12)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    parser.add_argument("--out", required=True,
                        help="report folder: report.json, report.md, worst_cases.png, similarity_histograms.png, "
                             "and generated/ (the images, resumable) when generating")


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from medart_core.data import split_folders, write_json_atomic
    from medart_core.errors import MedArtError
    from medart_core.metrics.classifier import ClassifierConfig
    from medart_core.metrics.paths import portable
    from medart_core.metrics.privacy import privacy_report, training_prompts
    from medart_core.metrics.report import EvaluationConfig
    from medart_core.metrics.sets import load_set

    if (args.model is None) == (args.fake is None):
        raise MedArtError("give --model (generate --n images per training prompt) or --fake DIR (score a generated "
                          "folder), not both")
    if args.feature_threshold is not None and not -1 <= args.feature_threshold <= 1:
        raise MedArtError(f"--feature-threshold is a cosine similarity in [-1, 1], got {args.feature_threshold}")
    if args.sheet_rows < 1:
        raise MedArtError(f"--sheet-rows must be at least 1, got {args.sheet_rows}")
    # The evaluate command's checks of the feature space, classifier and copy threshold.
    config = EvaluationConfig(metrics=("memorization",), features=args.features, classifier_dir=args.classifier,
                              classifier=ClassifierConfig(image_size=args.classifier_size, steps=args.classifier_steps),
                              copy_threshold=args.copy_threshold, progress=not args.no_progress)
    config.check()
    data, out = Path(args.data), Path(args.out)
    train_set = load_set("training", data, prefer=("train",))
    splits = {name for name, _ in split_folders(data)}
    held_out = load_set("held-out", data, prefer=("test", "validation")) if splits & {"test", "validation"} else None

    fake = Path(args.fake) if args.fake else out / "generated"
    if args.model is not None:
        from medart_core.commands.generate import generate_prompts

        _, _, main_process = generate_prompts(args, training_prompts(train_set), args.n, args.seed, fake)
        if not main_process:
            return
    fake_set = load_set("synthetic", fake, prefer=("train", "test", "validation"))
    out.mkdir(parents=True, exist_ok=True)
    feature_module = _feature_module(config, train_set, out)
    report = privacy_report(train_set, fake_set, held_out, feature_module, copy_threshold=args.copy_threshold,
                            feature_threshold=args.feature_threshold, progress=config.progress)
    report["inputs"] = {"data": portable(data), "synthetic": portable(fake), "generated": args.model is not None,
                        "model": args.model, "lora": args.lora, "n_per_prompt": args.n if args.model else None,
                        "seed": args.seed if args.model else None,
                        "feature_space": getattr(feature_module, "description", None)}
    _write(report, out, fake_set, train_set, args.sheet_rows, [data, fake, out, config.classifier_folder(out)])
    print(f"{report['n_reidentified']} of {report['n_prompts']} prompts re-identified "
          f"(reidentified_fraction {report['reidentified_fraction']:.3f}; pixel "
          f"{report['reidentified_fraction_by_space']['pixel']:.3f}, feature "
          f"{report['reidentified_fraction_by_space']['feature']:.3f}) -> {out}/report.md")


def _feature_module(config, train_set, out):
    """The feature space: ImageNet EfficientNet-Lite0, or the domain classifier (trained once, reused)."""
    if config.features == "efficientnet":
        from medart_core.metrics.features import efficientnet_lite0_features

        return efficientnet_lite0_features()
    from medart_core.metrics.classifier import load_or_train_domain_classifier

    classifier = load_or_train_domain_classifier(config.classifier_folder(out), train_set, config.classifier,
                                                 progress=config.progress)
    return classifier.features_module()


def _write(report: dict, out, fake_set, train_set, sheet_rows: int, folders) -> None:
    import numpy as np

    from medart_core.data import load_rgb, write_json_atomic
    from medart_core.metrics import plots
    from medart_core.metrics.paths import scrub_paths
    from medart_core.metrics.privacy import render_markdown, worst_cases
    from medart_core.metrics.report import _plain

    worst = worst_cases(report, sheet_rows)
    rows = []
    for prompt in worst:
        own = prompt["pixel"]["own"]
        beside = own.get("beside")
        cells = [{"path": fake_set.records[own["generated_index"]].path, "title": f"generated [{prompt['label']}]"},
                 {"path": train_set.records[own["train_index"]].path, "title": f"its source r={own['similarity']:.3f}",
                  "red": prompt["pixel"]["reidentified"], "mirrored": own["mirrored"]}]
        if beside:
            cells.append({"path": train_set.records[beside["train_index"]].path, "mirrored": beside["mirrored"],
                          "title": f"nearest other r={beside['similarity']:.3f}"})
        rows.append(cells)
    report["plots"] = {"worst_cases": plots.image_rows(
        rows, load_rgb, out / "worst_cases.png",
        "closest prompts: generated | its own\ntraining image | nearest other (red: re-identified)").name}
    series = {}
    for space in ("pixel", "feature"):
        series[space] = {"own, per prompt": np.array([p[space]["own"]["similarity"] for p in report["prompts"]]),
                         "other, per prompt": np.array([p[space]["other"]["similarity"] for p in report["prompts"]
                                                         if p[space]["other"]]),
                         "held-out real, per image": report["_reference"].get(space, np.zeros(0))}
    report["plots"]["histogram"] = plots.privacy_histograms(series, report["thresholds"],
                                                            out / "similarity_histograms.png").name
    report["worst_cases"] = worst
    plain = scrub_paths(_plain(report), folders)
    write_json_atomic(out / "report.json", plain)
    (out / "report.md").write_text(render_markdown(plain))
