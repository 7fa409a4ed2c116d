"""Clean model selection: a development split carved from the training set chooses the learning rate (and epoch);
the oracle rule (the official code's) chooses on the validation set it reports. Checked on frames where the two
choose differently, against direct pandas computations, and on a real trial's development split."""

import numpy as np
import pandas as pd
import pytest

from emoe.analysis import selection, stats


def two_rate_frame() -> pd.DataFrame:
    """One task, arms emoe and dense, rates 1e-4 and 3e-5, 3 seeds. For emoe, 1e-4 scores best on validation
    (id_score) but worst on the development split; 3e-5 the reverse: the rules disagree. For dense they agree."""
    rows = []
    for seed in range(3):
        for arm, lr, id_score, dev in [("emoe", 1e-4, 0.80, 0.70), ("emoe", 3e-5, 0.76, 0.75),
                                       ("dense", 1e-4, 0.78, 0.74), ("dense", 3e-5, 0.74, 0.72)]:
            rows.append({"task": "sst2", "arm": arm, "seed": seed, "learning_rate": lr, "outcome": "completed",
                         "id_score": id_score + 0.01 * seed, "dev_score": dev + 0.01 * seed,
                         "ood_score": id_score - 0.1, "ood_score.imdb": id_score - 0.1})
    return pd.DataFrame(rows)


def test_oracle_and_clean_choose_different_rates_and_the_gap_is_their_difference():
    df = two_rate_frame()
    means = df.groupby(["arm", "learning_rate"])[["id_score", "dev_score"]].mean()  # computed directly
    oracle_lr = means["id_score"].groupby("arm").idxmax().map(lambda i: i[1])
    clean_lr = means["dev_score"].groupby("arm").idxmax().map(lambda i: i[1])
    assert oracle_lr["emoe"] == 1e-4 and clean_lr["emoe"] == 3e-5  # the frame makes them disagree
    rules = selection.compare_rules(df).set_index("arm")
    for arm in ("emoe", "dense"):
        assert rules.loc[arm, "oracle_lr"] == oracle_lr[arm] and rules.loc[arm, "clean_lr"] == clean_lr[arm]
        gap = means.loc[(arm, oracle_lr[arm]), "id_score"] - means.loc[(arm, clean_lr[arm]), "id_score"]
        assert rules.loc[arm, "gap.id_score"] == pytest.approx(gap)
    assert rules.loc["emoe", "gap.id_score"] == pytest.approx(0.04) and rules.loc["dense", "gap.id_score"] == 0
    clean = stats.analyse(df, rule="clean", bayes_samples=0)
    oracle = stats.analyse(df, rule="oracle", bayes_samples=0)
    assert set(clean.chosen.loc[clean.chosen["arm"] == "emoe", "learning_rate"]) == {3e-5}
    assert set(oracle.chosen.loc[oracle.chosen["arm"] == "emoe", "learning_rate"]) == {1e-4}
    assert clean.rule == "clean" and "dev_score" in clean.method[1] and "test set" in clean.method[1]
    assert clean.selection.empty and not oracle.rules.empty  # no inflation to undo under the clean rule


def test_the_clean_rule_reads_each_trials_scores_at_its_best_development_epoch():
    df = two_rate_frame()
    df["clean.id_score"] = df["id_score"] - 0.05  # the epoch chosen on dev scored lower on validation
    df["clean.dev_score"] = df["dev_score"] + 0.01
    view = selection.clean_view(df)
    np.testing.assert_allclose(view["id_score"], df["id_score"] - 0.05)
    np.testing.assert_allclose(view["dev_score"], df["dev_score"] + 0.01)
    rules = selection.compare_rules(df).set_index("arm")
    assert rules.loc["emoe", "clean.id_score"] == pytest.approx(0.76 + 0.01 - 0.05)


def test_the_clean_rule_refuses_a_sweep_without_a_development_split():
    df = two_rate_frame().drop(columns="dev_score")
    with pytest.raises(ValueError, match="needs dev_score .* --dev-samples N"):
        stats.analyse(df, rule="clean", bayes_samples=0)
    assert selection.compare_rules(df).empty
    with pytest.raises(ValueError, match="valid choices: oracle, clean"):
        stats.analyse(df, rule="best")


def test_the_development_split_is_carved_from_training_the_same_rows_for_every_arm(tiny_data_dir):
    from emoe.data import load_task

    full = load_task("sst2", tiny_data_dir)
    a = load_task("sst2", tiny_data_dir, dev_samples=50, max_train_samples=100)
    b = load_task("sst2", tiny_data_dir, dev_samples=50)
    key = (lambda ds: set(zip(ds["sentence"], ds["label"])))
    assert len(a.dev) == 50 and len(a.train) == 100 and len(b.train) == len(full.train) - 50
    assert key(a.dev) == key(b.dev)  # fixed by dev_seed, whatever else is asked
    assert not key(a.dev) & key(b.train)  # never trained on
    assert key(a.dev) | key(b.train) == key(full.train)
    other = load_task("sst2", tiny_data_dir, dev_samples=50, dev_seed=1)
    assert key(other.dev) != key(a.dev)
    with pytest.raises(ValueError, match="dev_samples=400 leaves nothing to train on"):
        load_task("sst2", tiny_data_dir, dev_samples=400)


def test_a_trial_scores_its_development_split_and_the_clean_epoch(tiny_model_dir, tiny_data_dir):
    """Each evaluation scores the development split (dev_score); with keep_best the final report holds, beside the
    oracle's best-ID evaluation, every score of the first evaluation with the best dev_score (clean.*): checked
    against the same trial run without keep_best (deterministic: the same training), whose reports are each
    evaluation's own scores."""
    from emoe.train import train_and_evaluate

    cfg = {"model": tiny_model_dir, "data_dir": str(tiny_data_dir), "num_experts": 4, "top_k": 2, "batch_size": 16,
           "max_length": 48, "max_train_samples": 96, "eval_steps": 2, "learning_rate": 1e-3, "epochs": 1,
           "dev_samples": 48}
    each = []
    train_and_evaluate({**cfg, "keep_best": False}, each.append)
    assert all(0 <= r["dev_score"] <= 1 and r["dev_score"] == r["dev.accuracy"] for r in each)
    first_best = max(each, key=lambda r: (r["dev_score"], -r["step"]))  # the first among equals
    final = train_and_evaluate({**cfg, "keep_best": True})
    assert final["clean.best_step"] == first_best["step"]
    for metric in ("dev_score", "id_score", "ood_score", "ood_score.imdb"):
        assert final[f"clean.{metric}"] == pytest.approx(first_best[metric])
    oracle = max(each, key=lambda r: (r["id_score"], -r["step"]))
    assert final["id_score"] == pytest.approx(oracle["id_score"]) and final["best_step"] == oracle["step"]


def test_the_appendix_paragraph_states_the_sweeps_own_numbers():
    """Counted independently from the frame: runs, finished and failed, arms, tasks, seeds, rates; the selection
    rule; the family's size; the gap between the rules."""
    from emoe.analysis.paragraph import paragraph

    df = two_rate_frame()
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "seed": 3, "outcome": "failed", "id_score": np.nan}
    df["wall_time"] = 60.0
    df["trainable_params"] = 22.7e6
    a = stats.analyse(df, rule="clean", bayes_samples=0)
    text = paragraph(a)
    assert text.startswith(f"We ran {len(df)} fine-tuning runs ({len(df) - 1} finished, 1 failed)")
    assert "2 arm(s) (emoe and dense) on 1 task(s) (sst2), 4 seed(s) each (0, 1, 2 and 3)" in text
    assert "learning rate(s) 3e-05 and 0.0001" in text
    assert "development split carved from the training set" in text and "validation set is reported" in text
    assert "compares each arm with dense on ood_score" in text and "over the 1 comparison(s)" in text
    assert f"higher by {selection.compare_rules(df)['gap.id_score'].mean():+.4f}" in text
    assert f"{len(df) - 1:.1f} min of training and evaluation in total" in text  # 60 s per finished run
    oracle = paragraph(stats.analyse(df, bayes_samples=0))
    assert "the oracle rule" in oracle
