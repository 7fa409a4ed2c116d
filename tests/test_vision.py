"""The vision track: image tasks under DomainBed's protocol (leave-one-domain-out tasks, the training-domain
validation score, the held-out domain's splits), a tiny ViT trial end to end, the official ViT presets against the
vision README's commands, and the analysis's blocks as (dataset, held-out domain) pairs."""

import numpy as np
import pytest
import torch
from conftest import exit_code, hub_cache
from PIL import Image
from test_domainbed import PACS, pacs_tree

from emoe import tracking, vision
from emoe.data import get_task
from emoe.domainbed import seed_hash, split_environment
from emoe.sweep.design import PRESETS
from emoe.sweep.plan import resolve_tasks

# The vision README (qiuzh20/EMoE Vision/README.md), its three ViT-S PACS commands (--algorithm GMOE), and
# hparams_registry.py / DomainBed's train.py defaults, written out.
VISION_README = {
    "dense": dict(method="dense"),  # {"vanilla_ViT": true, "vit_type": "small"}
    # {"vanilla_ViT": false, "num_experts": 6, "topk": 2, "num_inter": 1} (block 10 of 12), cosine router
    "gmoe": dict(method="gmoe", gate="learned", num_experts=6, top_k=2, expert_repeat=6, layers=(-2,)),
    # {"MoE_from_ffn": true, "router": "top", "one_score_gate": true, "num_experts": 24, "topk": 4, "num_inter": 2}
    "emoe": dict(method="emoe", gate="avg_keys", clustering="constrained", num_experts=24, top_k=4, layers=(-4, -2)),
}
DOMAINBED_TRAIN = dict(max_steps=5001, eval_steps=300, optimizer="adam", lr_schedule="constant", warmup_ratio=0.0,
                       batch_size=96, weight_decay=1e-6, keep_best=True, data_augmentation=True, capacity_factor=1.5,
                       gate_noise=1.0, expert_dropout=0.1, aux_loss_weight=0.01)


def test_tasks_are_dataset_and_held_out_domain_pairs():
    assert resolve_tasks(["pacs"], None) == [f"pacs:{d}" for d in ("art_painting", "cartoon", "photo", "sketch")]
    assert len(resolve_tasks(["domainbed"], None)) == 16  # PACS, VLCS, OfficeHome, TerraIncognita: 4 domains each
    assert resolve_tasks(["rotated_digits:30", "sst2"], None) == ["rotated_digits:30", "sst2"]
    assert get_task("vlcs:SUN09").ood.keys() == {"SUN09"} and get_task("vlcs:SUN09").image == "vlcs"
    pairs = resolve_tasks(["pacs:pairs"], None)
    assert len(pairs) == 12 and "pacs:photo+sketch" in pairs and get_task("pacs:photo+sketch").ood.keys() == {"photo"}
    with pytest.raises(ValueError, match="unknown task 'pacs:painting'.*pacs:{art_painting,cartoon,photo,sketch}"):
        get_task("pacs:painting")


def test_a_pacs_task_splits_every_domain_as_domainbed_does(tmp_path):
    """Training rows are the training domains' in splits, validation their out splits, the held-out domain's in and
    out splits its OOD set and oracle set: each from DomainBed's split_dataset with seed_hash(trial_seed, env)."""
    pacs_tree(tmp_path, per_class=5)  # 35 images per domain: 7 held out by int(35 * 0.2)
    data = vision.load_image_task(get_task("pacs:photo"), tmp_path, seed=1, size=16)
    domains = sorted(PACS["domains"])
    paths = {d: sorted((tmp_path / "PACS" / d).glob("*/*.jpg")) for d in domains}
    by_hand_train, by_hand_val = [], []
    for i, d in enumerate(domains):
        inner, outer = split_environment(35, 0.2, seed_hash(1, i))
        if d == "photo":
            assert [p for p, _ in data.ood["photo"].items] == [paths[d][j] for j in inner]
            assert [p for p, _ in data.oracle.items] == [paths[d][j] for j in outer]
        else:
            by_hand_train += [paths[d][j] for j in inner]
            by_hand_val += [paths[d][j] for j in outer]
    assert [p for p, _ in data.train.items] == by_hand_train
    assert [p for p, _ in data.validation.items] == by_hand_val
    assert sorted(set(data.validation.domains)) == [0, 1, 3]  # photo (2) held out
    assert data.task.label_names == tuple(sorted(PACS["classes"]))
    batch = next(iter(vision.image_loader(data.train, 4, True, 0)))
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["labels"].dtype == torch.int64
    with pytest.raises(ValueError, match="pass --data-dir DIR with DIR/PACS/<domain>/<class>/"):
        vision.load_image_task(get_task("pacs:photo"), None, seed=0, size=16)


def test_training_batches_draw_equally_from_every_training_domain():
    """DomainBed's InfiniteDataLoader per environment, zipped: each step batch_size // domains from every domain,
    drawn with replacement from the loader's generator (so a checkpoint's generator state replays them)."""
    domains = np.repeat([0, 1, 3], [50, 7, 20])  # unequal domains, one held out (2)
    ds = vision.ImageSet([(f"x{i}", 0) for i in range(len(domains))], 8, False, domains)
    loader = vision.image_loader(ds, 30, True, seed=4, by_domain=True)
    assert len(loader) == 3  # ceil(77 / 30): an epoch still counts the training images
    state = loader.generator.get_state()
    steps = list(loader.batch_sampler)
    for step in steps:
        assert sorted(np.bincount(domains[step], minlength=4).tolist()) == [0, 10, 10, 10]
    loader.generator.set_state(state)
    assert list(loader.batch_sampler) == steps


def test_a_pair_run_holds_out_both_domains_and_scores_the_second(tmp_path):
    """DomainBed's run with test_envs [photo, sketch]: neither domain is trained on or validated on; the second's in
    split is its loo_score set; the first's in split stays its OOD set."""
    pacs_tree(tmp_path, per_class=5)
    data = vision.load_image_task(get_task("pacs:photo+sketch"), tmp_path, seed=0, size=16)
    assert {p.parts[-3] for p, _ in data.train.items} == {"art_painting", "cartoon"}
    assert {p.parts[-3] for p, _ in data.validation.items} == {"art_painting", "cartoon"}
    inner, _ = split_environment(35, 0.2, seed_hash(0, 3))  # sketch is environment 3
    sketch = sorted((tmp_path / "PACS" / "sketch").glob("*/*.jpg"))
    assert [p for p, _ in data.loo.items] == [sketch[j] for j in inner]
    assert {p.parts[-3] for p, _ in data.ood["photo"].items} == {"photo"}
    from emoe.train import train_and_evaluate

    final = train_and_evaluate({"model": "tiny-vit", "task": "pacs:photo+sketch", "data_dir": str(tmp_path),
                                "method": "dense", "batch_size": 4, "max_steps": 2, "eval_steps": 1,
                                "keep_best": True, "keep_model": "none"})
    assert 0 <= final[tracking.LOO_SCORE] <= 1 and tracking.last_metric(tracking.LOO_SCORE) in final


def test_training_domain_validation_is_the_mean_of_domain_accuracies():
    """IIDAccuracySelectionMethod's val_acc: mean over training environments of env{i}_out_acc, not pooled."""
    pred = np.array([1, 1, 1, 1, 0, 0])
    gold = np.array([1, 1, 1, 1, 1, 0])
    domains = np.array([0, 0, 0, 0, 2, 2])
    assert vision.domain_accuracy(pred, gold, domains) == pytest.approx((1.0 + 0.5) / 2)  # pooled would be 5/6


def test_the_training_transform_is_domainbeds_and_seeded():
    import random

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    random.seed(3)
    a = vision.to_tensor(vision.train_transform(image, 24))
    random.seed(3)
    b = vision.to_tensor(vision.train_transform(image, 24))
    assert a.shape == (3, 24, 24) and torch.equal(a, b)
    for _ in range(50):  # RandomResizedCrop(scale=(0.7, 1)): 70 % to 100 % of the area, ratio 3/4 to 4/3
        left, top, w, h = vision._resized_crop_box(300, 200)
        assert 0.7 * 300 * 200 * 0.98 <= w * h <= 300 * 200 and left + w <= 300 and top + h <= 200
    gray = Image.new("RGB", (4, 4), (10, 10, 10))
    assert vision.to_tensor(gray)[:, 0, 0].tolist() == pytest.approx(
        [(10 / 255 - m) / s for m, s in zip(vision.IMAGENET_MEAN, vision.IMAGENET_STD)])


def test_a_tiny_vit_trial_reports_the_metric_contract():
    """A trial on rotated_digits:30 (the digits written to the cache): id_score is the training-domain validation,
    ood_score.30 the held-out domain, oracle_score its out split; EMoE's blocks route images' tokens."""
    from emoe.train import train_and_evaluate

    reports = []
    final = train_and_evaluate({"model": "tiny-vit", "task": "rotated_digits:30", "num_experts": 8, "top_k": 2,
                                "layers": (-4, -2), "batch_size": 30, "max_steps": 12, "eval_steps": 6,
                                "optimizer": "adam", "lr_schedule": "constant", "learning_rate": 3e-3,
                                "keep_best": True, "max_train_samples": 200, "max_eval_samples": 64},
                               reports.append)
    assert [r[tracking.STEP] for r in reports] == [6, 12]  # every eval_steps, the last at max_steps
    for key in (tracking.ID_SCORE, tracking.ood_score_metric("30"), tracking.ORACLE_SCORE, tracking.OOD_SCORE,
                tracking.load_entropy_metric(0), tracking.load_entropy_metric(2)):
        assert 0.0 <= final[key] <= np.log(8) + 1e-6 or key.startswith("load_entropy"), key
        assert key in final
    assert final[tracking.OOD_SCORE] == final[tracking.ood_score_metric("30")]
    # keep_best reports the best training-domain evaluation; DomainBed's oracle reads the last one beside it
    assert final[tracking.last_metric(tracking.ORACLE_SCORE)] == reports[-1][tracking.last_metric(tracking.ORACLE_SCORE)]
    assert final[tracking.last_metric(tracking.ID_SCORE)] == final[tracking.CURRENT_ID_SCORE]


def test_an_image_trial_resumes_exactly_from_its_checkpoint(tmp_path):
    """Interrupted after its first evaluation and resumed from the state saved there, an image trial (DomainBed's
    per-domain draws, the augmentation's Python RNG, the held-out splits) ends with the uninterrupted run's reports."""
    from test_train import interrupted, timeless

    from emoe.train import train_and_evaluate

    pacs_tree(tmp_path, per_class=3)
    cfg = {"model": "tiny-vit", "task": "pacs:photo", "num_experts": 8, "top_k": 2, "layers": (-2,), "batch_size": 6,
           "max_steps": 8, "eval_steps": 4, "optimizer": "adam", "lr_schedule": "constant", "keep_best": True,
           "data_dir": str(tmp_path), "keep_model": "none"}
    full = []
    train_and_evaluate(cfg, full.append)
    first, state = interrupted(cfg, 1)  # the node dies right after the first report (and its checkpoint)
    rest = []
    final = train_and_evaluate(cfg, rest.append, resume=state)
    assert [r[tracking.STEP] for r in first + rest] == [4, 8]
    assert timeless(first + rest) == timeless(full) and timeless(final) == timeless(full[-1])


@pytest.fixture
def tiny_deits(tmp_path, monkeypatch):
    """DeiT-S and DeiT-B stand-ins (12 blocks of a tiny ViT) in a fake, offline Hugging Face cache."""
    from huggingface_hub import constants
    from transformers import ViTConfig, ViTForImageClassification

    from emoe import hub
    from emoe.sweep import estimate

    cache = tmp_path / "hf"
    cache.mkdir()
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                                                intermediate_size=96, image_size=16, patch_size=8))
    model.save_pretrained(tmp_path / "deit")
    for name in ("facebook/deit-small-patch16-224", "facebook/deit-base-patch16-224"):
        hub_cache(cache, name, tmp_path / "deit")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(estimate, "matmul_flops", lambda threads, **kw: [1e10] * 9)
    monkeypatch.chdir(tmp_path)
    hub.unreachable.cache_clear()
    yield tmp_path
    hub.unreachable.cache_clear()


@pytest.mark.parametrize("size, model", [("s", "facebook/deit-small-patch16-224"),
                                         ("b", "facebook/deit-base-patch16-224")])
def test_the_paper_vit_presets_are_the_vision_readmes_commands(size, model, tiny_deits, capsys):
    from emoe import hparams
    from emoe.cli import main

    for command, knobs in VISION_README.items():
        name = f"paper-vit-{size}" + ("" if command == "emoe" else f"-{command}")
        preset = PRESETS[name]
        cfg = hparams.trial_config(preset["trial"])
        expected = {**DOMAINBED_TRAIN, **{k: v for k, v in VISION_README["emoe"].items() if command == "emoe"},
                    **knobs, "model": model, "learning_rate": cfg["learning_rate"]}
        assert {k: cfg[k] for k in expected} == expected, name
        assert preset["learning_rates"] == (3e-5,) and preset["seeds"] == (0, 1, 2) and preset["tasks"] == ("pacs",)
    pacs_tree(tiny_deits)
    code = exit_code(lambda: main(["sweep", "official", "--preset", f"paper-vit-{size}", "--dry-run",
                                   "--data-dir", str(tiny_deits), "--tracking-uri",
                                   f"sqlite:///{tiny_deits}/mlflow.db", "--storage-path", str(tiny_deits / "ray")]))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"shared: model {model} " in out.out and "5001 steps, evaluation every 300 steps, optimizer adam, " \
        "lr_schedule constant" in out.out
    assert "emoe: layers (-4, -2), num_experts 24, top_k 4, clustering constrained, gate avg_keys" in out.out
    assert "pacs: learning rate 3e-05, weight decay 1e-06; vlcs: learning rate 3e-05" in out.out
    assert "terra_incognita: learning rate 5e-05, weight decay 0.0001" in out.out
    rows = [line.split()[:4] for line in out.out.splitlines() if line.startswith("pacs:")]
    assert sorted(rows) == sorted([f"pacs:{d}", "official", str(s), "3e-05"] for d in sorted(PACS["domains"])
                                  for s in (0, 1, 2))


def test_the_analysis_blocks_are_dataset_and_held_out_domain_pairs():
    """A vision sweep's records analysed as any other: one block per (dataset, held-out domain) task, ranked there."""
    import pandas as pd

    from emoe.analysis.stats import analyse

    rows = []
    rng = np.random.default_rng(0)
    tasks = resolve_tasks(["rotated_digits"], None)
    for t, task in enumerate(tasks):
        for arm, shift in (("emoe", 0.02), ("random", 0.01), ("dense", 0.0)):
            for seed in (0, 1):
                score = 0.5 + 0.05 * t + shift + rng.normal(0, 0.001)
                rows.append({"task": task, "arm": arm, "seed": seed, "learning_rate": 3e-3, "outcome": "completed",
                             tracking.ID_SCORE: score, tracking.OOD_SCORE: score - 0.1,
                             tracking.ood_score_metric(task.split(":")[1]): score - 0.1})
    trials = pd.DataFrame(rows)
    a = analyse(trials, baseline="dense")
    assert a.rule == "training_domain" and a.method[1].startswith("selection (DomainBed's training-domain validation)")
    assert a.blocks == "tasks" and [b[0] for b in a.ranks.index] == tasks
    assert a.ranks.mean().to_dict() == {"emoe": 1.0, "random": 2.0, "dense": 3.0}
    from emoe.analysis.report import domainbed_display

    table = domainbed_display(a)  # collect_results.py's cells, by hand: mean over seeds, std(acc / sqrt(n)), Avg
    assert list(table.columns) == ["dataset", "arm", "00", "15", "30", "45", "60", "75", "Avg"]
    assert list(table["arm"]) == ["emoe", "random", "dense"]
    acc = trials[(trials["task"] == "rotated_digits:15") & (trials["arm"] == "dense")][tracking.OOD_SCORE] * 100
    means = [trials[(trials["task"] == t) & (trials["arm"] == "dense")][tracking.OOD_SCORE].mean() * 100 for t in tasks]
    dense = table.set_index("arm").loc["dense"]
    assert dense["15"] == f"{acc.mean():.1f} ± {np.std(acc / np.sqrt(2)):.1f}" and dense["Avg"] == f"{np.mean(means):.1f}"
    with pytest.raises(ValueError, match="selection rule 'oracle' does not apply to image tasks .*; valid rules: "
                                         "training_domain, test_domain"):
        analyse(trials, rule="oracle")
    with pytest.raises(ValueError, match="leave_one_domain_out rule needs DomainBed's runs with two held-out domains"):
        analyse(trials, rule="leave_one_domain_out")
    with pytest.raises(ValueError, match="the test_domain rule needs oracle_score"):
        analyse(trials, rule="test_domain")


def test_the_test_domain_rule_is_domainbeds_oracle():
    """The oracle reads each trial's last evaluation (last.<metric>) and chooses the learning rate on the held-out
    domain's out split (oracle_score), never on id_score; written out by hand for two rates."""
    import pandas as pd

    from emoe.analysis.stats import analyse

    rows = []
    for task in ("pacs:photo", "pacs:sketch"):
        for arm in ("emoe", "dense"):
            for seed in (0, 1):
                for lr, best_id, last_ood, oracle in ((1e-5, 0.9, 0.50, 0.40), (3e-5, 0.8, 0.60, 0.70)):
                    bump = 0.01 if arm == "emoe" else 0.0
                    rows.append({"task": task, "arm": arm, "seed": seed, "learning_rate": lr, "outcome": "completed",
                                 tracking.ID_SCORE: best_id, tracking.OOD_SCORE: 0.1,
                                 tracking.last_metric(tracking.ID_SCORE): best_id - 0.05,
                                 tracking.last_metric(tracking.OOD_SCORE): last_ood + bump,
                                 tracking.ORACLE_SCORE: 0.0, tracking.last_metric(tracking.ORACLE_SCORE): oracle})
    trials = pd.DataFrame(rows)
    iid = analyse(trials, baseline="dense")  # training_domain: the rate with the best id_score, the kept evaluation
    assert set(iid.chosen["learning_rate"]) == {1e-5} and set(iid.chosen[tracking.OOD_SCORE]) == {0.1}
    oracle = analyse(trials, baseline="dense", rule="test_domain")
    assert set(oracle.chosen["learning_rate"]) == {3e-5}
    assert sorted(set(oracle.chosen[tracking.OOD_SCORE])) == [0.6, 0.61]  # the last evaluation's
    assert oracle.method[1].startswith("selection (DomainBed's test-domain validation, its oracle)")


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_vit_and_deit_convert_and_route_image_tokens(kind, tmp_path):
    """Both image model types load by path (a fresh head of the task's classes) and convert: EMoE's blocks keep k of
    N experts for every image token."""
    import transformers as T

    from emoe.config import EmoeConfig
    from emoe.convert import convert, emoe_layers, load_model

    config = (T.ViTConfig if kind == "vit" else T.DeiTConfig)(hidden_size=32, num_hidden_layers=4,
                                                              num_attention_heads=2, intermediate_size=64,
                                                              image_size=16, patch_size=8)
    (T.ViTForImageClassification if kind == "vit" else T.DeiTForImageClassification)(config).save_pretrained(tmp_path)
    model, tokenizer = load_model(str(tmp_path), num_labels=7)
    assert tokenizer is None and model.config.num_labels == 7 and model.config.model_type == kind
    convert(model, EmoeConfig(num_experts=4, top_k=2, layers=(-4, -2)))
    logits = model(pixel_values=torch.randn(3, 3, 16, 16)).logits
    assert logits.shape == (3, 7)
    layers = emoe_layers(model)
    assert [f.block for f in layers] == [0, 2]
    assert all(f.last_active == pytest.approx(32.0) for f in layers)  # k / N of d_ff = 2 / 4 x 64 neurons per token


def test_the_vision_demo_plans_every_arm_over_every_held_out_domain(tmp_path, monkeypatch, capsys):
    """``emoe sweep clustering --preset vision-demo``, offline: 6 held-out domains x 7 arms (6 constructions and the
    dense baseline) x 2 seeds, DomainBed's protocol stated; the run itself is measured in the README."""
    from emoe.cli import main
    from emoe.sweep import estimate

    monkeypatch.setattr(estimate, "matmul_flops", lambda threads, **kw: [1e10] * 9)
    monkeypatch.chdir(tmp_path)
    code = exit_code(lambda: main(["sweep", "clustering", "--preset", "vision-demo", "--dry-run"]))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "ablation clustering: 6 tasks x 7 arms x 2 seeds x 1 learning rates = 84 trials (preset vision-demo)" \
        in out.out
    assert "DomainBed: leave-one-domain-out over rotated_digits" in out.out
    rows = [line.split()[:2] for line in out.out.splitlines() if line.startswith("rotated_digits:")]
    assert len(rows) == 84 and {t for t, _ in rows} == {f"rotated_digits:{a:02d}" for a in range(0, 90, 15)}
    assert {a for _, a in rows} == {"constrained", "kmeans", "hierarchical", "spectral", "random", "contiguous",
                                    "dense"}


def test_leave_one_domain_out_selection_is_domainbeds_written_out():
    """LeaveOneOutSelectionMethod by hand: for the trial holding out t, each step's validation is the mean over the
    other domains v of the pair run t+v's accuracy on v (loo_score); the step with the best validation gives the
    trial's test accuracy; then the learning rate with the best mean validation over seeds. The pair runs are never
    blocks."""
    import pandas as pd

    from emoe.analysis.stats import analyse

    rng = np.random.default_rng(3)
    domains = ("art_painting", "cartoon", "photo", "sketch")
    steps = (300, 600, 900)
    trials, curves = [], []
    for arm in ("emoe", "dense"):
        for seed in (0, 1):
            for lr in (1e-5, 3e-5):
                for t in domains:
                    for v in (None, *[d for d in domains if d != t]):
                        task = f"pacs:{t}" if v is None else f"pacs:{t}+{v}"
                        run = f"{task}/{arm}/{seed}/{lr}"
                        trials.append({"run_id": run, "task": task, "arm": arm, "seed": seed, "learning_rate": lr,
                                       "outcome": "completed", tracking.ID_SCORE: rng.uniform(0.6, 0.9),
                                       tracking.OOD_SCORE: 0.0, tracking.ood_score_metric(t): 0.0})
                        metric = tracking.OOD_SCORE if v is None else tracking.LOO_SCORE
                        curves += [{"run_id": run, "step": s, "metric": metric, "value": round(rng.uniform(), 2)}
                                   for s in steps]
    trials, curves = pd.DataFrame(trials), pd.DataFrame(curves)
    value = {(r.run_id, r.metric, r.step): r.value for r in curves.itertuples()}

    def by_hand(t, arm, seed, lr):  # (val_acc, test_acc) at the chosen step
        best = None
        for s in steps:
            val = np.mean([value[(f"pacs:{t}+{v}/{arm}/{seed}/{lr}", tracking.LOO_SCORE, s)]
                           for v in domains if v != t])
            if best is None or val > best[0]:
                best = (val, value[(f"pacs:{t}/{arm}/{seed}/{lr}", tracking.OOD_SCORE, s)])
        return best

    a = analyse(trials, baseline="dense", rule="leave_one_domain_out", loo_curves=curves)
    assert sorted({b[0] for b in a.ranks.index}) == [f"pacs:{t}" for t in domains]  # pairs are no blocks
    assert any("pair run(s)" in w for w in a.warnings)
    for t in domains:
        for arm in ("emoe", "dense"):
            lr = max((1e-5, 3e-5), key=lambda r: np.mean([by_hand(t, arm, s, r)[0] for s in (0, 1)]))
            chosen = a.chosen[(a.chosen["task"] == f"pacs:{t}") & (a.chosen["arm"] == arm)]
            assert set(chosen["learning_rate"]) == {lr}
            for row in chosen.itertuples():
                val, test = by_hand(t, arm, row.seed, lr)
                assert getattr(row, tracking.LOO_SCORE) == pytest.approx(val)
                assert getattr(row, tracking.OOD_SCORE) == pytest.approx(test)
    with pytest.raises(ValueError, match="needs DomainBed's runs with two held-out domains: add <dataset>:pairs"):
        analyse(trials[~trials["task"].str.contains("+", regex=False)], rule="leave_one_domain_out")


def test_keep_best_is_domainbeds_training_domain_selection_of_the_trials_own_evaluations():
    """The trial's kept evaluation (keep_best on id_score) is the one DomainBed's IIDAccuracySelectionMethod picks
    from the same evaluations (emoe.domainbed.select_runs over the latest-evaluation scores), and it reports that
    evaluation's held-out accuracy."""
    import pandas as pd

    from emoe.domainbed import select_runs
    from emoe.train import train_and_evaluate

    reports = []
    final = train_and_evaluate({"model": "tiny-vit", "task": "rotated_digits:45", "method": "dense",
                                "batch_size": 30, "max_steps": 30, "eval_steps": 5, "optimizer": "adam",
                                "lr_schedule": "constant", "learning_rate": 3e-3, "keep_best": True,
                                "keep_model": "none", "max_train_samples": 300, "max_eval_samples": 60},
                               reports.append)
    last = tracking.last_metric
    records = pd.DataFrame({"trial_seed": 0, "test_env": 1, "hparams_seed": 0, "step": [r[tracking.STEP] for r in reports],
                            "env0_out_acc": [r[last(tracking.ID_SCORE)] for r in reports],  # the training domains'
                            "env1_out_acc": [r[last(tracking.ORACLE_SCORE)] for r in reports],
                            "env1_in_acc": [r[last(tracking.OOD_SCORE)] for r in reports]})
    chosen = select_runs(records, "training_domain").iloc[0]
    assert final[tracking.BEST_STEP] == chosen["step"]
    assert final[tracking.ID_SCORE] == chosen["val_acc"] and final[tracking.OOD_SCORE] == chosen["test_acc"]
    oracle = select_runs(records, "oracle").iloc[0]  # DomainBed's oracle: the last evaluation
    assert oracle["step"] == 30 and oracle["test_acc"] == final[last(tracking.OOD_SCORE)]


def test_domainbeds_adam_decays_every_parameter_and_keeps_its_rate():
    """DomainBed's optimiser: torch.optim.Adam(params, lr, weight_decay) over every parameter, no schedule."""
    from emoe import hparams
    from emoe.train import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    cfg = hparams.trial_config({"optimizer": "adam", "lr_schedule": "constant", "weight_decay": 1e-4,
                                "learning_rate": 3e-5})
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=10)
    assert type(optimizer) is torch.optim.Adam
    assert all(g["weight_decay"] == 1e-4 for g in optimizer.param_groups)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == [3e-5] * len(optimizer.param_groups)
    adamw, _ = make_optimizer(model, hparams.trial_config({"weight_decay": 1e-4}), total_steps=10)
    assert type(adamw) is torch.optim.AdamW and {g["weight_decay"] for g in adamw.param_groups} == {0.0, 1e-4}
