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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emoe.data import Task

# (emoe task, BOSS task folder, ID dataset, OOD sets in OOD_LIST order, text fields as BOSS writes them, labels)
_SUITE = (
    ("boss_sentiment", "SentimentAnalysis", "amazon", ("dynasent", "semeval", "sst5"), ("Text",),
     ("negative", "positive", "neutral")),
    ("boss_toxicity", "ToxicDetection", "civil_comments", ("adv_civil", "implicit_hate", "toxigen"), ("Text",),
     ("benign", "toxic")),
    ("boss_nli", "NaturalLanguageInference", "mnli", ("anli", "contract_nli", "wanli"), ("Premise", "Hypothesis"),
     ("entailment", "neutral", "contradiction")),
)
EPOCHS = 10  # src/evaluations/method-nlu.py:136


def _define() -> None:
    """Build ``BOSS_TASKS`` and ``BOSS``. ``Source`` and ``Task`` are defined before ``emoe.data``'s last lines,
    which import ``BOSS_TASKS`` from here, so this also runs while ``emoe.data`` is still being imported."""
    from emoe.data import Source, Task

    def source(folder: str, name: str, split: str, rename) -> Source:
        return Source(None, None, (), (f"{folder}/{name}/{split}.tsv",), rename=rename)

    tasks = {}
    for task, folder, id_set, ood_sets, fields, labels in _SUITE:
        rename = tuple((f, f.lower()) for f in fields) + (("Label", "label"),)
        tasks[task] = Task(
            task, tuple(f.lower() for f in fields), labels, ("accuracy",), epochs=EPOCHS, glue_x=False,
            train=source(folder, id_set, "train", rename), validation=source(folder, id_set, "test", rename),
            ood={name: source(folder, name, "test", rename) for name in ood_sets})
    globals().update(BOSS_TASKS=tasks, BOSS=tuple(tasks))


def __getattr__(name: str):
    """Imported before ``emoe.data``, this module imports it (below), and its last lines ask for ``BOSS_TASKS``
    before this module has defined it: define it then (PEP 562), once."""
    if name in ("BOSS_TASKS", "BOSS"):
        _define()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


import emoe.data  # noqa: E402  (after __getattr__: see there)

if "BOSS_TASKS" not in globals():
    _define()
BOSS_TASKS: dict[str, Task]  # the three tasks, in the order above
BOSS: tuple[str, ...]  # their names
