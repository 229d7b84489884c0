"""The small CNN trained on real images, used three ways:

  - domain features (the paper's KFD/HFD idea): Frechet distance / KID in the penultimate layer of
    a classifier of the real classes, which works offline and sees what matters in medical images;
  - conditional accuracy: does a generated image look like the class its prompt asked for?
  - downstream classification: train on real, synthetic, or both; test on held-out real images.

The domain classifier is saved as a folder (config.json + model.safetensors) and reused, because
features of a re-trained network are not comparable with earlier numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medart_core.errors import MedArtError
from medart_core.metrics.sets import ImageSet, load_resized, resize_uint8

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE = "medart-small-cnn"


@dataclass
class ClassifierConfig:
    """How the small CNN is built and trained; every setting trains for the same number of steps."""

    image_size: int = 64  # pixels; images are resized to image_size x image_size
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels of the conv blocks; the last is the feature size
    steps: int = 500  # optimiser steps (class-balanced batches drawn with replacement)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def check(self) -> None:
        if self.image_size < 16 or self.steps < 1 or self.batch_size < 1 or not self.widths:
            raise MedArtError(f"invalid classifier settings {asdict(self)}: image_size >= 16, steps >= 1, "
                              "batch_size >= 1 and at least one width are needed")


def build_cnn(num_classes: int, widths: tuple[int, ...]):
    """conv3x3-BN-ReLU-maxpool blocks, global average pool (the features), dropout + linear head."""
    import torch.nn as nn

    blocks, channels = [], 3
    for width in widths:
        blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = width
    backbone = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Dropout(0.2), nn.Linear(channels, num_classes))
    return nn.Sequential(OrderedDict(backbone=backbone, head=head))


def _normalise(images, size: int):
    return resize_uint8(images, size) / 127.5 - 1.0


def _augment(batch, generator):
    """Random flips, shifts of up to 1/8 of the side and, for half the images, a Gaussian blur
    (sigma 0.5-1.5 px at 64 px): cheap and label-preserving for the modalities here (fundus,
    histology, slices). The blur keeps the classifier reading anatomy and stain rather than
    fine texture alone; without it, every slightly soft axial slice was called 'coronal'."""
    import torch
    from torchvision.transforms.v2.functional import gaussian_blur

    n = batch.shape[0]
    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip_h[:, None, None, None], batch.flip(-1), batch)
    batch = torch.where(flip_v[:, None, None, None], batch.flip(-2), batch)
    pad = max(1, batch.shape[-1] // 8)
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    batch = padded[..., dy:dy + batch.shape[-2], dx:dx + batch.shape[-1]]
    sigma = (0.5 + torch.rand((), generator=generator).item()) * batch.shape[-1] / 64
    blur = torch.rand(n, generator=generator) < 0.5
    blurred = gaussian_blur(batch, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)
    return torch.where(blur[:, None, None, None], blurred, batch)


def train_classifier(images, targets, num_classes: int, config: ClassifierConfig, progress: bool = True,
                     desc: str = "training classifier"):
    """A fresh CNN trained on uint8 images (N x 3 x S x S, S = config.image_size) and int targets."""
    import torch
    from tqdm.auto import tqdm

    config.check()
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if len(targets) == 0:
        raise MedArtError("no images to train the classifier on")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_cnn(num_classes, tuple(config.widths))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=config.steps)
    counts = torch.bincount(targets, minlength=num_classes).clamp_min(1).float()
    weights = 1.0 / counts[targets]  # class-balanced batches: small classes are not drowned out
    model.train()
    for _ in tqdm(range(config.steps), desc=desc, unit="step", disable=not progress, leave=False):
        index = torch.multinomial(weights, config.batch_size, replacement=True, generator=generator)
        batch = _augment(_normalise(images[index], config.image_size), generator)
        loss = torch.nn.functional.cross_entropy(model(batch), targets[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


def predict(model, images, image_size: int, batch_size: int = 256) -> np.ndarray:
    """Predicted class indices of uint8 images."""
    import torch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            outputs.append(model(_normalise(images[start:start + batch_size], image_size)).argmax(1))
    return torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=int)


def scores(predicted, target, num_classes: int, classes: list[str]) -> dict:
    """Accuracy, macro-F1 (torchmetrics, over the classes present in the target) and per-class recall."""
    import torch
    from torchmetrics.functional.classification import multiclass_f1_score

    predicted, target = np.asarray(predicted), np.asarray(target)
    present = sorted(set(target.tolist()))
    per_class_f1 = multiclass_f1_score(torch.as_tensor(predicted), torch.as_tensor(target),
                                       num_classes=num_classes, average="none").numpy()
    return {
        "n": int(len(target)),
        "accuracy": float((predicted == target).mean()) if len(target) else float("nan"),
        "macro_f1": float(np.mean(per_class_f1[present])) if present else float("nan"),
        "per_class_accuracy": {classes[c]: float((predicted[target == c] == c).mean()) for c in present},
    }


def fingerprint(image_set: ImageSet) -> str:
    """Identifies a training set by its file names and labels (not its pixels: cheap to check)."""
    lines = sorted(f"{r.label}\t{r.file_name}" for r in image_set.records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass
class DomainClassifier:
    """A trained CNN and what it was trained on; feature and logit extractors for features.extract."""

    model: object
    classes: list[str]
    config: ClassifierConfig
    folder: Path
    info: dict = field(default_factory=dict)

    def features_module(self):
        return _Wrapped(self.model.backbone, self.config.image_size, int(self.config.widths[-1]),
                        f"domain classifier {self.folder} (penultimate layer, {self.config.widths[-1]}-d)")

    def logits_module(self):
        return _Wrapped(self.model, self.config.image_size, len(self.classes), "domain classifier logits")

    def save(self) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(self.folder / WEIGHTS_FILE))
        config = {"architecture": ARCHITECTURE, "classes": self.classes, "config": asdict(self.config), **self.info}
        (self.folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _Wrapped(network, image_size, num_features, description):
    """A uint8-in, float-out module around `network` (the contract of features.extract and torchmetrics)."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network.eval()
            self.num_features = num_features
            self.description = description

        @torch.no_grad()
        def forward(self, images):
            return self.network(_normalise(images, image_size))

    return Wrapped().eval()


def load_domain_classifier(folder: str | Path) -> DomainClassifier:
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
        config = ClassifierConfig(**{**saved["config"], "widths": tuple(saved["config"]["widths"])})
        classes = list(saved["classes"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise MedArtError(f"{folder} is not a Med-Art domain classifier folder ({CONFIG_FILE}: {err}); "
                          "give an empty or new folder to train one") from err
    if saved.get("architecture") != ARCHITECTURE:
        raise MedArtError(f"{folder}/{CONFIG_FILE}: architecture {saved.get('architecture')!r}, expected {ARCHITECTURE!r}")
    model = build_cnn(len(classes), config.widths)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except (OSError, RuntimeError) as err:
        raise MedArtError(f"cannot load {folder / WEIGHTS_FILE}: {err}") from err
    info = {k: v for k, v in saved.items() if k not in ("architecture", "classes", "config")}
    return DomainClassifier(model.eval(), classes, config, folder, info)


def class_indices(image_set: ImageSet, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[label] for label in image_set.labels])


def load_or_train_domain_classifier(folder: str | Path, train_set: ImageSet | None, config: ClassifierConfig,
                                    progress: bool = True) -> DomainClassifier:
    """The classifier saved in `folder`, else one trained on `train_set` and saved there.

    A reused classifier is checked against the current training set's classes; a different
    training set only warns, since comparability across runs is the reason to reuse it.
    """
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        classifier = load_domain_classifier(folder)
        if train_set is not None:
            if fingerprint(train_set) != classifier.info.get("train_fingerprint"):
                logger.warning("domain classifier %s was trained on another training set; its numbers stay "
                               "comparable with runs that used it", folder)
        logger.info("reusing domain classifier %s (classes %s)", folder, classifier.classes)
        return classifier
    if train_set is None:
        raise MedArtError(f"no domain classifier in {folder} and no training images to train one: "
                          "give --train DIR (or a --real DIR with a train/ split)")
    if not train_set.has_labels or len(train_set.class_counts()) < 2:
        raise MedArtError(f"the training set {train_set.root} needs a label for every image and at least 2 classes "
                          "to train the domain classifier (metadata.jsonl `label` or class sub-folders)")
    classes = list(train_set.class_counts())
    images = load_resized(train_set, config.image_size, progress=progress)
    targets = class_indices(train_set, classes)
    model = train_classifier(images, targets, len(classes), config, progress=progress,
                             desc="training domain classifier")
    train_accuracy = float((predict(model, images, config.image_size) == targets).mean())
    info = {"train_root": str(train_set.root), "train_split": train_set.split, "train_n": len(train_set),
            "train_fingerprint": fingerprint(train_set), "train_accuracy": train_accuracy,
            "created_by": "python -m medart_core evaluate"}
    classifier = DomainClassifier(model, classes, config, folder, info)
    classifier.save()
    logger.info("trained domain classifier on %d images (train accuracy %.3f), saved to %s",
                len(train_set), train_accuracy, folder)
    return classifier


def downstream_classification(train_set: ImageSet, synthetic_set: ImageSet, test_set: ImageSet,
                              config: ClassifierConfig, seeds: list[int], progress: bool = True) -> dict:
    """Train on real / synthetic / real+synthetic training images and test on held-out real
    images, for each seed; accuracy and macro-F1 per setting and seed, and their mean and std."""
    classes = list(train_set.class_counts())
    known = set(classes)
    dropped = sorted({l for l in synthetic_set.labels if l not in known}, key=str)
    synth_keep = [i for i, l in enumerate(synthetic_set.labels) if l in known]
    test_keep = [i for i, l in enumerate(test_set.labels) if l in known]
    if not test_keep:
        raise MedArtError("no held-out real image has a class of the training set: nothing to test on")
    synth = synthetic_set.subset(synth_keep)
    test = test_set.subset(test_keep)
    size = config.image_size
    real_images, synth_images = load_resized(train_set, size, progress), load_resized(synth, size, progress)
    test_images = load_resized(test, size, progress)
    real_targets, synth_targets = class_indices(train_set, classes), class_indices(synth, classes)
    test_targets = class_indices(test, classes)

    import torch

    settings = {
        "real": (real_images, real_targets),
        "synthetic": (synth_images, synth_targets),
        "real+synthetic": (torch.cat([real_images, synth_images]), np.concatenate([real_targets, synth_targets])),
    }
    results = {}
    for name, (images, targets) in settings.items():
        runs = []
        for seed in seeds:
            if len(targets) == 0:
                break
            model = train_classifier(images, targets, len(classes), ClassifierConfig(**{**asdict(config), "seed": seed}),
                                     progress=progress, desc=f"classifier on {name} (seed {seed})")
            run = scores(predict(model, test_images, size), test_targets, len(classes), classes)
            runs.append({"seed": seed, "n_train": int(len(targets)), **run})
        if not runs:
            results[name] = {"skipped": "no training images with a known class"}
            continue
        acc, f1 = [r["accuracy"] for r in runs], [r["macro_f1"] for r in runs]
        results[name] = {"runs": runs, "accuracy_mean": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
                         "macro_f1_mean": float(np.mean(f1)), "macro_f1_std": float(np.std(f1))}
    return {"classes": classes, "n_test": len(test), "config": asdict(config), "seeds": list(seeds),
            "dropped_synthetic_labels": dropped, "settings": results}


def conditional_accuracy(predicted: np.ndarray, fake_labels: list[str | None], classes: list[str]) -> dict:
    """How often the real-trained classifier recognises the class a generated image was asked for,
    per class, with the confusion counts (asked -> predicted)."""
    per_class, confusion = {}, {}
    known = [(p, l) for p, l in zip(predicted, fake_labels) if l in classes]
    for label in sorted({l for _, l in known}):
        picks = [classes[p] for p, l in known if l == label]
        per_class[label] = {"n": len(picks), "accuracy": float(np.mean([p == label for p in picks]))}
        confusion[label] = {c: picks.count(c) for c in classes if picks.count(c)}
    unknown = sorted({str(l) for l in fake_labels if l not in classes})
    overall = float(np.mean([classes[p] == l for p, l in known])) if known else math.nan
    return {"accuracy": overall, "n": len(known), "per_class": per_class, "confusion": confusion,
            "labels_unknown_to_classifier": unknown}
