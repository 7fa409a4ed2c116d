"""The vision track's data layer: DomainBed's on-disk layout, its per-environment split, and the rotated-digits
domains built offline from scikit-learn's digits as DomainBed builds RotatedMNIST."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from emoe.domainbed import read_layout, rotated_digits, seed_hash, split_environment

PACS = {"domains": ["sketch", "photo", "art_painting", "cartoon"],
        "classes": ["person", "dog", "elephant", "giraffe", "guitar", "horse", "house"]}


def pacs_tree(root, per_class=3):
    """A few tiny JPEGs per class and domain, in DomainBed's layout (written here, in shuffled order)."""
    for domain in PACS["domains"]:
        for c in PACS["classes"]:
            folder = root / "PACS" / domain / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"pic_{i}.jpg")
    (root / "PACS" / "photo" / "dog" / "notes.txt").write_text("not an image")
    return root


def test_the_layout_reads_domains_and_classes_in_domainbeds_order(tmp_path):
    ds = read_layout(pacs_tree(tmp_path), "PACS")
    assert ds.domains == ("art_painting", "cartoon", "photo", "sketch")  # sorted, as DomainBed lists environments
    assert ds.classes == ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")  # ImageFolder's order
    assert ds.sizes() == {d: 21 for d in ds.domains}  # 7 classes x 3 images; the .txt file is no image
    labels = [c for _, c in ds.images["photo"]]
    assert labels == sorted(labels) and labels.count(ds.classes.index("person")) == 3
    assert all(path.parent.name == ds.classes[c] for path, c in ds.images["sketch"])


def test_the_layout_refuses_what_domainbed_cannot_read(tmp_path):
    pacs_tree(tmp_path)
    with pytest.raises(ValueError, match="no dataset 'VLCS' under .*; it holds: PACS"):
        read_layout(tmp_path, "VLCS")
    (tmp_path / "PACS" / "sketch" / "car").mkdir()
    with pytest.raises(ValueError, match="domain 'sketch' has classes .*'car'.*every domain needs the same classes"):
        read_layout(tmp_path, "PACS")


def test_the_split_is_domainbeds_split_dataset():
    """Written out as DomainBed's misc.split_dataset: keys shuffled by RandomState(seed), the first
    int(n * holdout_fraction) held out."""
    for n, seed in ((21, 0), (100, seed_hash(0, 1)), (7, 3)):
        keys = list(range(n))
        np.random.RandomState(seed).shuffle(keys)
        inner, outer = split_environment(n, 0.2, seed)
        assert outer.tolist() == keys[:int(n * 0.2)] and inner.tolist() == keys[int(n * 0.2):]
        assert sorted(inner.tolist() + outer.tolist()) == list(range(n))
    assert seed_hash(0, 1) == int(hashlib.md5(str((0, 1)).encode()).hexdigest(), 16) % 2 ** 31


def test_rotated_digits_are_domainbeds_rotated_mnist_on_the_bundled_digits(tmp_path):
    from sklearn.datasets import load_digits

    root = rotated_digits(tmp_path)
    ds = read_layout(tmp_path, root.name)
    assert ds.domains == ("00", "15", "30", "45", "60", "75")
    assert ds.classes == tuple(str(d) for d in range(10))
    assert sum(ds.sizes().values()) == 1797 and max(ds.sizes().values()) - min(ds.sizes().values()) <= 1
    digits = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    first = digits.images[order][1]  # dealt to the second angle (15 degrees), its first image
    label = int(digits.target[order][1])
    expected = Image.fromarray((first * 255 / 16).astype(np.uint8), mode="L").resize((32, 32), Image.BILINEAR) \
        .rotate(15, resample=Image.BILINEAR)
    saved = Image.open(root / "15" / str(label) / "0.png")
    np.testing.assert_array_equal(np.asarray(saved), np.asarray(expected))
    upright = np.asarray(Image.fromarray((first * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR))
    assert np.abs(np.asarray(saved).astype(int) - upright).sum() > 0  # rotated, not the upright digit
