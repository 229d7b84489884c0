"""`evaluate`: run the chosen metrics on real / synthetic / training images, write the report.

Reads each set once (features, colour statistics and the library FID/KID are gathered in the same
pass), then computes each section. Every section of report.json says what it measured, on how
many images, with which uncertainty; metrics that cannot run say why under "skipped".
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medart_core.errors import MedArtError
from medart_core.metrics import color as colour
from medart_core.metrics.classifier import (ClassifierConfig, conditional_accuracy, downstream_classification,
                                            load_or_train_domain_classifier, scores)
from medart_core.metrics.distances import LibraryFidKid, bootstrap_interval, sample_size_warnings, set_distances
from medart_core.metrics.sets import ImageSet, resolve_sets

logger = logging.getLogger(__name__)

METRICS = ("fid", "kid", "dfd", "color", "conditional", "classify", "memorization", "diversity", "prdc")


@dataclass
class EvaluationConfig:
    """What to compute and how; the CLI fills it from its options (see `evaluate --help`)."""

    metrics: tuple[str, ...] = METRICS
    features: str = "domain"  # "domain", "domain:PATH" or "efficientnet"
    classifier_dir: str | None = None  # default: the domain:PATH, else OUT/classifier
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    bootstrap: int = 100
    kid_subsets: int = 100
    seeds: tuple[int, ...] = (0,)
    copy_threshold: float = 0.95
    sheet_pairs: int = 12
    batch_size: int = 32
    inception_weights: str | None = None
    diversity_pairs: int = 1000  # MS-SSIM pairs per class, seeded (the cost stays linear in n)
    prdc_k: int = 5  # Naeem et al.'s k
    explicit_metrics: bool = False  # metrics named by the user: missing inputs are errors, not skips
    progress: bool = True

    def check(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise MedArtError(f"unknown metrics {unknown or '(none)'}; choose from {','.join(METRICS)}")
        if not (self.features in ("domain", "efficientnet") or self.features.startswith("domain:")):
            raise MedArtError(f"--features {self.features!r}: use efficientnet, domain or domain:PATH")
        if self.features.startswith("domain:") and not self.features[len("domain:"):]:
            raise MedArtError("--features domain:PATH needs a folder after 'domain:'")
        if not 0 < self.copy_threshold <= 1:
            raise MedArtError(f"--copy-threshold must be in (0, 1], got {self.copy_threshold}")
        if self.diversity_pairs < 1 or self.prdc_k < 1:
            raise MedArtError("--diversity-pairs and --prdc-k must be at least 1")
        if self.bootstrap < 0 or self.kid_subsets < 1 or self.batch_size < 1 or not self.seeds:
            raise MedArtError("--bootstrap >= 0, --kid-subsets >= 1, --batch-size >= 1 and one seed at least are needed")
        self.classifier.check()

    def classifier_folder(self, out: Path) -> Path:
        named = self.features[len("domain:"):] if self.features.startswith("domain:") else None
        if named and self.classifier_dir and Path(named).resolve() != Path(self.classifier_dir).resolve():
            raise MedArtError(f"--features {self.features} and --classifier {self.classifier_dir} name two "
                              "classifiers; give one")
        return Path(named or self.classifier_dir or out / "classifier")


def evaluate(real: str | Path, fake: str | Path, train: str | Path | None, out: str | Path,
             config: EvaluationConfig | None = None) -> dict:
    """Compute the metrics, write report.json, report.md, report.html and plots to `out`; return the report."""
    config = config or EvaluationConfig()
    config.check()
    out = Path(out)
    real_set, fake_set, train_set = resolve_sets(real, fake, train)
    wanted = set(config.metrics)
    report: dict = {"inputs": {"real": real_set.describe(), "synthetic": fake_set.describe(),
                               "training": train_set.describe() if train_set else None},
                    "leakage": _leakage_section(real_set, train_set, config),
                    "settings": _settings(config), "warnings": [], "skipped": {}, "timings_s": {}, "plots": {}}
    out.mkdir(parents=True, exist_ok=True)

    def skip(metric: str, reason: str) -> None:
        if config.explicit_metrics and metric in wanted and not reason.startswith("FID/KID"):
            raise MedArtError(f"cannot compute {metric}: {reason}")
        logger.warning("skipping %s: %s", metric, reason)
        report["skipped"][metric] = reason
        wanted.discard(metric)

    if train_set is None:
        for metric in ("conditional", "classify", "memorization"):
            if metric in wanted:
                skip(metric, "no training images (give --train DIR, or a --real DIR with a train/ split)")
    for metric in ("conditional", "classify"):
        if metric in wanted and not (fake_set.has_labels and real_set.has_labels and train_set.has_labels):
            skip(metric, "needs a class label for every real, training and synthetic image")

    # The feature space of dfd and memorisation, and the real-trained classifier.
    classifier, feature_module = None, None
    uses_domain = config.features != "efficientnet" and wanted & {"dfd", "memorization", "prdc"}
    if "conditional" in wanted or uses_domain:
        start = time.perf_counter()
        try:
            classifier = load_or_train_domain_classifier(config.classifier_folder(out), train_set,
                                                         config.classifier, progress=config.progress)
        except MedArtError as err:
            if config.explicit_metrics:
                raise
            for metric in ("conditional", "dfd", "memorization", "prdc") if uses_domain else ("conditional",):
                if metric in wanted:
                    skip(metric, str(err))
        report["timings_s"]["domain_classifier"] = time.perf_counter() - start
        if classifier is not None:
            report["domain_classifier"] = {"folder": str(classifier.folder), "classes": classifier.classes,
                                           "config": asdict(classifier.config), **classifier.info}
    if wanted & {"dfd", "memorization", "prdc"}:
        if config.features == "efficientnet":
            from medart_core.metrics.features import efficientnet_lite0_features

            feature_module = efficientnet_lite0_features()
        elif classifier is not None:
            feature_module = classifier.features_module()
    report["settings"]["feature_space"] = getattr(feature_module, "description", None)
    # PRDC is also reported in the ImageNet space when the chosen one is another (comparable across runs).
    efficientnet_module, efficientnet_error = None, None
    if "prdc" in wanted and config.features != "efficientnet":
        from medart_core.metrics.features import efficientnet_lite0_features

        try:
            efficientnet_module = efficientnet_lite0_features()
        except MedArtError as err:
            efficientnet_error = str(err)
    diversity_size = None
    if "diversity" in wanted:
        from medart_core.metrics.diversity import comparison_size

        try:
            diversity_size = comparison_size([record.path for record in fake_set.records])
        except ValueError as err:
            skip("diversity", str(err))

    library = None
    if wanted & {"fid", "kid"}:
        try:
            library = LibraryFidKid(2048, len(real_set), len(fake_set), config.kid_subsets, config.classifier.seed,
                                    config.inception_weights)
        except MedArtError as err:
            if config.inception_weights:
                raise
            for metric in ("fid", "kid"):
                if metric in wanted:
                    skip(metric, f"FID/KID skipped, not substituted: {err}")

    # One reading pass per set.
    color_stats = {}
    features: dict[str, dict[str, np.ndarray]] = {}
    thumbnail_sets = {}
    for role, image_set, real_flag in (("real", real_set, True), ("synthetic", fake_set, False),
                                       ("training", train_set, None)):
        if image_set is None:
            continue
        extractors = {}
        if feature_module is not None and (role != "training" or "memorization" in wanted):
            extractors["features"] = feature_module
        if "memorization" in wanted:
            from medart_core.metrics.features import mirrored, pixel_features

            extractors["pixels"] = pixel_features()
            if role == "training":  # training flips images: their mirrors are copies too
                extractors["pixels_mirrored"] = mirrored(extractors["pixels"])
                if "features" in extractors:
                    extractors["features_mirrored"] = mirrored(extractors["features"])
        if "conditional" in wanted and role != "training" and classifier is not None:
            extractors["logits"] = classifier.logits_module()
        if efficientnet_module is not None and role != "training":
            extractors["efficientnet"] = efficientnet_module
        needs_color = "color" in wanted and role != "training"
        needs_library = library is not None and role != "training"
        needs_thumbnails = "diversity" in wanted and role != "training"
        if not extractors and not needs_color and not needs_library and not needs_thumbnails:
            continue
        stats = colour.ColorStats(len(image_set)) if needs_color else None
        thumbnails = None
        if needs_thumbnails:
            from medart_core.metrics.diversity import Thumbnails

            thumbnails = thumbnail_sets[role] = Thumbnails(len(image_set), diversity_size)

        def visit(indices, batch, stats=stats, real_flag=real_flag, needs_library=needs_library, thumbnails=thumbnails):
            if stats is not None:
                stats.add(indices, batch)
            if needs_library:
                library.update(batch, real=real_flag)
            if thumbnails is not None:
                thumbnails.add(indices, batch)

        start = time.perf_counter()
        features[role] = _extract(image_set, extractors, config, visit)
        report["timings_s"][f"read_{role}"] = time.perf_counter() - start
        if stats is not None:
            color_stats[role] = stats

    sections = [("fid", _library_section), ("dfd", _dfd_section), ("color", _color_section),
                ("conditional", _conditional_section), ("classify", _classify_section),
                ("memorization", _memorization_section), ("diversity", _diversity_section), ("prdc", _prdc_section)]
    context = {"config": config, "out": out, "real": real_set, "fake": fake_set, "train": train_set,
               "features": features, "color": color_stats, "library": library, "classifier": classifier,
               "wanted": wanted, "report": report, "thumbnails": thumbnail_sets,
               "efficientnet": (efficientnet_module, efficientnet_error)}
    for metric, compute in sections:
        if metric in wanted or (metric == "fid" and "kid" in wanted):
            start = time.perf_counter()
            compute(context)
            report["timings_s"][metric] = time.perf_counter() - start
    for section in ("fid", "kid", "dfd"):
        for note in (report.get(section) or {}).get("warnings", []):
            report["warnings"].append(f"{section}: {note}")
    # Evaluation files name no absolute path of this machine (the report travels).
    folders = [real_set.root, fake_set.root, train_set.root if train_set else None, out,
               classifier.folder if classifier is not None else None, config.inception_weights]
    _write(report, out, folders)
    return report


def _leakage_section(real_set: ImageSet, train_set: ImageSet | None, config: EvaluationConfig) -> dict | None:
    """`check-splits` on the held-out and training sets: a held-out image (or its volume or
    patient) that is also trained on makes every number below optimistic, so it comes first."""
    from medart_core.metrics.leakage import check_leakage, summary_lines

    if train_set is None:
        return None
    result = check_leakage([train_set, real_set], config.copy_threshold, config.batch_size, config.progress)
    return {**result, "summary": summary_lines(result)}


def _extract(image_set: ImageSet, extractors: dict, config: EvaluationConfig, visit) -> dict:
    from medart_core.metrics.features import extract

    return extract(image_set, extractors, batch_size=config.batch_size, progress=config.progress, visit=visit)


def _settings(config: EvaluationConfig) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "torchmetrics", "torch-fidelity"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    settings = asdict(config)
    settings["metrics"] = list(config.metrics)
    settings["seeds"] = list(config.seeds)
    settings.pop("progress")
    return {**settings, "versions": versions}


def _by_class(image_set: ImageSet) -> dict[str, np.ndarray]:
    labels = np.array([str(l) if l is not None else "" for l in image_set.labels])
    return {label: np.flatnonzero(labels == label) for label in sorted(set(labels)) if label}


def _shared_classes(real: ImageSet, fake: ImageSet) -> list[tuple[str, np.ndarray, np.ndarray]]:
    real_idx, fake_idx = _by_class(real), _by_class(fake)
    return [(label, real_idx[label], fake_idx[label]) for label in real_idx if label in fake_idx]


def _library_section(ctx) -> None:
    """Inception FID/KID through torchmetrics, CI from the same features."""
    library, report, config = ctx["library"], ctx["report"], ctx["config"]
    if library is None:
        return
    values = library.compute()
    real, fake = library.features()
    notes = sample_size_warnings(len(real), len(fake), real.shape[1], inception=True)
    if "fid" in ctx["wanted"]:
        report["fid"] = {"value": values["fid"], "ci95": bootstrap_interval(real, fake, config.bootstrap, config.classifier.seed),
                         "n_real": len(real), "n_fake": len(fake), "library": "torchmetrics FrechetInceptionDistance",
                         "warnings": notes}
    if "kid" in ctx["wanted"]:
        report["kid"] = {**values["kid"], "library": "torchmetrics KernelInceptionDistance",
                         "warnings": [n for n in notes if "Inception FID" not in n and "covariance" not in n]}


def _dfd_section(ctx) -> None:
    """Frechet distance + KID in the chosen feature space, overall and per class."""
    config, report = ctx["config"], ctx["report"]
    real, fake = ctx["features"]["real"]["features"], ctx["features"]["synthetic"]["features"]
    section = {"feature_space": report["settings"]["feature_space"], "feature_dim": int(real.shape[1]),
               **set_distances(real, fake, config.bootstrap, config.kid_subsets, config.classifier.seed)}
    per_class = {}
    for label, r, f in _shared_classes(ctx["real"], ctx["fake"]):
        per_class[label] = set_distances(real[r], fake[f], config.bootstrap, config.kid_subsets, config.classifier.seed)
    section["per_class"] = per_class
    report["dfd"] = section


def _color_section(ctx) -> None:
    from medart_core.metrics import plots

    report, stats = ctx["report"], ctx["color"]
    real_all, fake_all = stats["real"].summary(), stats["synthetic"].summary()
    section = {"real": colour.public(real_all), "synthetic": colour.public(fake_all),
               "distance": colour.color_distance(real_all, fake_all), "per_class": {}}
    for label, r, f in _shared_classes(ctx["real"], ctx["fake"]):
        real_c, fake_c = stats["real"].summary(r), stats["synthetic"].summary(f)
        section["per_class"][label] = {"real": colour.public(real_c), "synthetic": colour.public(fake_c),
                                       "distance": colour.color_distance(real_c, fake_c)}
    report["color"] = section
    report["plots"]["color"] = plots.color_histograms(real_all, fake_all, ctx["out"] / "color_histograms.png").name


def _conditional_section(ctx) -> None:
    from medart_core.metrics import plots

    classifier, report = ctx["classifier"], ctx["report"]
    classes = classifier.classes
    fake_pred = ctx["features"]["synthetic"]["logits"].argmax(1)
    section = conditional_accuracy(fake_pred, ctx["fake"].labels, classes)
    # The ceiling: the same classifier on held-out real images.
    real_pred = ctx["features"]["real"]["logits"].argmax(1)
    known = [i for i, l in enumerate(ctx["real"].labels) if l in classes]
    target = np.array([classes.index(ctx["real"].labels[i]) for i in known])
    section["held_out_real"] = scores(real_pred[known], target, len(classes), classes) if known else None
    report["conditional"] = section
    if section["per_class"]:
        report["plots"]["conditional"] = plots.bar_chart(
            {k: v["accuracy"] for k, v in section["per_class"].items()}, ctx["out"] / "conditional_accuracy.png",
            "conditional accuracy (classifier trained on real)", "accuracy").name
        report["plots"]["class_samples"] = _class_samples(ctx, fake_pred, classes).name


def _class_samples(ctx, fake_pred, classes, per_side: int = 4):
    """`per_side` held-out real and generated images of every class the prompts asked for, spread
    evenly over each list (neighbouring slices look alike)."""
    from medart_core.data import load_rgb
    from medart_core.metrics import plots

    def spread(items):
        return [items[i * len(items) // per_side] for i in range(min(per_side, len(items)))]

    real, fake = ctx["real"], ctx["fake"]
    rows = []
    for label in sorted({l for l in fake.labels if l in classes}):
        asked = spread([i for i, l in enumerate(fake.labels) if l == label])
        rows.append({"label": label, "real": spread([record.path for record in real.records if record.label == label]),
                     "fake": [(fake.records[i].path, classes[int(fake_pred[i])]) for i in asked]})
    return plots.class_samples(rows, load_rgb, ctx["out"] / "class_samples.png")


def _classify_section(ctx) -> None:
    config = ctx["config"]
    ctx["report"]["classification"] = downstream_classification(
        ctx["train"], ctx["fake"], ctx["real"], config.classifier, list(config.seeds), progress=config.progress)


def _classes_or_all(ctx) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The classes both sets share, or the whole sets as one class "all" when they share none."""
    return _shared_classes(ctx["real"], ctx["fake"]) or [("all", np.arange(len(ctx["real"])), np.arange(len(ctx["fake"])))]


def _diversity_section(ctx) -> None:
    from medart_core.metrics import plots
    from medart_core.metrics.diversity import diversity_section, msssim_settings

    config, report, thumbnails = ctx["config"], ctx["report"], ctx["thumbnails"]
    size = thumbnails["synthetic"].size
    section = diversity_section(thumbnails["real"].images, thumbnails["synthetic"].images, _classes_or_all(ctx),
                                msssim_settings(size), config.diversity_pairs, config.classifier.seed)
    report["diversity"] = section
    rows = {label: (row["real_ms_ssim"], row["ms_ssim"]) for label, row in section["per_class"].items()
            if "unavailable" not in row}
    if rows:
        report["plots"]["diversity"] = plots.grouped_bars(
            rows, ("real", "generated"), ctx["out"] / "diversity.png",
            f"mean pairwise MS-SSIM per class ({section['scales']} scales at {size} px; higher = less varied)",
            "MS-SSIM").name


def _prdc_section(ctx) -> None:
    from medart_core.metrics import plots
    from medart_core.metrics.prdc import prdc_section

    config, report, feats = ctx["config"], ctx["report"], ctx["features"]
    classes = _classes_or_all(ctx) if _shared_classes(ctx["real"], ctx["fake"]) else []
    section = prdc_section(feats["real"]["features"], feats["synthetic"]["features"], classes,
                           report["settings"]["feature_space"], config.prdc_k)
    module, error = ctx["efficientnet"]
    if module is not None:
        section["efficientnet"] = prdc_section(feats["real"]["efficientnet"], feats["synthetic"]["efficientnet"],
                                               classes, module.description, config.prdc_k)
    elif error is not None:
        section["efficientnet"] = {"unavailable": error}
    report["prdc"] = section
    rows = {label: (row["precision"], row["recall"], row["coverage"])
            for label, row in [("all", section), *section["per_class"].items()] if "unavailable" not in row}
    if rows:
        report["plots"]["prdc"] = plots.grouped_bars(
            rows, ("precision", "recall", "coverage"), ctx["out"] / "precision_recall.png",
            f"precision (fidelity), recall and coverage (variety), k={config.prdc_k}", "fraction").name


def _memorization_section(ctx) -> None:
    from medart_core.data import load_rgb
    from medart_core.metrics import plots
    from medart_core.metrics.memorization import audit

    config, report, feats = ctx["config"], ctx["report"], ctx["features"]
    result = audit(feats["synthetic"]["pixels"], feats["training"]["pixels"], feats["synthetic"]["features"],
                   feats["training"]["features"], ctx["fake"].labels, config.copy_threshold,
                   feats["real"].get("pixels"), feats["real"].get("features"),
                   feats["training"].get("pixels_mirrored"), feats["training"].get("features_mirrored"))
    fake_records, train_records = ctx["fake"].records, ctx["train"].records
    sheet = []
    for pair in result["pairs"][:config.sheet_pairs]:
        fake_record = fake_records[pair["fake"]]
        row = {**pair, "label": fake_record.label, "fake_path": str(fake_record.path),
               "train_pixel_path": str(train_records[pair["train_pixel"]].path),
               "train_feature_path": str(train_records[pair["train_feature"]].path)}
        row["ssim"] = _ssim(row["fake_path"], row["train_pixel_path"], mirror=row["train_pixel_mirrored"])
        sheet.append(row)
    result["closest_pairs"] = [{k: row[k] for k in ("fake_path", "train_pixel_path", "train_pixel_mirrored",
                                                   "train_feature_path", "train_feature_mirrored", "label",
                                                   "pixel_similarity", "ssim", "feature_similarity", "flagged")}
                               for row in sheet]
    result["flagged"] = [{"fake_path": str(fake_records[p["fake"]].path),
                          "train_path": str(train_records[p["train_pixel"]].path),
                          "mirrored": p["train_pixel_mirrored"],
                          "pixel_similarity": p["pixel_similarity"]} for p in result["pairs"] if p["flagged"]]
    if sheet:
        report["plots"]["nearest_neighbours"] = plots.contact_sheet(sheet, load_rgb, ctx["out"] / "nearest_neighbours.png").name
    report["plots"]["similarity"] = plots.similarity_histograms(
        result["_fake_pixel_sim"], result["_fake_feature_sim"], ctx["out"] / "similarity_histograms.png",
        config.copy_threshold, result.get("_reference_pixel_sim"), report["settings"]["feature_space"] or "features").name
    result.pop("pairs")
    report["memorization"] = result


def _ssim(path_a: str, path_b: str, size: int = 64, mirror: bool = False) -> float:
    """Structural similarity of two images at size x size (torchmetrics), a perceptual check of a
    pair; `mirror` flips the second image left-right (a match with a training image's mirror)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from medart_core.data import load_rgb
    from medart_core.metrics.sets import resize_uint8, to_uint8_tensor

    a, b = (resize_uint8(to_uint8_tensor(load_rgb(p))[None], size) / 255.0 for p in (path_a, path_b))
    if mirror:
        b = b.flip(-1)
    return float(structural_similarity_index_measure(a.double(), b.double(), data_range=1.0))


def _plain(value):
    """JSON-ready copy: numpy scalars to Python, private (underscore) keys and arrays dropped."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_") and not isinstance(v, np.ndarray)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _write(report: dict, out: Path, folders=()) -> None:
    from medart_core.metrics.html import render_html
    from medart_core.metrics.markdown import render
    from medart_core.metrics.paths import scrub_paths

    plain = scrub_paths(_plain(report), folders)
    report.clear()
    report.update(plain)
    (out / "report.json").write_text(json.dumps(plain, indent=2, ensure_ascii=False) + "\n")
    markdown = render(plain)
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(render_html(markdown, out))
    logger.info("wrote %s, %s and %s", out / "report.json", out / "report.md", out / "report.html")
