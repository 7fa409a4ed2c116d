"""BOSS's tasks (emoe.boss): its names, label orders and file layout as lifan-yuan/OOD_NLP lists them, read offline
from files written the way BOSS writes them, and bad files failing by name."""

import subprocess
import sys

import pandas as pd
import pytest

from emoe.data import TASKS, load_task

# --- reference values, copied from lifan-yuan/OOD_NLP (commit 974d49e); this test does not read that repository ---

# src/utils/__init__.py:71-77 (OOD_LIST; DATASET_LIST, :63-69, is the same): each task's ID dataset and OOD sets
OOD_LIST = {
    "SentimentAnalysis": ["amazon", "dynasent", "semeval", "sst5"],
    "ToxicDetection": ["adv_civil", "civil_comments", "implicit_hate", "toxigen"],
    "NaturalLanguageInference": ["anli", "contract_nli", "mnli", "wanli"],
}
# scripts/run_method.sh:1,9,17 (--dataset_name: the ID dataset trained on)
ID_SET = {"SentimentAnalysis": "amazon", "ToxicDetection": "civil_comments", "NaturalLanguageInference": "mnli"}
# src/utils/dataloader.py:19-20 (sentiment), :46-47 (toxicity); src/utils/__init__.py:93-99 (NLI's VERBALIZER)
LABELS = {"SentimentAnalysis": ("negative", "positive", "neutral"), "ToxicDetection": ("benign", "toxic"),
          "NaturalLanguageInference": ("entailment", "neutral", "contradiction")}
# src/utils/utils_processing.py:18-21 (save_data's header rows)
HEADER = {"SentimentAnalysis": ["Text", "Label"], "ToxicDetection": ["Text", "Label"],
          "NaturalLanguageInference": ["Premise", "Hypothesis", "Label"]}
EPOCHS = 10  # src/evaluations/method-nlu.py:136
FOLDER = {"boss_sentiment": "SentimentAnalysis", "boss_toxicity": "ToxicDetection",
          "boss_nli": "NaturalLanguageInference"}


def save_data(rows, path, split):
    """src/utils/utils_processing.py:17-24, as BOSS writes its files (pandas, tab-separated, a header row)."""
    header = ["Text", "Label"] if len(rows[0]) == 2 else ["Premise", "Hypothesis", "Label"]
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=header).to_csv(path / f"{split}.tsv", sep="\t", index=False, header=header)


# Known rows per dataset: (text..., label), labels in BOSS's ids. Test splits differ from train so that the
# validation split can be told apart from it.
ROWS = {
    ("SentimentAnalysis", "amazon", "train"): [("Broke after a week.", 0), ("Love it, works great", 1),
                                                ("It is a phone case.", 2)],
    ("SentimentAnalysis", "amazon", "test"): [("Five stars, \"best\" buy", 1), ("Meh, it's okay, I guess", 2)],
    ("SentimentAnalysis", "dynasent", "test"): [("The waiter ignored us.", 0), ("Great tacos!", 1)],
    ("SentimentAnalysis", "semeval", "test"): [("@user can't wait for friday", 1), ("ugh monday again", 0)],
    # SST-5 "neutral" (a sentiment score in [0.4, 0.6), dataset_processing/SentimentAnalysis/sst.py:21-22) is 2
    ("SentimentAnalysis", "sst5", "test"): [("The film is a film .", 2), ("A dull , lifeless mess .", 0)],
    ("ToxicDetection", "civil_comments", "train"): [("Thanks for the article.", 0), ("You are an idiot.", 1)],
    ("ToxicDetection", "civil_comments", "test"): [("Good point, well made.", 0), ("Shut up, moron", 1),
                                                   ("I disagree.", 0)],
    ("ToxicDetection", "adv_civil", "test"): [("y0u are an 1diot", 1)],
    ("ToxicDetection", "implicit_hate", "test"): [("they should all go back", 1), ("happy holidays all", 0)],
    ("ToxicDetection", "toxigen", "test"): [("people from there are lovely", 0)],
    ("NaturalLanguageInference", "mnli", "train"): [("A man sleeps.", "A person rests.", 0),
                                                    ("A man sleeps.", "He is tired.", 1),
                                                    ("A man sleeps.", "He is running.", 2)],
    ("NaturalLanguageInference", "mnli", "test"): [("Two dogs play.", "Animals play.", 0),
                                                   ("Two dogs play.", "The cats sleep.", 2)],
    ("NaturalLanguageInference", "anli", "test"): [("Paris is in France.", "Paris is in Europe.", 0)],
    # ContractNLI's NotMentioned is BOSS's 1 (dataset_processing/NaturalLanguageInference/contract_nli.py:16)
    ("NaturalLanguageInference", "contract_nli", "test"): [("The party shall keep it secret.",
                                                            "Copies may be made.", 1)],
    ("NaturalLanguageInference", "wanli", "test"): [("Some birds fly.", "No birds fly.", 2),
                                                    ("Some birds fly.", "Birds exist.", 0)],
}


def write_suite(root, skip=()):
    for (folder, name, split), rows in ROWS.items():
        if (folder, name, split) not in skip:
            save_data(rows, root / folder / name, split)
    return root


@pytest.fixture(scope="module")
def process_dir(tmp_path_factory):
    """A ``datasets/process`` folder of BOSS's three classification tasks."""
    return write_suite(tmp_path_factory.mktemp("process"))


def as_rows(ds, task):
    return [tuple(row[f] for f in task.fields) for row in ds]


def test_names_labels_and_layout_are_ood_nlps():
    """Every task as OOD_NLP lists it: ID set, OOD sets (OOD_LIST's order), label order, files, epochs; nothing on
    the Hub; and only these three (NER and QA are not sequence classification)."""
    from emoe.boss import BOSS
    from emoe.data import BOSS_TASKS

    assert BOSS == ("boss_sentiment", "boss_toxicity", "boss_nli") and tuple(FOLDER) == BOSS
    assert all(TASKS[name] is task for name, task in BOSS_TASKS.items())
    for name, folder in FOLDER.items():
        task, id_set = BOSS_TASKS[name], ID_SET[folder]
        assert list(task.ood) == [d for d in OOD_LIST[folder] if d != id_set]
        assert task.label_names == LABELS[folder]
        assert task.text_fields == tuple(h.lower() for h in HEADER[folder][:-1])
        assert task.metrics == ("accuracy",) and task.epochs == EPOCHS and not task.glue_x
        assert task.train.local == (f"{folder}/{id_set}/train.tsv",)
        assert task.validation.local == (f"{folder}/{id_set}/test.tsv",)
        assert {s: src.local for s, src in task.ood.items()} == {s: (f"{folder}/{s}/test.tsv",) for s in task.ood}
        for source in [task.train, task.validation, *task.ood.values()]:
            assert source.hub is None and source.relabel is None and source.label_from is None
            assert source.rename == tuple((h, h.lower()) for h in HEADER[folder])


@pytest.mark.parametrize("name", list(FOLDER))
def test_each_task_reads_boss_files_with_their_labels(process_dir, name):
    """Fields renamed, labels BOSS's ids, validation the ID test file, every OOD set its test file."""
    data = load_task(name, data_dir=process_dir)
    task, folder = data.task, FOLDER[name]
    id_set = ID_SET[folder]
    for ds in [data.train, data.validation, *data.ood.values()]:
        assert ds.column_names == list(task.fields)
    assert as_rows(data.train, task) == ROWS[folder, id_set, "train"]
    assert as_rows(data.validation, task) == ROWS[folder, id_set, "test"]
    assert list(data.ood) == [d for d in OOD_LIST[folder] if d != id_set]
    for ood_set, ds in data.ood.items():
        assert as_rows(ds, task) == ROWS[folder, ood_set, "test"]


def test_known_labels(process_dir):
    """A few rows by label name: SST-5's neutral is 2, an implicit-hate post toxic, ContractNLI's NotMentioned
    neutral."""
    sentiment = load_task("boss_sentiment", data_dir=process_dir)
    names = sentiment.task.label_names
    assert [names[l] for l in sentiment.ood["sst5"]["label"]] == ["neutral", "negative"]
    assert names[sentiment.validation[1]["label"]] == "neutral"
    toxicity = load_task("boss_toxicity", data_dir=process_dir, ood_sets=["implicit_hate"])
    assert list(toxicity.ood) == ["implicit_hate"] and toxicity.ood["implicit_hate"]["label"] == [1, 0]
    nli = load_task("boss_nli", data_dir=process_dir, ood_sets=["contract_nli"])
    assert nli.task.label_names[nli.ood["contract_nli"][0]["label"]] == "neutral"


def test_a_missing_ood_file_is_named(tmp_path):
    root = write_suite(tmp_path, skip={("ToxicDetection", "implicit_hate", "test")})
    with pytest.raises(ValueError) as err:
        load_task("boss_toxicity", data_dir=root)
    assert str(err.value).startswith(f"data file not found: {root}/ToxicDetection/implicit_hate/test.tsv")
    assert "--ood-sets adv_civil,toxigen" in str(err.value)
    assert list(load_task("boss_toxicity", data_dir=root, ood_sets=["adv_civil", "toxigen"]).ood) == \
        ["adv_civil", "toxigen"]


@pytest.mark.parametrize("folder,name,label", [("SentimentAnalysis", "sst5", 3), ("ToxicDetection", "toxigen", 2),
                                               ("NaturalLanguageInference", "wanli", 3)])
def test_a_label_outside_the_label_set_is_named(tmp_path, folder, name, label):
    root = write_suite(tmp_path)
    rows = ROWS[folder, name, "test"]
    save_data(rows + [(*rows[0][:-1], label)], root / folder / name, "test")
    task = next(t for t, f in FOLDER.items() if f == folder)
    with pytest.raises(ValueError) as err:
        load_task(task, data_dir=root)
    assert str(err.value).startswith(f"{root}/{folder}/{name}/test.tsv: label(s) [{label}] outside task {task}'s")


def test_importing_emoe_boss_first_works():
    """emoe.boss declares, emoe.data builds the tasks from it: either may be imported first."""
    code = ("import emoe.boss, emoe.data; "
            "assert all(emoe.data.TASKS[k] is v for k, v in emoe.data.BOSS_TASKS.items()); print(emoe.boss.BOSS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('boss_sentiment', 'boss_toxicity', 'boss_nli')"


def test_tasks_boss_crosses_the_three_tasks_with_their_ood_sets(process_dir, capsys, tmp_path, monkeypatch):
    """``--tasks boss`` in a sweep's dry run: the three tasks, each with BOSS's three OOD sets, read from the files."""
    from conftest import exit_code

    from emoe.cli import main
    from emoe.sweep import estimate
    from emoe.sweep.plan import resolve_tasks

    assert resolve_tasks(["boss"], None) == ["boss_sentiment", "boss_toxicity", "boss_nli"]
    monkeypatch.setattr(estimate, "matmul_flops", lambda threads, **kw: [1e10] * 9)
    monkeypatch.chdir(tmp_path)
    code = exit_code(lambda: main(["sweep", "official", "--tasks", "boss", "--data-dir", str(process_dir),
                                   "--model", "minilm", "--seeds", "0", "--learning-rates", "1e-4", "--dry-run",
                                   "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]))
    out = capsys.readouterr()
    assert code == 0, out.err
    for task, sets in (("boss_sentiment", "dynasent, semeval, sst5"), ("boss_toxicity",
                                                                       "adv_civil, implicit_hate, toxigen"),
                       ("boss_nli", "anli, contract_nli, wanli")):
        assert f"(ID validation + OOD {sets})" in next(l for l in out.out.splitlines() if l.startswith(f"task {task}:"))


def test_rows_without_text_are_skipped_as_boss_skips_them(tmp_path):
    """dataloader.py skips a row whose text is not a string (an empty or NA cell, which pandas reads as NaN)."""
    write_suite(tmp_path, skip={("SentimentAnalysis", "semeval", "test")})
    save_data([("fine tweet", 1), ("", 0), ("NA", 0), ("another", 0)], tmp_path / "SentimentAnalysis" / "semeval",
              "test")
    data = load_task("boss_sentiment", data_dir=tmp_path)
    assert list(data.ood["semeval"]["text"]) == ["fine tweet", "another"]
    assert list(data.ood["semeval"]["label"]) == [1, 0]
