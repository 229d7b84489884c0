"""`python -m medart_core evaluate`: how close a synthetic set is to real images, and is it safe."""

from __future__ import annotations

import argparse

HELP = ("evaluate a synthetic set: FID/KID, domain Frechet distance, colour, conditional accuracy, "
        "downstream classification, memorisation audit, diversity (MS-SSIM), precision/recall/density/coverage "
        "-> report.json, report.md, report.html, plots")

METRICS = "fid,kid,dfd,color,conditional,classify,memorization,diversity,prdc"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", required=True,
                        help="held-out real images (imagefolder); with split folders its test/ split is used "
                             "and its train/ split is the training set unless --train is given")
    parser.add_argument("--fake", required=True, help="generated set (imagefolder with metadata.jsonl labels)")
    parser.add_argument("--train", default=None,
                        help="images the generator was trained on (its train/ split if it has one); "
                             "needed by conditional, classify, memorization and the domain classifier "
                             "(default: --real's train/ split, else those metrics are skipped)")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated subset of {METRICS} (default: all; metrics whose inputs are "
                             "missing are skipped with the reason; named metrics that cannot run are an error)")
    parser.add_argument("--features", default="domain",
                        help="feature space of dfd, memorization and prdc (prdc also reports EfficientNet-Lite0 "
                             "when this is another): domain (the classifier in --classifier), "
                             "domain:PATH (a classifier folder: trained and saved there when absent, reused after), "
                             "or efficientnet (ImageNet EfficientNet-Lite0, offline) (default: domain)")
    parser.add_argument("--classifier", default=None,
                        help="folder of the classifier trained on the real training set (domain features and "
                             "conditional accuracy); reuse it across runs to keep numbers comparable "
                             "(default: the PATH of --features domain:PATH, else OUT/classifier)")
    parser.add_argument("--classifier-steps", type=int, default=500,
                        help="optimiser steps of every classifier trained (default: 500)")
    parser.add_argument("--classifier-size", type=int, default=64,
                        help="classifier input size in pixels, images are resized to it (default: 64)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds of the downstream classifiers, e.g. 0,1,2 (default: 0); "
                             "the first also seeds the domain classifier, KID subsets and bootstrap")
    parser.add_argument("--bootstrap", type=int, default=100,
                        help="bootstrap replicates for Frechet-distance 95%% intervals; 0 turns them off (default: 100)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    parser.add_argument("--copy-threshold", type=float, default=0.95,
                        help="pixel correlation (32x32 thumbnails) at or above which a generated image is flagged "
                             "as a near-copy of a training image (default: 0.95)")
    parser.add_argument("--sheet-pairs", type=int, default=12,
                        help="closest generated/training pairs on the contact sheet (default: 12)")
    parser.add_argument("--inception-weights", default=None,
                        help="local copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth for FID/KID "
                             "(default: torch's hub cache; when it cannot be loaded FID and KID are skipped)")
    parser.add_argument("--diversity-pairs", type=int, default=1000,
                        help="most image pairs per class for diversity's mean MS-SSIM, drawn with the first seed "
                             "(default: 1000; the cost is linear in it)")
    parser.add_argument("--prdc-k", type=int, default=5,
                        help="k of precision/recall/density/coverage (nearest neighbours; Naeem et al. use 5); "
                             "a class with fewer than k+2 images in a set is reported unavailable (default: 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per feature-extraction batch (default: 32)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    parser.add_argument("--out", required=True,
                        help="report folder: report.json, report.md, report.html (self-contained), PNG plots")


def _ints(text: str, option: str) -> tuple[int, ...]:
    from medart_core.errors import MedArtError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise MedArtError(f"{option} {text!r}: expected comma-separated integers") from err
    if not values:
        raise MedArtError(f"{option} is empty")
    return values


def run(args: argparse.Namespace) -> None:
    from medart_core.metrics.classifier import ClassifierConfig
    from medart_core.metrics.report import METRICS as ALL, EvaluationConfig, evaluate

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else ALL
    seeds = _ints(args.seeds, "--seeds")
    config = EvaluationConfig(
        metrics=metrics, features=args.features, classifier_dir=args.classifier,
        classifier=ClassifierConfig(image_size=args.classifier_size, steps=args.classifier_steps, seed=seeds[0]),
        bootstrap=args.bootstrap, kid_subsets=args.kid_subsets, seeds=seeds, copy_threshold=args.copy_threshold,
        sheet_pairs=args.sheet_pairs, batch_size=args.batch_size, inception_weights=args.inception_weights,
        diversity_pairs=args.diversity_pairs, prdc_k=args.prdc_k,
        explicit_metrics=args.metrics is not None, progress=not args.no_progress)
    report = evaluate(args.real, args.fake, args.train, args.out, config)
    print(_summary(report, args.out))


def _summary(report: dict, out: str) -> str:
    parts = []
    if "fid" in report:
        parts.append(f"FID {report['fid']['value']:.4g}")
    if "kid" in report:
        parts.append(f"KID {report['kid']['mean']:.4g}")
    if "dfd" in report and report["dfd"].get("fd") is not None:
        parts.append(f"FD {report['dfd']['fd']:.4g}")
    if "color" in report and "distance" in report["color"]["distance"]:
        parts.append(f"colour distance {report['color']['distance']['distance']:.4g}")
    if "conditional" in report and report["conditional"]["accuracy"] is not None:
        parts.append(f"conditional accuracy {report['conditional']['accuracy']:.3f}")
    if "memorization" in report:
        parts.append(f"{report['memorization']['n_flagged']} near-copies")
    if (report.get("leakage") or {}).get("leaks"):
        parts.insert(0, "LEAKAGE between the held-out and training sets (see the report's first section)")
    if "diversity" in report and report["diversity"]["ratio"] is not None:
        parts.append(f"MS-SSIM ratio {report['diversity']['ratio']:.3g}")
    if "prdc" in report and "recall" in report["prdc"]:
        parts.append(f"precision {report['prdc']['precision']:.3g} recall {report['prdc']['recall']:.3g} "
                     f"coverage {report['prdc']['coverage']:.3g}")
    skipped = f"; skipped {', '.join(report['skipped'])}" if report["skipped"] else ""
    return f"{'; '.join(parts) or 'no metric computed'}{skipped} -> {out}/report.html"
