"""Task data: the built-in tasks read offline, user OOD sets, every bad input failing by name, tokenisation cache."""

import pytest
from conftest import DATA_DIR, needs_shared_data, write_jsonl

from emoe.data import TASKS, load_task, tokenize


def test_packaged_demo_slice_is_what_the_demo_draws_from_the_full_data():
    """The shipped slice holds exactly the rows (and order) the demo preset's subsets take from the full files."""
    demo = load_task("sst2", "demo", max_train_samples=1000, max_eval_samples=200)
    assert len(demo.train) == 1000 and all(len(ds) == 200 for ds in [demo.validation, *demo.ood.values()])
    assert set(demo.train.unique("label")) == {0, 1}
    if not (DATA_DIR / "sst2" / "train.jsonl").is_file():
        pytest.skip(f"the full offline data is not at {DATA_DIR}")
    full = load_task("sst2", DATA_DIR, max_train_samples=1000, max_eval_samples=200)
    assert list(demo.train["sentence"]) == list(full.train["sentence"])
    assert list(demo.train["label"]) == list(full.train["label"])
    for name in full.ood:
        assert list(demo.ood[name]["sentence"]) == list(full.ood[name]["sentence"])


def test_hub_unreachable_is_one_line_naming_the_fix(monkeypatch):
    """At once: the datasets library, in its offline mode (emoe.hub.cache_only), does not retry for 23 s."""
    from emoe import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.unreachable.cache_clear()
    with pytest.raises(ValueError) as err:
        load_task("sst2")
    text = str(err.value)
    assert "\n" not in text and "cannot be loaded from the Hub: it is unreachable (HF_HUB_OFFLINE is set)" in text
    assert "--data-dir demo" in text


def test_a_data_directory_says_what_it_holds():
    """The demo data lists its tasks and their OOD sets: those the glue-small preset runs on, and no more."""
    from emoe.data import DATA_ALIASES, describe_local, local_tasks
    from emoe.sweep.design import PRESETS

    held = local_tasks(DATA_ALIASES["demo"])
    assert held == {"sst2": ["imdb", "yelp", "amazon", "flipkart"], "mrpc": ["qqp", "rte"], "stsb": ["sick"],
                    "rte": ["mrpc", "qqp", "scitail"]}
    small = PRESETS["glue-small"]
    assert set(small["tasks"]) == set(held) and set(small["trial"]["ood_sets"]) == {s for v in held.values() for s in v}
    assert describe_local(DATA_ALIASES["demo"]).startswith("the demo data (--data-dir demo) holds task(s) sst2 (OOD "
                                                           "sets: imdb, yelp, amazon, flipkart), mrpc (OOD sets: ")
    with pytest.raises(ValueError) as err:
        load_task("cola", "demo")
    assert str(err.value) == f"data file not found: {DATA_ALIASES['demo']}/cola/train.jsonl; " \
                             f"{describe_local(DATA_ALIASES['demo'])}"


def test_sst2_offline_has_id_and_all_ood_sets(tiny_data_dir):
    data = load_task("sst2", tiny_data_dir)
    assert list(data.ood) == ["imdb", "yelp", "amazon", "flipkart"]
    assert len(data.train) == 400 and len(data.validation) == 64
    assert set(data.train.unique("label")) == {0, 1}


@needs_shared_data
def test_full_shared_data_layout_matches_tasks():
    for task in ("sst2", "snli"):
        data = load_task(task, DATA_DIR, max_train_samples=10, max_eval_samples=5)
        assert len(data.train) == 10 and all(len(ds) == 5 for ds in data.ood.values())
        assert set(data.ood) == set(TASKS[task].ood)


def test_max_train_samples_is_a_fixed_subset(tiny_data_dir):
    a = load_task("sst2", tiny_data_dir, max_train_samples=50)
    b = load_task("sst2", tiny_data_dir, max_train_samples=50)
    assert a.train["sentence"] == b.train["sentence"] and len(a.train) == 50


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_user_ood_set_in_any_format(tiny_data_dir, tmp_path, suffix):
    import pandas as pd

    df = pd.DataFrame({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]})
    path = tmp_path / f"mine{suffix}"
    {".csv": lambda: df.to_csv(path, index=False), ".tsv": lambda: df.to_csv(path, sep="\t", index=False),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()
    data = load_task("sst2", tiny_data_dir, ood={"mine": str(path)})
    assert list(data.ood) == ["imdb", "yelp", "amazon", "flipkart", "mine"] and len(data.ood["mine"]) == 3


def _copy_layout(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name, break_it, message", [
    ("missing field", lambda d: write_jsonl(d / "sst2/train.jsonl", [{"text": "x", "label": 0}]),
     "sst2/train.jsonl: missing field(s) ['sentence'] (task sst2 needs sentence, label; found text, label)"),
    ("label outside set", lambda d: write_jsonl(d / "sst2/validation.jsonl", [{"sentence": "x", "label": 2}]),
     "sst2/validation.jsonl: label(s) [2] outside task sst2's labels 0..1 (negative, positive)"),
    ("empty file", lambda d: (d / "yelp/test.jsonl").write_text(""), "yelp/test.jsonl: empty file"),
    ("blank file", lambda d: (d / "sst2/train.jsonl").write_text("\n \n"), "sst2/train.jsonl: empty file"),
    ("unreadable", lambda d: (d / "imdb/test.jsonl").write_text("{not json\n"), "imdb/test.jsonl: unreadable json"),
    ("missing file", lambda d: (d / "amazon/test.jsonl").unlink(), "data file not found: "),
])
def test_bad_data_fails_naming_file(tiny_data_dir, tmp_path, name, break_it, message):
    d = _copy_layout(tiny_data_dir, tmp_path / "data")
    break_it(d)
    with pytest.raises(ValueError) as err:
        load_task("sst2", d)
    assert message in str(err.value)


def test_ood_set_with_other_task_fields_fails(tiny_data_dir, tmp_path):
    path = write_jsonl(tmp_path / "nli.jsonl", [{"premise": "a", "hypothesis": "b", "label": 0}])
    with pytest.raises(ValueError, match=r"nli.jsonl: missing field\(s\) \['sentence'\]"):
        load_task("sst2", tiny_data_dir, ood={"nli": str(path)})


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="colaa"), "unknown task 'colaa'; valid choices: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, snli"),
    (dict(name="sst2", ood={"imdb": "x.jsonl"}, ood_sets=["yelp"]), "OOD set name 'imdb' is taken"),
    (dict(name="sst2", ood={"imdb": "x.jsonl"}), "data file not found: x.jsonl"),
    (dict(name="sst2", ood={"mine": "x.xlsx"}), "data file not found: x.xlsx"),
])
def test_bad_task_requests(tiny_data_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_task(data_dir=tiny_data_dir, **kwargs)


def test_header_only_ood_set_is_an_empty_split(tiny_data_dir, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("sentence,label\n")
    with pytest.raises(ValueError, match=r"mine.csv: empty split"):
        load_task("sst2", tiny_data_dir, ood={"mine": str(path)})


def test_unsupported_format(tiny_data_dir, tmp_path):
    path = tmp_path / "x.xlsx"
    path.write_text("")
    with pytest.raises(ValueError, match=r"unsupported format '.xlsx'"):
        load_task("sst2", tiny_data_dir, ood={"mine": str(path)})


def test_tokenised_once_and_reused(tiny_data_dir, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = load_task("snli", tiny_data_dir)
    first = tokenize(data.train, tokenizer, data.task, 32)
    assert set(first.column_names) == {"label", "input_ids", "token_type_ids", "attention_mask"}
    assert max(len(x) for x in first["input_ids"]) <= 32

    class Exploding:
        name_or_path, __len__ = tokenizer.name_or_path, tokenizer.__len__

        def __call__(self, *a, **k):
            raise AssertionError("tokenised again")

    Exploding.__name__ = type(tokenizer).__name__
    again = tokenize(data.train, Exploding(), data.task, 32)
    assert again["input_ids"] == first["input_ids"]
