"""Image tasks under DomainBed's protocol: the paper's vision track (ViT-S / ViT-B on PACS, VLCS, OfficeHome,
TerraIncognita), and an offline rotated-digits stand-in for RotatedMNIST.

A vision task is one (dataset, held-out domain) pair, named ``<dataset>:<domain>`` (``pacs:photo``): leave-one-domain-out
makes the test domain a factor of the sweep, and the analysis's blocks are these pairs, as DomainBed tables them.
``--tasks pacs`` crosses every held-out domain of PACS; ``--tasks domainbed`` the four datasets.

What a trial of ``pacs:photo`` trains and reports (DomainBed's ``train.py`` and ``model_selection.py``):
- every domain is split into in / out parts by ``split_dataset(env, int(0.2 * len(env)), seed_hash(trial_seed, i))``
  (``emoe.domainbed.split_environment``; the trial seed is the trial's ``seed``, as DomainBed's ``trial_seed``);
- the model trains on the training domains' in splits, each step drawing ``batch_size // training domains`` images
  from every training domain with replacement (DomainBed's batches of 32 per domain: ``batch_size`` 96 over three);
- ``id_score`` is the training-domain validation accuracy: the mean over the training domains of each out split's
  accuracy (``IIDAccuracySelectionMethod``), so that ``keep_best`` picks DomainBed's checkpoint and the learning rate
  is chosen as DomainBed chooses hyperparameters;
- ``ood_score.<domain>`` is the held-out domain's in-split accuracy (DomainBed's test accuracy), and
  ``oracle_score`` its out-split accuracy (what ``OracleSelectionMethod`` selects on);
- a pair run ``pacs:photo+sketch`` (``--tasks pacs:pairs``) holds out both domains, as DomainBed's runs with two test
  environments, and reports ``loo_score``, the second domain's in-split accuracy: what
  ``LeaveOneOutSelectionMethod`` averages (``emoe.analysis.selection.loo_view``).

Images are read as DomainBed's ``ImageFolder`` reads them (RGB) and transformed as its ``datasets.py`` does: for
evaluation Resize((s, s)), ToTensor, ImageNet normalisation; for training (with ``data_augmentation``, on the
real-photo datasets only) RandomResizedCrop(s, scale=(0.7, 1.0)), RandomHorizontalFlip, ColorJitter(0.3, 0.3, 0.3,
0.3), RandomGrayscale(0.1), then the same. ``s`` is the model's ``image_size`` (224 for DeiT).

NOTE: DomainBed's step at 0 (an evaluation before training) is not made; the transforms are written here on PIL, with torchvision's parameter semantics, because torchvision's wheels
on the CPU index load only against a CUDA build of torch; DomainBed also evaluates the training domains' out splits
through the augmenting transform (a quirk of its ``datasets.py``): emoe evaluates them without augmentation, so that
checkpoint selection is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoe.cache import build_once, cache_dir
from emoe.domainbed import HOLDOUT_FRACTION, ROTATIONS, read_layout, rotated_digits, seed_hash, split_environment

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A DomainBed dataset: its folder under the data directory, its domains (sorted, as DomainBed lists
    environments), its classes, whether its training transform augments, and the official EMoE / GMoE learning rate and
    weight decay for it (``hparams_registry.py``; None where the official code sets none)."""

    folder: str
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    augment: bool = True
    learning_rate: float | None = None
    weight_decay: float | None = None


_OFFICE_HOME_CLASSES = 65
DATASETS: dict[str, ImageDataset] = {
    # scikit-learn's bundled digits (1,797 8x8 images, offline) rotated as DomainBed's RotatedMNIST: domain "15" is
    # rotated by 15 degrees. Written to the cache on first use (emoe.domainbed.rotated_digits); no augmentation, as
    # DomainBed's MNIST datasets have none.
    "rotated_digits": ImageDataset("RotatedDigits", tuple(f"{a:02d}" for a in ROTATIONS),
                                   tuple(str(i) for i in range(10)), augment=False),
    "pacs": ImageDataset("PACS", ("art_painting", "cartoon", "photo", "sketch"),
                         ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"), True, 3e-5, 1e-6),
    "vlcs": ImageDataset("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
                         ("bird", "car", "chair", "dog", "person"), True, 3e-5, 1e-6),
    "office_home": ImageDataset("office_home", ("Art", "Clipart", "Product", "Real World"),
                                tuple(f"class{i}" for i in range(_OFFICE_HOME_CLASSES)), True, 1e-5, 1e-6),
    "terra_incognita": ImageDataset("terra_incognita", ("location_100", "location_38", "location_43", "location_46"),
                                    ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
                                     "raccoon", "squirrel"), True, 5e-5, 1e-4),
}
DOMAINBED = ("pacs", "vlcs", "office_home", "terra_incognita")  # --tasks domainbed: the paper's four
SEPARATOR, PAIR = ":", "+"


def task_names(dataset: str) -> list[str]:
    """Every leave-one-domain-out task of a dataset, in domain order."""
    return [f"{dataset}{SEPARATOR}{d}" for d in DATASETS[dataset].domains]


def pair_names(dataset: str) -> list[str]:
    """The runs DomainBed's leave-one-domain-out selection needs: ``dataset:test+validation``, trained without both
    domains (its ``test_envs = [test, validation]``), for every ordered pair."""
    domains = DATASETS[dataset].domains
    return [f"{dataset}{SEPARATOR}{t}{PAIR}{v}" for t in domains for v in domains if v != t]


def expand(name: str) -> list[str]:
    """``--tasks`` entries for images: ``domainbed`` (the paper's four datasets), a dataset (each held-out domain in
    turn), ``dataset:pairs`` (the leave-one-domain-out selection's runs, ``pair_names``), or one task; anything else
    unchanged."""
    if name == "domainbed":
        return [t for d in DOMAINBED for t in task_names(d)]
    if name in DATASETS:
        return task_names(name)
    dataset, _, rest = name.partition(SEPARATOR)
    if rest == "pairs" and dataset in DATASETS:
        return pair_names(dataset)
    return [name]


def split_name(task: str) -> tuple[str, str]:
    """``(dataset, held-out domain)`` of a task (for a pair run, ``test+validation``)."""
    dataset, _, domain = task.partition(SEPARATOR)
    return dataset, domain


def held_out(task: str) -> tuple[str, str, str | None]:
    """``(dataset, test domain, validation domain or None)``."""
    dataset, domain = split_name(task)
    test, _, validation = domain.partition(PAIR)
    return dataset, test, validation or None


def is_pair(task: str) -> bool:
    """A leave-one-domain-out selection run (two held-out domains): support for the selection, never a block."""
    return PAIR in split_name(task)[1]


def demo_root() -> Path:
    """The rotated-digits domains, written once to the cache (about 1,800 small PNGs; ``build_once``: concurrent
    trials never read a half-written set)."""
    root = cache_dir("domainbed")
    build_once(root / DATASETS["rotated_digits"].folder, lambda folder: rotated_digits(folder.parent, name=folder.name))
    return root


def data_root(dataset: str, data_dir: str | Path | None) -> Path:
    """Where a dataset's folder lies: ``data_dir`` (DomainBed's ``--data_dir``); the rotated digits need none
    (``None`` or ``demo``: written to the cache)."""
    from emoe.data import DATA_ALIASES

    if data_dir is not None and Path(data_dir).resolve() == DATA_ALIASES["demo"].resolve():
        data_dir = "demo"  # the packaged slice (text only): the rotated digits come from the cache
    if dataset == "rotated_digits" and data_dir in (None, "demo"):
        return demo_root()
    if data_dir in (None, "demo"):
        spec = DATASETS[dataset]
        raise ValueError(f"task {dataset}: image datasets are read from disk in DomainBed's layout: pass --data-dir DIR "
                         f"with DIR/{spec.folder}/<domain>/<class>/*.jpg (DomainBed's download script writes it; "
                         f"domains {', '.join(spec.domains)}); offline, use rotated_digits")
    return Path(data_dir)


class ImageSet(torch.utils.data.Dataset):
    """(path, label) pairs read as RGB and transformed; ``domains`` holds each item's domain index (the
    training-domain validation score averages per domain)."""

    def __init__(self, items, size: int, augment: bool, domains=None):
        self.items, self.size, self.augment = list(items), size, augment
        self.domains = np.zeros(len(self.items), np.int64) if domains is None else np.asarray(domains, np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as im:
            image = im.convert("RGB")
        image = train_transform(image, self.size) if self.augment else image.resize((self.size, self.size),
                                                                                   Image.BILINEAR)
        return {"pixel_values": to_tensor(image), "labels": int(label)}

    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.items], dtype=np.int64)

    def select(self, indices) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet([self.items[i] for i in indices], self.size, self.augment, self.domains[indices])

    def evaluation(self) -> "ImageSet":
        return ImageSet(self.items, self.size, False, self.domains)


def to_tensor(image) -> torch.Tensor:
    """ToTensor then Normalize(ImageNet mean, std): ``[3, H, W]`` float."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def _resized_crop_box(width: int, height: int, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: ten tries at a random area and aspect ratio, else a centre
    crop at the ratio clamped to ``ratio``. Returns (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, width - w), random.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _hue(image, shift: float):
    """torchvision's PIL ``adjust_hue``: the H channel shifted by ``shift`` turns (uint8, wrapping)."""
    from PIL import Image

    h, s, v = image.convert("HSV").split()
    h = Image.fromarray((np.asarray(h, dtype=np.uint8).astype(np.int16) + int(shift * 255)).astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def train_transform(image, size: int):
    """DomainBed's training transform (see the module docstring), drawing from Python's ``random`` (seeded by
    the trial; its state is in every checkpoint)."""
    from PIL import Image, ImageEnhance

    left, top, w, h = _resized_crop_box(*image.size)
    image = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    if random.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(0.7, 1.3)),
           lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(0.7, 1.3)),
           lambda im: ImageEnhance.Color(im).enhance(random.uniform(0.7, 1.3)),
           lambda im: _hue(im, random.uniform(-0.3, 0.3))]
    for i in random.sample(range(4), 4):  # ColorJitter applies its four adjustments in a random order
        image = ops[i](image)
    if random.random() < 0.1:
        image = image.convert("L").convert("RGB")
    return image


class DomainBatches(torch.utils.data.Sampler):
    """DomainBed's training batches: every step draws ``per_domain`` examples from each training domain, with
    replacement (its ``InfiniteDataLoader``: a ``RandomSampler(replacement=True)`` per environment, the environments'
    batches zipped into one step). An epoch is ``ceil(len / step size)`` steps, so that epochs still count examples;
    the draws come from ``generator`` (the loader's: its state is in every checkpoint)."""

    def __init__(self, domains: np.ndarray, per_domain: int, generator: torch.Generator):
        self.groups = [np.flatnonzero(domains == d) for d in np.unique(domains)]
        self.per_domain, self.generator = per_domain, generator
        self.steps = math.ceil(len(domains) / (per_domain * len(self.groups)))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield [int(group[i]) for group in self.groups
                   for i in torch.randint(len(group), (self.per_domain,), generator=self.generator)]


def image_loader(ds: ImageSet, batch_size: int, shuffle: bool, seed: int, by_domain: bool = False):
    """Batches of ``batch_size`` in order (evaluation), shuffled, or (``by_domain``: training) DomainBed's:
    ``batch_size // domains`` from every domain at each step (``DomainBatches``)."""
    g = torch.Generator().manual_seed(seed)
    if by_domain:
        per_domain = max(1, batch_size // len(np.unique(ds.domains)))
        return torch.utils.data.DataLoader(ds, batch_sampler=DomainBatches(ds.domains, per_domain, g), generator=g)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)


def domain_accuracy(pred: np.ndarray, gold: np.ndarray, domains: np.ndarray) -> float:
    """DomainBed's training-domain validation accuracy: the mean over domains of each domain's accuracy."""
    return float(np.mean([np.mean(pred[domains == d] == gold[domains == d]) for d in np.unique(domains)]))


def load_image_task(task, data_dir, seed: int, size: int, max_train_samples: int | None = None,
                    max_eval_samples: int | None = None, augment: bool = True):
    """A ``TaskData`` for ``dataset:domain``: training domains' in splits (train), their out splits (validation,
    with each item's domain), the held-out domain's in split (``ood[domain]``) and out split (``oracle``); for a
    pair run ``dataset:test+validation``, the validation domain's in split too (``loo``), kept out of training.
    ``max_*_samples`` keep fixed random subsets (seed 0) of the training set and of each evaluation set."""
    from emoe.data import TaskData

    dataset, test_domain, validation_domain = held_out(task.name)
    spec = DATASETS[dataset]
    layout = read_layout(data_root(dataset, data_dir), spec.folder)
    if layout.domains != spec.domains:
        raise ValueError(f"{layout.root}: domains {list(layout.domains)}, but {dataset} has {list(spec.domains)}")
    if dataset != "office_home" and layout.classes != spec.classes:
        raise ValueError(f"{layout.root}: classes {list(layout.classes)}, but {dataset} has {list(spec.classes)}")
    if len(layout.classes) != len(spec.classes):
        raise ValueError(f"{layout.root}: {len(layout.classes)} classes, but {dataset} has {len(spec.classes)}")
    train, train_domains, val, test, oracle, loo = [], [], [], [], [], []
    for i, domain in enumerate(spec.domains):
        items = layout.images[domain]
        if not items:
            raise ValueError(f"{layout.root / domain}: no image")
        inner, outer = split_environment(len(items), HOLDOUT_FRACTION, seed_hash(seed, i))
        if domain == test_domain:
            test, oracle = [items[j] for j in inner], [items[j] for j in outer]
        elif domain == validation_domain:  # a pair run's: its in split is the selection's validation
            loo = [items[j] for j in inner]
        else:
            train += [items[j] for j in inner]
            train_domains += [i] * len(inner)
            val += [(items[j], i) for j in outer]
    augment = augment and spec.augment

    def subset(ds: ImageSet, n):
        return ds.select(np.sort(np.random.default_rng(0).permutation(len(ds))[:n])) if n and n < len(ds) else ds

    validation = ImageSet([x for x, _ in val], size, False, [d for _, d in val])
    task = dataclasses.replace(task, label_names=layout.classes)
    return TaskData(task, subset(ImageSet(train, size, augment, train_domains), max_train_samples),
                    subset(validation, max_eval_samples), {test_domain: subset(ImageSet(test, size, False),
                                                                              max_eval_samples)},
                    {test_domain: len(test)}, oracle=subset(ImageSet(oracle, size, False), max_eval_samples),
                    loo=subset(ImageSet(loo, size, False), max_eval_samples) if validation_domain else None)
