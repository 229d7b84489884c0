"""Diversity (MS-SSIM), precision/recall/density/coverage and report.html, on real patches
(scikit-image's retina and IHC images): a varied generated set against a collapsed one."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
from metrics_images import one_thread, patches, real_dataset, write_imagefolder  # noqa: F401 (autouse fixture)
from PIL import Image

from medart_core.__main__ import main
from medart_core.metrics.diversity import mean_pairwise_msssim, msssim_settings, sample_pairs
from medart_core.metrics.prdc import compute

N = 12  # generated images per class, as many as the held-out real ones


def faint_noise(image: Image.Image, seed: int, amplitude: int = 3) -> Image.Image:
    noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, size=(*image.size[::-1], 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """evaluate on three generated sets against the same real test split (12 fundus + 12 IHC):
    varied (new patches), collapsed (one patch per class repeated) and collapsed with faint noise.
    The varied run computes every metric that needs no download, for the report.html test."""
    root = tmp_path_factory.mktemp("diversity")
    real = real_dataset(root / "real", n_train=16, n_test=N)
    varied = [(p, "fundus") for p in patches("fundus", N, first=28)] + [(p, "ihc") for p in patches("ihc", N, first=28)]
    one = {"fundus": patches("fundus", 1, first=28)[0], "ihc": patches("ihc", 1, first=28)[0]}
    sets = {"varied": varied,
            "collapsed": [(one[label], label) for label in ("fundus", "ihc") for _ in range(N)],
            "noisy": [(faint_noise(one[label], i), label) for label in ("fundus", "ihc") for i in range(N)]}
    reports = {}
    common = ["--real", str(real), "--classifier", str(root / "classifier"), "--classifier-steps", "60",
              "--classifier-size", "32", "--bootstrap", "10", "--kid-subsets", "10", "--no-progress"]
    for name, items in sets.items():
        fake = write_imagefolder(root / name, items, generated=True)
        metrics = "dfd,color,conditional,memorization,diversity,prdc" if name == "varied" else "diversity,prdc"
        assert main(["evaluate", *common, "--fake", str(fake), "--metrics", metrics, "--out", str(root / f"out-{name}")]) == 0
        reports[name] = json.loads((root / f"out-{name}" / "report.json").read_text())
    return root, reports


def test_collapsed_sets_score_worse_on_diversity_recall_and_coverage(runs):
    _, reports = runs
    varied = reports["varied"]
    assert varied["diversity"]["scales"] == 3 and varied["diversity"]["kernel_size"] == 11  # 48 px images
    assert varied["diversity"]["pairs"] == 2 * N * (N - 1) // 2 and varied["diversity"]["real_pairs"] == 2 * 66
    for name in ("collapsed", "noisy"):
        collapsed = reports[name]
        # MS-SSIM: copies are ~1, varied real patches far below; real reference identical in both runs.
        assert collapsed["diversity"]["ms_ssim"] > 0.95 > varied["diversity"]["ms_ssim"] + 0.3
        assert collapsed["diversity"]["real_ms_ssim"] == pytest.approx(varied["diversity"]["real_ms_ssim"])
        assert collapsed["diversity"]["ratio"] > 2 * varied["diversity"]["ratio"]
        for space in (collapsed["prdc"], collapsed["prdc"]["efficientnet"]):
            other = varied["prdc"] if space is collapsed["prdc"] else varied["prdc"]["efficientnet"]
            assert space["recall"] <= 0.1 < other["recall"] - 0.3, (name, space, other)
            assert space["coverage"] + 0.3 < other["coverage"], (name, space, other)
            for label in ("fundus", "ihc"):
                assert space["per_class"][label]["recall"] < other["per_class"][label]["recall"]
    prdc = varied["prdc"]
    assert prdc["k"] == 5 and prdc["feature_space"].startswith("domain classifier")
    assert prdc["efficientnet"]["feature_space"].startswith("EfficientNet-Lite0")
    assert prdc["precision"] > 0.5 and prdc["n_real"] == prdc["n_fake"] == 2 * N


def test_prdc_of_a_class_with_n_at_most_k_is_unavailable_with_the_reason():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(20, 8))
    for n in (3, 5):
        result = compute(real, rng.normal(size=(n, 8)), k=5)
        assert "precision" not in result and f"n={n}" in result["unavailable"] and "k=5" in result["unavailable"]
    assert set(compute(real, rng.normal(size=(7, 8)), k=5)) >= {"precision", "recall", "density", "coverage"}


def test_pairs_are_capped_distinct_and_seeded():
    pairs = sample_pairs(100, 1000, seed=0)
    assert len(pairs) == 1000 == len({tuple(p) for p in pairs}) and (pairs[:, 0] < pairs[:, 1]).all()
    assert (pairs == sample_pairs(100, 1000, seed=0)).all() and not (pairs == sample_pairs(100, 1000, seed=1)).all()
    assert len(sample_pairs(10, 1000, seed=0)) == 45
    assert msssim_settings(64)["scales"] == 3 and msssim_settings(256)["scales"] == 5
    assert sum(msssim_settings(64)["betas"]) == pytest.approx(1.0)
    import torch

    copies = torch.full((4, 3, 48, 48), 100, dtype=torch.uint8)
    copies[:, :, ::3] = 200
    value, n = mean_pairwise_msssim(copies, msssim_settings(48))
    assert n == 6 and value == pytest.approx(1.0)


def test_report_html_is_self_contained_and_names_every_metric_computed(runs):
    root, reports = runs
    report = reports["varied"]
    page = (root / "out-varied" / "report.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    names = {"dfd": "Frechet distance", "color": "Colour statistics", "conditional": "Conditional accuracy",
             "memorization": "Memorisation audit", "diversity": "MS-SSIM", "prdc": "Precision, recall, density, coverage"}
    computed = [m for m in names if m in report]
    assert computed == list(names)
    for metric in computed:
        assert names[metric] in text, metric
    for figure in ("precision", "recall", "density", "coverage", "KID"):
        assert figure in text
    for warning in report["warnings"]:
        assert warning in text
    for row in report["dfd"]["per_class"].values():  # per-class small-n warnings, next to their numbers
        assert row["fd_reliable"] is False and all(note in text for note in row["warnings"])
    assert "n ≤ D, unreliable" in text and "SYNTHETIC" in text
    images = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(images) == len(report["plots"]) >= 6
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched: opens offline


def test_frechet_distance_at_n_up_to_d_is_marked_and_kid_leads():
    from medart_core.metrics.distances import set_distances
    from medart_core.metrics.markdown import render

    rng = np.random.default_rng(0)
    big = set_distances(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), 0, 10, 0)
    small = set_distances(rng.normal(size=(6, 8)), rng.normal(size=(6, 8)), 0, 10, 0)
    assert big["fd_reliable"] is True and small["fd_reliable"] is False
    report = {"inputs": {}, "settings": {}, "warnings": [], "skipped": {}, "plots": {},
              "dfd": {"feature_space": "test space", "feature_dim": 8, **big, "per_class": {"rare": small}}}
    lines = render(report).splitlines()
    rare = next(line for line in lines if line.startswith("| rare |"))
    overall = next(line for line in lines if line.startswith("| all |"))
    assert "⚠ n ≤ D, unreliable" in rare and f"**{small['kid']['mean']:.4g} ±" in rare
    assert "⚠" not in overall and "**" not in overall
    assert any(line.startswith("- rare: n=6 <= feature dimension 8") for line in lines)
    headline = next(line for line in lines if line.startswith("| distance in the feature space"))
    assert headline.count("FD **") == 1  # reliable overall: FD leads
