"""BOSS (Yuan et al., NeurIPS 2023 Datasets & Benchmarks, "Revisiting Out-of-distribution Robustness in NLP"): its
three sequence-classification tasks, each an ID dataset and three OOD sets, beside GLUE-X's.

Provenance: the code of lifan-yuan/OOD_NLP (commit 974d49e); ``file:line`` below are in that repository.

* Names and layout. The task folders and dataset names are ``src/utils/__init__.py:3-45`` (``TASK``) and
  ``:55-61`` (``DATASET_PATH``: ``./datasets/process/<Task>``); the benchmark's datasets per task are ``:63-69``
  (``DATASET_LIST``) and ``:71-77`` (``OOD_LIST``: the ID dataset and its three OOD sets, in this order). The ID
  datasets are the ones ``scripts/run_method.sh:1,9,17`` trains on: amazon, civil_comments, mnli. (The training
  script ``src/evaluations/method-nlu.py:25-30`` shadows ``OOD_LIST`` with the longer list of candidate datasets of
  the dataset-selection step; the analysis scripts, e.g. ``src/analysis/shots-nlu.py:43``, use the benchmark's.)
* Files. Each dataset is ``<Task>/<name>/{train,test}.tsv`` under ``datasets/process`` (``README.md:5``: the data
  are a separate download, not in the repository): point ``--data-dir`` at that ``process`` folder. The files are
  written by ``src/utils/utils_processing.py:17-24`` (``save_data``: pandas ``to_csv``, tab-separated, a header
  row ``Text, Label``, or ``Premise, Hypothesis, Label`` for pairs) and read by ``src/utils/dataloader.py:24,51,78``
  (``pd.read_csv(sep="\\t", header=0)``). Fields are renamed here to ``text`` / ``premise``, ``hypothesis`` and
  ``label``.
* Labels are integers in every file (each ``src/dataset_processing/<Task>/<name>.py`` maps its source's labels to
  ints before ``save_data``), read with ``int(label)`` (``dataloader.py:35,62,90``): no relabelling here. Their
  order: sentiment ``["negative", "positive", "neutral"]`` (``dataloader.py:19-20``; ``__init__.py:80-85``; e.g.
  ``dataset_processing/SentimentAnalysis/amazon.py:21``, ``sst.py:16-25``); toxicity ``["benign", "toxic"]``
  (``dataloader.py:46-47``; ``__init__.py:86-91``); NLI entailment 0, neutral 1, contradiction 2
  (``__init__.py:92-99``; ``dataset_processing/NaturalLanguageInference/wanli.py:17``, ``contract_nli.py:16``
  (NotMentioned is 1); MNLI and ANLI keep their Hub ids, ``mnli.py:26``, ``anli.py:26``; the prompt verbalizer
  words ``Yes, Maybe, No`` of ``dataloader.py:73-74`` are the same order).
* Splits and scoring. Only train and test exist. A model trains on the ID train split (``method-nlu.py:50``) for 10
  epochs (``method-nlu.py:136``; ``epochs`` here), then every dataset of the list, the ID one included, is scored
  by accuracy on its ``test`` split (``src/utils/utils_nlu.py:72-73,59``): the ID test split is this module's
  validation split, each OOD set's test split its OOD set. ``implicit_hate`` has only a test split
  (``dataset_processing/ToxicDetection/implicit_hate.py:37-45``); ``adv_civil`` (BOSS's own adversarial Civil
  Comments) has no processing script in the repository (``datasets/ToxicDetection.md:23-31``), only the
  downloaded files.
* Not on the Hub: no public Hugging Face dataset holds BOSS's processed files in a form ``datasets.load_dataset``
  reads (none found), and two of its sets are gated by their authors' forms (Implicit Hate, ToxiGen,
  ``README.md:7``). Every source is ``hub=None``: local files only.
* Not registered: NameEntityRecognition (ID fewnerd, ``scripts/run_method.sh:25``) tags every token (token/tag
  lines, ``dataloader.py:111-152``; seqeval F1, ``src/utils/utils_ner.py:127-133``) and QuestionAnswering (ID
  squad, ``run_method.sh:32``) extracts answer spans (JSON lines, ``dataloader.py:99-107``; exact match and token
  F1 against the answer strings, ``src/utils/utils_qa.py:78-138``): neither is one label per example, which emoe's
  tasks, models and metrics (a label id per row) are built on.
"""

from __future__ import annotations

# (emoe task, BOSS task folder, ID dataset, OOD sets in OOD_LIST order, text fields as BOSS writes them, labels)
SUITE = (
    ("boss_sentiment", "SentimentAnalysis", "amazon", ("dynasent", "semeval", "sst5"), ("Text",),
     ("negative", "positive", "neutral")),
    ("boss_toxicity", "ToxicDetection", "civil_comments", ("adv_civil", "implicit_hate", "toxigen"), ("Text",),
     ("benign", "toxic")),
    ("boss_nli", "NaturalLanguageInference", "mnli", ("anli", "contract_nli", "wanli"), ("Premise", "Hypothesis"),
     ("entailment", "neutral", "contradiction")),
)
EPOCHS = 10  # src/evaluations/method-nlu.py:136
BOSS = tuple(entry[0] for entry in SUITE)  # --tasks boss


def build(source_type, task_type) -> dict:
    """The three tasks as ``emoe.data`` declares tasks (its ``Source`` and ``Task``, passed in: this module is
    declarations only, so that ``emoe.data`` can import it): local files only, fields renamed to lower case."""
    tasks = {}
    for task, folder, id_set, ood_sets, fields, labels in SUITE:
        rename = tuple((f, f.lower()) for f in fields) + (("Label", "label"),)

        def source(name: str, split: str):
            return source_type(None, None, (), (f"{folder}/{name}/{split}.tsv",), rename=rename)

        tasks[task] = task_type(task, tuple(f.lower() for f in fields), labels, ("accuracy",), epochs=EPOCHS,
                                glue_x=False, skip_textless=True, train=source(id_set, "train"),
                                validation=source(id_set, "test"),
                                ood={name: source(name, "test") for name in ood_sets})
    return tasks
