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


SELECTIONS = ("training_domain", "oracle")  # DomainBed's IIDAccuracySelectionMethod and OracleSelectionMethod


def select_runs(records, method: str = "training_domain"):
    """DomainBed's model selection (``model_selection.py``) over evaluation records: one row per (run, step) with
    ``trial_seed``, ``test_env`` (one held-out environment), ``hparams_seed``, ``step`` and ``env{i}_in_acc`` /
    ``env{i}_out_acc`` for every environment i.

    - ``training_domain`` (IIDAccuracySelectionMethod): per run, each step's validation accuracy is the mean of
      ``env{i}_out_acc`` over the training environments; the step with the best (the earliest among equals) gives
      the run's validation and test (``env{test}_in_acc``) accuracy.
    - ``oracle`` (OracleSelectionMethod): per run, the last step; validation ``env{test}_out_acc``, test
      ``env{test}_in_acc``.
    Then, per (trial_seed, test_env), the hyperparameter setting with the best validation accuracy (the first
    among equals). Returns a DataFrame ``trial_seed, test_env, hparams_seed, step, val_acc, test_acc``.
    DomainBed's leave-one-domain-out selection (runs with two test environments) is not built."""
    import pandas as pd

    if method not in SELECTIONS:
        raise ValueError(f"unknown DomainBed selection {method!r}; valid choices: {', '.join(SELECTIONS)}")
    envs = sorted(int(c[3:-len("_out_acc")]) for c in records.columns if c.startswith("env") and c.endswith("_out_acc"))
    rows = []
    for (seed, test, hp), run in records.groupby(["trial_seed", "test_env", "hparams_seed"], sort=True):
        run = run.sort_values("step", kind="stable")
        if method == "oracle":
            last = run.iloc[-1]
            val, best = float(last[f"env{test}_out_acc"]), last
        else:
            train = [f"env{i}_out_acc" for i in envs if i != test]
            vals = run[train].mean(axis=1).to_numpy()
            best = run.iloc[int(np.argmax(vals))]  # argmax: the first (earliest) of equal maxima
            val = float(vals.max())
        rows.append({"trial_seed": seed, "test_env": test, "hparams_seed": hp, "step": int(best["step"]),
                     "val_acc": val, "test_acc": float(best[f"env{test}_in_acc"])})
    runs = pd.DataFrame(rows)
    if runs.empty:
        return runs
    pick = runs.groupby(["trial_seed", "test_env"], sort=True)["val_acc"].idxmax()  # first among equals
    return runs.loc[pick.to_numpy()].reset_index(drop=True)


def domainbed_table(selected) -> "pd.DataFrame":
    """``collect_results.py``'s cells: per test environment, the mean test accuracy over trial seeds and its error
    ``np.std(acc / sqrt(n))`` (the population SD of the seed values over sqrt(n), as DomainBed prints it), in
    percent; and ``Avg``: the mean of the environments' means."""
    import pandas as pd

    rows = []
    for test, group in selected.groupby("test_env", sort=True):
        acc = group["test_acc"].to_numpy() * 100
        rows.append({"test_env": test, "mean": float(acc.mean()), "err": float(np.std(acc / np.sqrt(len(acc)))),
                     "seeds": len(acc)})
    table = pd.DataFrame(rows)
    if len(table):
        table.loc[len(table)] = {"test_env": "Avg", "mean": float(table["mean"].mean()), "err": float("nan"),
                                 "seeds": int(table["seeds"].min())}
    return table
