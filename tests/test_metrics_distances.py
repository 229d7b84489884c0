"""Frechet distance, KID and colour statistics on real image patches (scikit-image's retina and IHC)."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from metrics_images import (
    blur,
    colour_shift,
    one_thread,  # noqa: F401 (an autouse fixture)
    patches,
    write_imagefolder,
)

from medart_core.errors import MedArtError
from medart_core.metrics import color as colour
from medart_core.metrics.distances import (
    LibraryFidKid,
    bootstrap_interval,
    frechet_distance,
    frechet_distance_lowrank,
    kernel_inception_distance,
    load_inception,
    sample_size_warnings,
)
from medart_core.metrics.features import efficientnet_lite0_features, extract
from medart_core.metrics.sets import load_set


@pytest.fixture(scope="module")
def fundus_sets(tmp_path_factory):
    """24 fundus patches ("original"), 24 other patches of the same image ("other"), and that
    second sample colour-shifted and blurred, so that every comparison has the same sampling noise."""
    root = tmp_path_factory.mktemp("fundus")
    original = patches("fundus", 24, first=0)
    other = patches("fundus", 24, first=24)
    return {name: load_set(name, write_imagefolder(root / name, [(p, "fundus") for p in images]), prefer=())
            for name, images in (("original", original), ("other", other),
                                 ("shifted", [colour_shift(p) for p in other]), ("blurred", [blur(p) for p in other]))}


@pytest.fixture(scope="module")
def efficientnet_features(fundus_sets):
    extractor = efficientnet_lite0_features()
    return {name: extract(image_set, {"f": extractor}, progress=False)["f"] for name, image_set in fundus_sets.items()}


@pytest.fixture(scope="module")
def distances_to_original(efficientnet_features):
    """FD from the original set to each set, by the exact low-rank form (torch-fidelity's function
    solves a 1280-d eigenproblem per call: it is checked against it once, in the test below)."""
    f = efficientnet_features
    return {name: frechet_distance_lowrank(f["original"], f[name]) for name in f}


def test_efficientnet_features_are_1280_d_and_deterministic(fundus_sets, efficientnet_features):
    again = extract(fundus_sets["original"].subset(range(4)), {"f": efficientnet_lite0_features()}, progress=False)["f"]
    assert efficientnet_features["original"].shape == (24, 1280)
    np.testing.assert_allclose(again, efficientnet_features["original"][:4], rtol=1e-4, atol=1e-5)


def test_set_against_itself_has_fd_near_zero_and_shift_or_blur_much_larger(efficientnet_features, distances_to_original):
    f, fd = efficientnet_features, distances_to_original
    same, other, shifted, blurred = fd["original"], fd["other"], fd["shifted"], fd["blurred"]
    assert frechet_distance(f["original"], f["blurred"]) == pytest.approx(blurred, rel=1e-6)
    assert abs(same) < 1e-5 * other  # "other": a different sample of the same distribution
    # ImageNet features are fairly colour-invariant: a strong colour shift moves FD less than blur.
    assert shifted > 1.2 * other and blurred > 2.5 * other
    kid = {name: kernel_inception_distance(f["original"], f[name], subsets=20)["mean"] for name in f}
    assert kid["original"] < 0.1 * kid["blurred"]  # unbiased: slightly negative for identical sets
    assert kid["shifted"] > 5 * abs(kid["other"]) and kid["blurred"] > 5 * abs(kid["other"])


def test_colour_shift_gives_large_colour_distance_and_blur_keeps_means(fundus_sets):
    stats = {}
    for name, image_set in fundus_sets.items():
        stats[name] = colour.ColorStats(len(image_set))
        extract(image_set, {}, progress=False, visit=stats[name].add)
    original, other = stats["original"].summary(), stats["other"].summary()
    assert colour.color_distance(original, original)["distance"] == pytest.approx(0, abs=1e-12)
    baseline = colour.color_distance(original, other)
    shifted = colour.color_distance(original, stats["shifted"].summary())
    assert shifted["mean_abs_diff"]["red"] > 0.1 and shifted["distance"] > 3 * baseline["distance"]
    assert shifted["histogram_wasserstein"]["red"] > 3 * baseline["histogram_wasserstein"]["red"]
    # Blurring keeps channel means but lowers contrast (std).
    blurred = colour.color_distance(other, stats["blurred"].summary())
    assert blurred["mean_abs_diff"]["green"] < 0.01
    assert stats["blurred"].summary()["std"]["green"] < other["std"]["green"] - 0.002


def test_lowrank_frechet_distance_equals_library(fundus_sets):
    rng = np.random.default_rng(0)
    for n, dim in ((30, 64), (200, 16)):  # both branches: n < D (SVD) and n > D (eigh)
        a, b = rng.normal(size=(n, dim)), rng.normal(0.3, 1.2, size=(n + 7, dim))
        assert frechet_distance_lowrank(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-7)


def test_library_fid_kid_match_torch_fidelity_on_the_same_features(fundus_sets):
    """torchmetrics' metric classes, fed uint8 batches through our extractor module, give the
    numbers torch-fidelity's functions give on features extracted by the same module."""
    module = GridColour()
    real, fake = fundus_sets["original"], fundus_sets["shifted"]
    library = LibraryFidKid(module, len(real), len(fake), kid_subsets=1)
    real_f = extract(real, {"f": module}, progress=False, visit=lambda i, b: library.update(b, real=True))["f"]
    fake_f = extract(fake, {"f": module}, progress=False, visit=lambda i, b: library.update(b, real=False))["f"]
    values = library.compute()
    assert values["fid"] == pytest.approx(frechet_distance(real_f, fake_f), rel=1e-5)
    # One subset of all images: no random draw, so both libraries see the same sample.
    assert values["kid"]["mean"] == pytest.approx(kernel_inception_distance(real_f, fake_f, subsets=1)["mean"], rel=1e-3)
    assert values["fid"] > 0.05 and values["kid"]["mean"] > 1e-3
    np.testing.assert_allclose(library.features()[0], real_f, rtol=1e-6, atol=1e-8)


class GridColour(torch.nn.Module):
    """A feature extractor torchmetrics accepts (uint8 in, floats out): mean colour of a 2x2 grid."""

    num_features = 12

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 2).flatten(1)


def test_inception_weights_unavailable_is_a_clear_error_not_a_substitute(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(MedArtError, match="Inception weights .* could not be loaded"):
        load_inception()
    with pytest.raises(MedArtError, match="not found"):
        load_inception("/nonexistent/inception.pth")


def test_bootstrap_interval_is_near_the_estimate_and_small_sets_warn(efficientnet_features, distances_to_original):
    a, b = efficientnet_features["original"], efficientnet_features["blurred"]
    low, high = bootstrap_interval(a, b, replicates=30, seed=0)
    estimate = distances_to_original["blurred"]
    assert 0 < low < high and estimate / 3 < low < 3 * estimate and estimate / 3 < high < 3 * estimate
    assert any("sampling noise" in w for w in sample_size_warnings(len(a), len(b), a.shape[1]))
    assert any("singular" in w for w in sample_size_warnings(len(a), len(b), a.shape[1]))
    assert any("Inception FID" in w for w in sample_size_warnings(500, 500, 64, inception=True))
    assert sample_size_warnings(5000, 5000, 64) == []
