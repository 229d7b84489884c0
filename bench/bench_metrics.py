"""How evaluation cost grows with set size: feature extraction images/s and each metric's time
at 500 and 2,000 images (CPU). `python bench/bench_metrics.py [--quick]`.

Images are smooth random noise (64x64 uint8) and features are Gaussian with the real extractors'
dimensions: the cost of the distance math depends only on n and D, not on what the pixels show.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def timed(function, *args, repeat: int = 1, **kwargs):
    start = time.perf_counter()
    for _ in range(repeat):
        result = function(*args, **kwargs)
    return (time.perf_counter() - start) / repeat, result


def noise_images(n: int, size: int = 64, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth.clamp(0, 1) * 255).round().to(torch.uint8)


def extraction_rates(quick: bool) -> dict[str, float]:
    """Images per second of each feature extractor on 64x64 uint8 batches of 32."""
    import torch

    from medart_core.metrics.classifier import ClassifierConfig, build_cnn, _Wrapped
    from medart_core.metrics.features import efficientnet_lite0_features, pixel_features

    config = ClassifierConfig()
    extractors = {
        "efficientnet-lite0 (224px, 1280-d)": (efficientnet_lite0_features(), 32 if quick else 96),
        "domain CNN (64px, 128-d)": (_Wrapped(build_cnn(4, config.widths).backbone, config.image_size, 128, "domain"), 512),
        "pixels (32px)": (pixel_features(), 2048),
    }
    rates = {}
    with torch.inference_mode():
        for name, (module, n) in extractors.items():
            images = noise_images(n)
            module(images[:8])  # warm-up
            seconds, _ = timed(lambda: [module(images[i:i + 32]) for i in range(0, n, 32)])
            rates[name] = n / seconds
    return rates


def metric_times(n: int, quick: bool) -> dict[str, float]:
    from medart_core.metrics import color as colour
    from medart_core.metrics.classifier import ClassifierConfig, predict, train_classifier
    from medart_core.metrics.distances import (bootstrap_interval, frechet_distance, frechet_distance_lowrank,
                                               kernel_inception_distance)
    from medart_core.metrics.diversity import Thumbnails, mean_pairwise_msssim, msssim_settings
    from medart_core.metrics.features import pixel_features
    from medart_core.metrics.memorization import audit
    from medart_core.metrics.prdc import compute as prdc

    rng = np.random.default_rng(0)
    times = {}
    for dim in (128, 1280):
        real, fake = rng.normal(size=(n, dim)), rng.normal(0.1, 1.1, size=(n, dim))
        times[f"FD torch-fidelity, D={dim}"] = timed(frechet_distance, real, fake)[0]
        times[f"FD low-rank, D={dim}"] = timed(frechet_distance_lowrank, real, fake)[0]
        replicates = 5 if quick else 20
        times[f"FD bootstrap, per replicate, D={dim}"] = timed(bootstrap_interval, real, fake, replicates)[0] / replicates
        times[f"KID 100 subsets, D={dim}"] = timed(kernel_inception_distance, real, fake, 100)[0]
        times[f"PRDC k=5 (n x n distances: quadratic), D={dim}"] = timed(prdc, real, fake)[0]
    images = noise_images(n)
    thumbnails = Thumbnails(n, 64)
    times["diversity: thumbnails (64px, linear)"] = timed(lambda: [thumbnails.add(list(range(i, min(i + 32, n))),
                                                                                  images[i:i + 32]) for i in range(0, n, 32)])[0]
    times["diversity: MS-SSIM, 1000 pairs of one class (capped: flat in n)"] = timed(
        mean_pairwise_msssim, thumbnails.images, msssim_settings(64), 1000)[0]
    stats = colour.ColorStats(n)
    times["colour statistics (64px)"] = timed(lambda: [stats.add(list(range(i, min(i + 32, n))), images[i:i + 32])
                                                      for i in range(0, n, 32)])[0]
    pixels = pixel_features()(images).double().numpy()
    features = rng.normal(size=(n, 1280))
    train_pixels = pixel_features()(noise_images(n, seed=1)).double().numpy()
    times["memorisation audit vs n training images"] = timed(
        audit, pixels, train_pixels, features, rng.normal(size=(n, 1280)), [None] * n, 0.95)[0]
    times.update(privacy_and_leakage_times(n))
    config = ClassifierConfig(steps=20 if quick else 50)
    targets = rng.integers(0, 4, size=n)
    seconds, model = timed(train_classifier, images, targets, 4, config, progress=False)
    times[f"classifier training, per step (batch {config.batch_size}, independent of n)"] = seconds / config.steps
    times["classifier prediction (conditional accuracy)"] = timed(predict, model, images, config.image_size)[0]
    return times


def privacy_and_leakage_times(n: int) -> dict[str, float]:
    """`privacy` (n training images of n/4 prompts, n generated, n/4 held-out) and `check-splits`
    (train n vs test n/4) end to end, PNG reading included, with pixels as the feature space (the
    extractors' own cost is the rate table's)."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from medart_core.metrics.features import pixel_features
    from medart_core.metrics.leakage import check_leakage
    from medart_core.metrics.privacy import privacy_report
    from medart_core.metrics.sets import load_set

    def write(folder: Path, count: int, seed: int) -> Path:
        import json

        folder.mkdir(parents=True)
        rows = []
        for i, image in enumerate(noise_images(count, seed=seed)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
            rows.append({"file_name": f"{i}.png", "text": f"prompt {i % max(1, n // 4)}", "label": str(i % 4)})
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write(root / "data" / "train", n, 1)
        write(root / "data" / "test", n // 4, 2)
        write(root / "fake", n, 3)
        train, test = load_set("training", root / "data", ("train",)), load_set("held-out", root / "data", ("test",))
        fake = load_set("synthetic", root / "fake", ())
        return {
            f"privacy ({n} generated, n/4 prompts, mirrors, pixels as features)": timed(
                privacy_report, train, fake, test, pixel_features(), progress=False)[0],
            "check-splits (train n vs test n/4, exact + near + mirrored)": timed(
                check_leakage, [train, test], progress=False)[0],
        }


def main() -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images for the EfficientNet rate and fewer "
                                                             "bootstrap replicates (default: off)")
    parser.add_argument("--sizes", default="500,2000", help="set sizes to time (default: 500,2000)")
    args = parser.parse_args()
    import torch

    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\nfeature extraction (images/s):")
    rates = extraction_rates(args.quick)
    for name, rate in rates.items():
        print(f"  {name:<40} {rate:9.1f}   ({sizes[-1]} images: {sizes[-1] / rate:7.1f} s)")
    metric_times(64, quick=True)  # warm-up: imports and first-call allocations are not the metric's cost
    results = {n: metric_times(n, args.quick) for n in sizes}
    print("\nmetric time (s):")
    header = "  " + f"{'metric':<62}" + "".join(f"{'n=' + str(n):>10}" for n in sizes) + f"{'growth':>9}"
    print(header)
    for name in results[sizes[0]]:
        values = [results[n][name] for n in sizes]
        growth = values[-1] / values[0] if values[0] > 0 else float("nan")
        print("  " + f"{name:<62}" + "".join(f"{v:10.3f}" for v in values) + f"{growth:8.1f}x")
    print(f"\n(n grows {sizes[-1] / sizes[0]:.0f}x: linear costs grow ~{sizes[-1] / sizes[0]:.0f}x, "
          f"pairwise (KID kernels at the full subset size, nearest-neighbour search) up to ~{(sizes[-1] / sizes[0]) ** 2:.0f}x)")


if __name__ == "__main__":
    main()
