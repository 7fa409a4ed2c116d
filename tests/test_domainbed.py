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


def records_frame():
    """Two trial seeds x two test environments x two hyperparameter settings x three steps over three
    environments, accuracies made up so that the rules disagree."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for test in (0, 2):
            for hp in (0, 1):
                for step in (0, 300, 600):
                    row = {"trial_seed": seed, "test_env": test, "hparams_seed": hp, "step": step}
                    for i in range(3):
                        row[f"env{i}_in_acc"] = float(rng.integers(50, 100)) / 100
                        row[f"env{i}_out_acc"] = float(rng.integers(50, 100)) / 100
                    rows.append(row)
    return pd.DataFrame(rows)


def test_training_domain_validation_is_domainbeds_by_hand():
    """Recomputed with loops: per run the step with the best mean out-accuracy of the training environments (the
    earliest among equals), its test environment's in-accuracy; per (seed, test env) the run with the best such
    validation accuracy."""
    from emoe.domainbed import select_runs

    df = records_frame()
    got = select_runs(df, "training_domain").set_index(["trial_seed", "test_env"])
    for seed in (0, 1):
        for test in (0, 2):
            best = None
            for hp in (0, 1):
                run = df[(df.trial_seed == seed) & (df.test_env == test) & (df.hparams_seed == hp)]
                train = [i for i in range(3) if i != test]
                chosen = None
                for _, r in run.sort_values("step").iterrows():
                    val = sum(r[f"env{i}_out_acc"] for i in train) / len(train)
                    if chosen is None or val > chosen[0]:
                        chosen = (val, r[f"env{test}_in_acc"], r["step"], hp)
                if best is None or chosen[0] > best[0]:
                    best = chosen
            row = got.loc[(seed, test)]
            assert row["val_acc"] == pytest.approx(best[0]) and row["test_acc"] == best[1]
            assert row["step"] == best[2] and row["hparams_seed"] == best[3]


def test_the_oracle_reads_the_last_step_and_the_table_is_collect_results():
    from emoe.domainbed import domainbed_table, select_runs

    df = records_frame()
    oracle = select_runs(df, "oracle")
    assert set(oracle["step"]) == {600}
    last = df[df.step == 600]
    for r in oracle.itertuples(index=False):
        test = int(r.test_env)
        runs = last[(last.trial_seed == r.trial_seed) & (last.test_env == test)]
        top = runs.loc[runs[f"env{test}_out_acc"].idxmax()]
        assert r.test_acc == top[f"env{test}_in_acc"]
    table = domainbed_table(oracle).set_index("test_env")
    acc = oracle[oracle.test_env == 2]["test_acc"].to_numpy() * 100
    assert table.loc[2, "mean"] == pytest.approx(acc.mean())
    assert table.loc[2, "err"] == pytest.approx(np.std(acc / np.sqrt(2)))  # DomainBed's error, population SD
    assert table.loc["Avg", "mean"] == pytest.approx((table.loc[0, "mean"] + table.loc[2, "mean"]) / 2)
    with pytest.raises(ValueError, match="valid choices: training_domain, oracle"):
        select_runs(df, "loo")
