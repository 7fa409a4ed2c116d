"""Image domain-generalisation data in DomainBed's on-disk layout (``<data_dir>/<Dataset>/<domain>/<class>/*.jpg``,
as its download script writes PACS, VLCS, OfficeHome and TerraIncognita), and an offline stand-in for its
RotatedMNIST built from scikit-learn's bundled digits.

This is the data layer of the vision track (issue 26): reading a dataset's domains and classes, DomainBed's
per-environment in / out split (the out split is the training-domain validation set), and writing the rotated-digits
domains. The trial, the presets and the model selection are built on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff")
ROTATIONS = (0, 15, 30, 45, 60, 75)  # DomainBed's RotatedMNIST environments (degrees)
HOLDOUT_FRACTION = 0.2  # DomainBed's default share of each environment held out (its "out" split)


@dataclasses.dataclass(frozen=True)
class DomainDataset:
    """One dataset on disk: its domains (environments) and classes in DomainBed's order (sorted directory names,
    as ``torchvision.datasets.ImageFolder`` orders classes), and every image as (path, class index) per domain."""

    name: str
    root: Path
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    images: dict[str, tuple[tuple[Path, int], ...]]

    def sizes(self) -> dict[str, int]:
        return {d: len(self.images[d]) for d in self.domains}


def read_layout(data_dir: str | Path, dataset: str) -> DomainDataset:
    """The dataset ``dataset`` under ``data_dir`` in DomainBed's layout. ``ValueError`` (one line) when it is
    missing, has no domain, or a domain's classes differ from the others' (DomainBed requires the same classes in
    every environment)."""
    root = Path(data_dir) / dataset
    if not root.is_dir():
        held = sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir()) if Path(data_dir).is_dir() else []
        raise ValueError(f"no dataset {dataset!r} under {data_dir} (DomainBed's layout: <data_dir>/<Dataset>/<domain>/"
                         f"<class>/*.jpg); it holds: {', '.join(held) or 'nothing'}")
    domains = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not domains:
        raise ValueError(f"dataset {dataset!r} at {root} has no domain folder")
    classes = None
    images = {}
    for domain in domains:
        here = tuple(sorted(p.name for p in (root / domain).iterdir() if p.is_dir()))
        if classes is None:
            classes = here
        elif here != classes:
            raise ValueError(f"dataset {dataset!r}: domain {domain!r} has classes {list(here)}, the others "
                             f"{list(classes)}; every domain needs the same classes")
        images[domain] = tuple((path, c) for c, name in enumerate(here)
                               for path in sorted((root / domain / name).iterdir())
                               if path.suffix.lower() in IMAGE_SUFFIXES)
    return DomainDataset(dataset, root, domains, classes or (), images)


def seed_hash(*args) -> int:
    """DomainBed's ``misc.seed_hash``: an integer seed derived from its arguments (md5 of their ``str``)."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def split_environment(n: int, holdout_fraction: float = HOLDOUT_FRACTION, seed: int = 0) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """DomainBed's ``misc.split_dataset(env, int(len(env) * holdout_fraction), seed)``: the indices shuffled by
    ``np.random.RandomState(seed)``, the first ``int(n * holdout_fraction)`` the out split (training-domain
    validation, or the test domain's held-out part), the rest the in split. Returns ``(in_split, out_split)``."""
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    cut = int(n * holdout_fraction)
    return np.array(keys[cut:], dtype=np.int64), np.array(keys[:cut], dtype=np.int64)


def rotated_digits(out_dir: str | Path, angles=ROTATIONS, name: str = "RotatedDigits", size: int = 32) -> Path:
    """Write DomainBed's RotatedMNIST construction on scikit-learn's bundled digits (1,797 8x8 images, offline):
    the digits shuffled (seed 0), dealt to the angles in turn (``images[i::len(angles)]``, as DomainBed deals
    MNIST), each domain's images rotated by its angle and upsampled to ``size`` pixels, saved as PNG in DomainBed's
    layout ``<out_dir>/<name>/<angle>/<digit>/<i>.png``. Returns the dataset's root."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.images))
    images, labels = digits.images[order], digits.target[order]
    root = Path(out_dir) / name
    for i, angle in enumerate(angles):
        for j, (pixels, label) in enumerate(zip(images[i::len(angles)], labels[i::len(angles)])):
            folder = root / f"{angle:02d}" / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray((pixels * 255 / 16).astype(np.uint8), mode="L")
            image = image.resize((size, size), Image.BILINEAR).rotate(angle, resample=Image.BILINEAR)
            image.save(folder / f"{j}.png")
    return root
