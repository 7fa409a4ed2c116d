"""Tasks (an ID dataset and its OOD test sets), read from the Hub by name or from local files, checked, tokenised once.

A task's datasets keep the Hub datasets' field names and label ids. ``data_dir`` reads the same tasks from JSON lines
laid out as ``<data_dir>/<folder>/<split>.jsonl`` (see ``Source.local``; ``demo`` is the slice shipped in
``emoe/demo_data``); user OOD sets come as ``{name: path}`` in any format ``datasets`` reads (csv, tsv, json lines,
parquet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emoe import boss
from emoe.cache import cache_dir
from emoe.protocols import get_protocol

log = logging.getLogger(__name__)


def _flip(label):
    """GLUE-X's ``-label + 1``: paraphrase "equivalent" (1) <-> entailment (0), and back (-1, no gold label, stays)."""
    return -1 if int(label) == -1 else 1 - int(label)


def _names(*names):
    """Labels given as strings (GLUE-X's self-collected files) -> their index in ``names``; ints pass unchanged."""
    def relabel(label):
        return names.index(label) if isinstance(label, str) else label
    relabel.__qualname__ = f"names{names}"
    return relabel


def _flipkart(label):
    """GLUE-X's Flipkart mapping: positive 1; negative and neutral 0 (ints pass unchanged)."""
    return {"negative": 0, "neutral": 0, "positive": 1}[label] if isinstance(label, str) else label


def _sick_relatedness(row):
    """GLUE-X's ``sick_num5`` for STS-B: ``round(relatedness_score - 1)`` (Python's round, half to even)."""
    return float(round(float(row["relatedness"]) - 1.0))


def _sick_raw_relatedness(row):
    """The official EMoE OOD script's SICK for STS-B: the relatedness score itself (1 to 5)."""
    return float(row["relatedness"])


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a set comes from: a Hub dataset (``splits`` concatenated, as GLUE-X evaluates some OOD sets on all of
    them) or, under ``--data-dir``, local files (in the same order; those present are read, at least one must be). ``rename``
    maps source fields to the task's; ``relabel`` maps a source label to the task's (GLUE-X's label mappings);
    ``label_from`` computes the label from the whole row instead (SICK relatedness for STS-B). A source without
    ``hub`` is self-collected (GLUE-X's own files): local files or ``--ood NAME=FILE`` only."""
    hub: str | None  # Hub dataset id; None: not on the Hub
    config: str | None  # Hub config name
    splits: tuple[str, ...]  # Hub splits, concatenated
    local: tuple[str, ...]  # paths under data_dir, e.g. ("sst2/train.jsonl",)
    rename: tuple[tuple[str, str], ...] = ()  # source field -> task field
    relabel: Callable[[Any], Any] | None = None
    label_from: Callable[[dict], Any] | None = None

    @property
    def where(self) -> str:
        return f"{self.hub}" + (f"/{self.config}" if self.config else "") + f" [{'+'.join(self.splits)}]"


@dataclasses.dataclass(frozen=True)
class Task:
    """An ID task with its protocol facts and its GLUE-X OOD sets.

    ``metrics`` are GLUE's (names as GLUE-X's result files and ``evaluate``'s ``glue`` metric spell them); a task's
    primary score is their mean (GLUE's convention, which the official EMoE code and GLUE-X also use). How OOD sets
    are scored (which metrics, splits, aggregation) is the OOD protocol's (``emoe.protocols``). ``epochs`` is the
    official EMoE protocol's epoch cap."""
    name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]  # empty for a regression task
    metrics: tuple[str, ...]
    train: Source
    validation: Source
    ood: dict[str, Source]
    epochs: int = 10
    glue_x: bool = True  # one of GLUE-X's eight ID tasks (``--tasks glue``)
    label_range: tuple[float, float] | None = None  # a regression task's label range (checked)
    image: str | None = None  # an image task: its dataset in ``emoe.vision.DATASETS`` (the name is dataset:domain)
    skip_textless: bool = False  # drop rows whose text is missing (BOSS's loaders skip them); else they are refused

    @property
    def regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def fields(self) -> tuple[str, ...]:
        return (*self.text_fields, "label")


def _glue(task: str, split: str, *rename: tuple[str, str], **kw) -> Source:
    return Source("nyu-mll/glue", task, (split,), (f"{task}/{split}.jsonl",), rename=tuple(rename), **kw)


def _as_pair(fields: tuple[str, str], a: str, b: str) -> tuple[tuple[str, str], ...]:
    """Rename a sentence-pair set's fields ``a, b`` to a task's pair fields."""
    return tuple((old, new) for old, new in zip((a, b), fields) if old != new)


_SENTIMENT = ("negative", "positive")
_NLI = ("entailment", "neutral", "contradiction")
_PAIR, _QQP = ("sentence1", "sentence2"), ("question1", "question2")


def _paraphrase_ood(fields: tuple[str, str], entailment_first: bool) -> dict[str, Source]:
    """The cross-task OOD sets of the paraphrase and entailment tasks, as GLUE-X builds them (``preprocess_data``):
    MRPC and QQP on train+validation, RTE on train+validation, HANS on train+validation, each renamed to the ID
    task's fields; labels flipped where the two tasks' label orders differ (RTE/HANS put entailment at 0, MRPC/QQP
    put "equivalent"/"duplicate" at 1)."""
    flip_paraphrase = _flip if entailment_first else None  # MRPC/QQP labels, seen from RTE
    flip_entailment = None if entailment_first else _flip  # RTE/HANS labels, seen from MRPC/QQP
    return {
        "mrpc": Source("nyu-mll/glue", "mrpc", ("train", "validation"), ("mrpc/train.jsonl", "mrpc/validation.jsonl"),
                       rename=_as_pair(fields, *_PAIR), relabel=flip_paraphrase),
        "qqp": Source("nyu-mll/glue", "qqp", ("train", "validation"), ("qqp/train.jsonl", "qqp/validation.jsonl"),
                      rename=_as_pair(fields, *_QQP), relabel=flip_paraphrase),
        "rte": Source("nyu-mll/glue", "rte", ("train", "validation"), ("rte/train.jsonl", "rte/validation.jsonl"),
                      rename=_as_pair(fields, *_PAIR), relabel=flip_entailment),
        "hans": Source("jhu-cogsci/hans", None, ("train", "validation"), ("hans/train.jsonl", "hans/validation.jsonl"),
                       rename=_as_pair(fields, "premise", "hypothesis"), relabel=flip_entailment),
    }


def _twitter(fields):
    """SemEval-2015 PIT (self-collected in GLUE-X: train, dev and test merged; ``Sent_1``, ``Sent_2``, ``Label``)."""
    return Source(None, None, (), ("twitter/test.jsonl",),
                  rename=(("Sent_1", fields[0]), ("Sent_2", fields[1]), ("Label", "label")))


_mrpc_ood, _qqp_ood = _paraphrase_ood(_PAIR, False), _paraphrase_ood(_QQP, False)
_rte_ood = _paraphrase_ood(_PAIR, True)
_SICK_RENAME = (("sentence_A", "premise"), ("sentence_B", "hypothesis"), ("relatedness_score", "relatedness"))

# The eight GLUE-X ID tasks and their OOD sets (YangLinyi/GLUE-X, evaluation/utils_lp.py::preprocess_data and its
# result files), then snli (not a GLUE-X pairing: a small NLI task for demos and tests). Dict order is table order.
TASKS: dict[str, Task] = {
    "cola": Task(
        "cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
        train=_glue("cola", "train"), validation=_glue("cola", "validation"),
        # GLUE-X's self-collected Grammar Test (its "cola_ood"); not CoLA's own out-of-domain dev set
        ood={"grammar": Source(None, None, (), ("grammar/test.jsonl",))}),
    "sst2": Task(
        "sst2", ("sentence",), _SENTIMENT, ("accuracy",),
        train=_glue("sst2", "train"), validation=_glue("sst2", "validation"),
        ood={
            "imdb": Source("stanfordnlp/imdb", None, ("train", "test"), ("imdb/train.jsonl", "imdb/test.jsonl"),
                           rename=(("text", "sentence"),)),
            "yelp": Source("fancyzhx/yelp_polarity", None, ("train", "test"), ("yelp/train.jsonl", "yelp/test.jsonl"),
                           rename=(("text", "sentence"),)),
            "amazon": Source("fancyzhx/amazon_polarity", None, ("train", "test"),
                             ("amazon/train.jsonl", "amazon/test.jsonl"), rename=(("content", "sentence"),)),
            "flipkart": Source(None, None, (), ("flipkart/test.jsonl",),
                               rename=(("Summary", "sentence"), ("Sentiment", "label")), relabel=_flipkart),
        }),
    "mrpc": Task(
        "mrpc", _PAIR, ("not_equivalent", "equivalent"), ("accuracy", "f1"),
        train=_glue("mrpc", "train"), validation=_glue("mrpc", "validation"),
        ood={k: _mrpc_ood[k] for k in ("qqp", "rte", "hans")} | {"twitter": _twitter(_PAIR)}),
    "qqp": Task(
        "qqp", _QQP, ("not_duplicate", "duplicate"), ("accuracy", "f1"), epochs=3,
        train=_glue("qqp", "train"), validation=_glue("qqp", "validation"),
        ood={k: _qqp_ood[k] for k in ("mrpc", "rte", "hans")} | {"twitter": _twitter(_QQP)}),
    "stsb": Task(
        "stsb", _PAIR, (), ("pearson", "spearmanr"), label_range=(0.0, 5.0),
        train=_glue("stsb", "train"), validation=_glue("stsb", "validation"),
        ood={"sick": Source("RobZamp/sick", None, ("train", "validation", "test"), ("sick/test.jsonl",),
                            rename=_SICK_RENAME + (("premise", "sentence1"), ("hypothesis", "sentence2")),
                            label_from=_sick_relatedness)}),
    "mnli": Task(
        "mnli", ("premise", "hypothesis"), _NLI, ("accuracy",), epochs=3,
        train=_glue("mnli", "train"), validation=_glue("mnli", "validation_matched"),
        ood={
            "mnli_mismatched": _glue("mnli", "validation_mismatched"),
            "snli": Source("stanfordnlp/snli", None, ("train", "validation", "test"),
                           ("snli/train.jsonl", "snli/validation.jsonl", "snli/test.jsonl")),
            "sick": Source("RobZamp/sick", None, ("train", "validation", "test"), ("sick/test.jsonl",),
                           rename=_SICK_RENAME),
        }),
    "qnli": Task(
        "qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), epochs=3,
        train=_glue("qnli", "train"), validation=_glue("qnli", "validation"),
        # GLUE-X's self-collected NewsQA-derived set (its "qnli_ood"; string labels)
        ood={"newsqa": Source(None, None, (), ("newsqa/test.jsonl",),
                              relabel=_names("entailment", "not_entailment"))}),
    "rte": Task(
        "rte", _PAIR, ("entailment", "not_entailment"), ("accuracy",),
        train=_glue("rte", "train"), validation=_glue("rte", "validation"),
        ood={k: _rte_ood[k] for k in ("mrpc", "qqp", "hans")} | {
            # SciTail: GLUE-X merges its train, dev and test; labels "entails" 0, "neutral" 1
            "scitail": Source("allenai/scitail", "tsv_format", ("train", "validation", "test"),
                              ("scitail/train.jsonl", "scitail/validation.jsonl", "scitail/test.jsonl"),
                              rename=_as_pair(_PAIR, "premise", "hypothesis"),
                              relabel=_names("entails", "neutral"))}),
    "snli": Task(
        "snli", ("premise", "hypothesis"), _NLI, ("accuracy",), glue_x=False,
        train=Source("stanfordnlp/snli", None, ("train",), ("snli/train.jsonl",)),
        validation=Source("stanfordnlp/snli", None, ("validation",), ("snli/validation.jsonl",)),
        ood={"sick": Source("RobZamp/sick", None, ("test",), ("sick/test.jsonl",), rename=_SICK_RENAME)}),
}
GLUE = tuple(name for name, task in TASKS.items() if task.glue_x)  # --tasks glue


def _image_tasks() -> dict[str, Task]:
    """A task per (DomainBed dataset, held-out domain) (``emoe.vision``): read from disk in DomainBed's layout, not
    through ``Source``; each has one OOD set, its held-out domain, scored by accuracy."""
    from emoe import vision

    none = Source(None, None, (), ())
    return {name: Task(name, (), spec.classes, ("accuracy",), none, none, {vision.held_out(name)[1]: none},
                       glue_x=False, image=dataset)
            for dataset, spec in vision.DATASETS.items()
            for name in vision.task_names(dataset) + vision.pair_names(dataset)}


TASKS.update(_image_tasks())
BOSS_TASKS = boss.build(Source, Task)  # --tasks boss (emoe.boss: BOSS's three classification tasks)
TASKS.update(BOSS_TASKS)

# Short names for data directories that ship inside the package (usable offline).
DATA_ALIASES = {"demo": Path(__file__).resolve().with_name("demo_data")}
_POINT_AT_FILES = ("pass --data-dir DIR with local files laid out as DIR/<set>/<split>.jsonl (see the README), or "
                   "--data-dir demo for the packaged SST-2 demo slice")


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """``None`` (the Hub), an alias of ``DATA_ALIASES``, or a local directory."""
    if data_dir is None:
        return None
    return DATA_ALIASES.get(str(data_dir), Path(data_dir))


_FORMATS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".json": ("json", {}),
            ".jsonl": ("json", {}), ".parquet": ("parquet", {})}


def get_task(name: str) -> Task:
    if name not in TASKS:
        from emoe import vision

        text = [t for t, task in TASKS.items() if task.image is None]
        images = ", ".join(f"{d}:{{{','.join(spec.domains)}}}" for d, spec in vision.DATASETS.items())
        raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(text)}; image tasks (dataset:held-out "
                         f"domain) {images}")
    return TASKS[name]


def read_file(path: str | Path):
    """A local csv / tsv / json(l) / parquet file as a ``datasets.Dataset``; ``ValueError`` naming the file if not."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"{path}: unsupported format {path.suffix!r}; use one of {', '.join(_FORMATS)}")
    with open(path, "rb") as f:
        if not f.read(4096).strip() and path.stat().st_size <= 4096:
            raise ValueError(f"{path}: empty file")
    builder, kwargs = _FORMATS[path.suffix.lower()]
    quiet = logging.getLogger("datasets")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # it logs its own traceback for a bad file; ours is the one line that counts
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # datasets raises many types for unparseable files
        if "corresponds to no data" in str(e):
            raise ValueError(f"{path}: empty split (no rows)") from e
        root = e
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        text = str(root).strip() or type(root).__name__
        raise ValueError(f"{path}: unreadable {builder} file ({text.splitlines()[0][:200]})") from e
    finally:
        quiet.setLevel(level)


def _hub(source: Source):
    import datasets

    from emoe import hub

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry messages; the one line below says what failed
    try:
        with hub.cache_only():  # the Hub unreachable: the cache at once, not after half a minute of retries
            ds = datasets.load_dataset(source.hub, source.config, split="+".join(source.splits))
    except Exception as e:  # ConnectionError, FileNotFoundError, DatasetNotFoundError... depending on the cause
        why = hub.unreachable()
        if why is not None:
            raise ValueError(f"{source.where} cannot be loaded from the Hub: it is unreachable ({why}) and the "
                             f"local Hugging Face cache does not hold it; {_POINT_AT_FILES}") from None
        raise ValueError(f"{source.where} cannot be loaded from the Hub ({str(e).strip().splitlines()[0][:160]}); "
                         f"{_POINT_AT_FILES}") from e
    finally:
        hub_log.setLevel(level)
    return ds


def _drop_unlabelled(ds):
    """Rows without a gold label (SNLI's -1) out: for the ID task's own splits; OOD sets keep them."""
    if "label" in ds.column_names and str(ds.features["label"].dtype).startswith("int") and -1 in ds.unique("label"):
        ds = ds.filter(lambda b: [l >= 0 for l in b["label"]], batched=True)
    return ds


def _local(source: Source, data_dir: Path, hint: str):
    import datasets

    paths = [data_dir / rel for rel in source.local]
    present = [p for p in paths if p.is_file()]
    if not present:
        raise ValueError(f"data file not found: {' or '.join(map(str, paths))}{hint}")
    if len(present) < len(paths):
        log.info("%s: reading %s (%s absent)", source.where if source.hub else source.local[0],
                 ", ".join(map(str, present)), ", ".join(str(p) for p in paths if p not in present))
    parts = [read_file(p) for p in present]
    return (parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)), " + ".join(map(str, present))


def _to_task(ds, source: Source, task: Task):
    """A source's rows with the task's field names and label ids (GLUE-X's renames and label mappings)."""
    import datasets

    for old, new in source.rename:
        if old in ds.column_names and new not in ds.column_names:
            ds = ds.rename_column(old, new)
    if source.label_from is not None:
        fn = source.label_from
        ds = ds.map(lambda row: {"label": fn(row)}, remove_columns=[c for c in ["label"] if c in ds.column_names])
    elif source.relabel is not None and "label" in ds.column_names:
        fn = source.relabel
        ds = ds.map(lambda b: {"label": [fn(x) for x in b["label"]]}, batched=True, remove_columns=["label"])
    if task.regression and "label" in ds.column_names and ds.features["label"].dtype != "float32":
        try:
            ds = ds.cast_column("label", datasets.Value("float32"))
        except (ValueError, TypeError):
            pass  # check_dataset names the non-numeric labels
    return ds


def _load_source(source: Source, task: Task, data_dir: Path | None, name: str, hint: str = "",
                 keep_unlabelled: bool = False):
    if data_dir is not None:
        ds, where = _local(source, data_dir, hint)
    elif source.hub is None:
        if task.name in boss.BOSS:
            raise ValueError(f"task {task.name}: BOSS's files are not on the Hub: pass --data-dir DIR (BOSS's "
                             f"datasets/process folder) with DIR/{source.local[0]}{hint}")
        raise ValueError(f"task {task.name}: OOD set {name!r} is self-collected by GLUE-X (not on the Hub): pass "
                         f"--ood {name}=FILE, or --data-dir DIR with DIR/{source.local[0]}{hint}")
    else:
        ds, where = _hub(source), source.where
    return _to_task(ds if keep_unlabelled else _drop_unlabelled(ds), source, task), where


def _skip_textless(ds, task: Task, where: str):
    """Rows whose text fields hold no string (an empty or ``NA`` cell, read as missing) left out, as BOSS's
    ``get_examples`` skips them (``src/utils/dataloader.py``: ``if not isinstance(text_a, str): continue``)."""
    if any(f not in ds.column_names for f in task.text_fields):
        return ds  # check_dataset names the missing field
    kept = ds.filter(lambda b: [all(isinstance(b[f][i], str) for f in task.text_fields)
                                for i in range(len(b[task.text_fields[0]]))], batched=True)
    if len(kept) < len(ds):
        log.info("%s: %d row(s) without text skipped, as BOSS skips them", where, len(ds) - len(kept))
    return kept


def check_dataset(ds, task: Task, where: str, unlabelled_ok: bool = False) -> None:
    """Fail, naming the file, on a missing field, an empty split or a label outside the task's label set
    (``unlabelled_ok``: an OOD set scored by accuracy alone may hold rows without a gold label, -1, as SNLI does;
    they score as wrong)."""
    missing = [f for f in task.fields if f not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} (task {task.name} needs {', '.join(task.fields)}; "
                         f"found {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise ValueError(f"{where}: empty split (task {task.name})")
    labels = ds.unique("label")
    if task.regression:
        lo, hi = task.label_range
        bad = sorted({l for l in labels if not (isinstance(l, (int, float)) and lo <= l <= hi)}, key=str)
        if bad:
            raise ValueError(f"{where}: label(s) {bad[:5]} outside task {task.name}'s score range {lo:g}..{hi:g}")
    else:
        bad = sorted({l for l in labels if not (isinstance(l, int) and (0 <= l < task.num_labels
                                                                          or unlabelled_ok and l == -1))}, key=str)
        if bad:
            raise ValueError(f"{where}: label(s) {bad[:5]} outside task {task.name}'s labels "
                             f"0..{task.num_labels - 1} ({', '.join(task.label_names)})")
    for field in task.text_fields:
        if ds.features[field].dtype not in ("string", "large_string"):
            raise ValueError(f"{where}: field {field!r} holds {ds.features[field].dtype}, not text")


@dataclasses.dataclass
class TaskData:
    task: Task
    train: object  # datasets.Dataset
    validation: object
    ood: dict[str, object]
    ood_sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # each OOD set's rows before any cap
    dev: object | None = None  # the clean rule's development split, carved from the training set (else None)
    oracle: object | None = None  # an image task's held-out domain's out split (DomainBed's oracle validation)
    loo: object | None = None  # a pair run's validation domain's in split (DomainBed's leave-one-domain-out)

    def sizes(self) -> dict[str, int]:
        """Each OOD set's size as GLUE-X weighs it: its full row count, not the ``max_eval_samples`` evaluated."""
        return {name: self.ood_sizes.get(name, len(ds)) for name, ds in self.ood.items()}


def ood_source(task: Task, name: str, protocol: str = "gluex") -> Source:
    """Where a built-in OOD set's rows come from under an OOD protocol (``emoe.protocols``): GLUE-X's splits and
    labels, or the official EMoE script's single split (and SICK's raw relatedness for STS-B)."""
    source, rules = task.ood[name], get_protocol(protocol)
    split = rules.one_split.get(name)
    if split is not None and source.hub is not None:
        folder = source.local[0].split("/")[0]
        source = dataclasses.replace(source, splits=(split,), local=(f"{folder}/{split}.jsonl",))
    if rules.raw_sick_relatedness and source.label_from is _sick_relatedness:
        source = dataclasses.replace(source, label_from=_sick_raw_relatedness)
    return source


def ood_set_names(task: Task, ood_sets: tuple[str, ...] | list[str] | None) -> list[str]:
    """The task's built-in OOD sets that ``ood_sets`` keeps (None: all of them), in the task's order."""
    return [s for s in task.ood if ood_sets is None or s in ood_sets]


def check_ood_sets(tasks: list[str], ood_sets, extra: dict[str, str] | None = None) -> None:
    """Every name of ``ood_sets`` must be an OOD set of one of ``tasks`` (or a user set of ``extra``)."""
    known = {s for t in tasks for s in get_task(t).ood} | set(extra or {})
    unknown = [s for s in (ood_sets or ()) if s not in known]
    if unknown:
        raise ValueError(f"--ood-sets: {', '.join(map(repr, unknown))} is not an OOD set of task(s) "
                         f"{', '.join(tasks)}; valid choices: {', '.join(sorted(known))}")


def local_tasks(data_dir: Path, ood_protocol: str = "gluex") -> dict[str, list[str]]:
    """The tasks whose train and validation files a data directory holds, each with the OOD sets it holds for it
    (under ``ood_protocol``'s splits), in table order."""
    def held(source: Source) -> bool:
        return any((data_dir / rel).is_file() for rel in source.local)

    return {name: [s for s in task.ood if held(ood_source(task, s, ood_protocol))]
            for name, task in TASKS.items() if held(task.train) and held(task.validation)}


def describe_local(data_dir: Path, ood_protocol: str = "gluex") -> str:
    """What a data directory holds (``local_tasks``), as a clause of an error message."""
    name = "the demo data (--data-dir demo)" if Path(data_dir).resolve() == DATA_ALIASES["demo"] else str(data_dir)
    tasks = local_tasks(Path(data_dir), ood_protocol)
    if not tasks:
        return f"{name} holds no task's train and validation files"
    return f"{name} holds task(s) " + ", ".join(f"{t} (OOD sets: {', '.join(sets) or 'none'})"
                                                 for t, sets in tasks.items())


def load_task(name: str, data_dir: str | Path | None = None, ood: dict[str, str] | None = None,
              max_train_samples: int | None = None, max_eval_samples: int | None = None,
              ood_sets: tuple[str, ...] | list[str] | None = None, ood_protocol: str = "gluex",
              dev_samples: int | None = None, dev_seed: int = 0) -> TaskData:
    """Load and check a task's train and validation splits and its OOD sets.

    ``ood_protocol`` (``emoe.protocols``) picks each built-in OOD set's splits (and SICK's labels for STS-B); OOD
    sets keep their unlabelled rows (SNLI's -1), which score as wrong under both protocols.

    ``ood`` maps a set name to a file: a built-in set's name takes its rows from that file (renamed and relabelled
    as the built-in set is: the way to give GLUE-X's self-collected sets), any other name adds a set checked
    against the task as it is. ``ood_sets`` keeps only the named built-in sets (None: all). ``max_train_samples``
    keeps a fixed random subset (seed 0, the same for every trial, so arms train on the same data);
    ``max_eval_samples`` caps each evaluation set the same way (None: all of it). ``dev_samples`` carves the clean
    selection rule's development split out of the training set first (a random subset drawn with ``dev_seed``: the
    same rows for every arm of a sweep; they are never trained on); ``max_train_samples`` then subsets the rest.
    """
    task = get_task(name)
    data_dir = resolve_data_dir(data_dir)
    ood = dict(ood or {})
    kept = ood_set_names(task, ood_sets)
    others = [s for s in task.ood if s in kept]
    loaded = {}
    # rows without a gold label (-1) score as wrong under accuracy; F1 and MCC have no place for them
    unlabelled_ok = get_protocol(ood_protocol).metrics(task) == ("accuracy",)
    for split, source in [("train", task.train), ("validation", task.validation),
                          *((s, ood_source(task, s, ood_protocol)) for s in kept)]:
        is_ood = split not in ("train", "validation")
        if split in ood and is_ood:
            ds, where = _to_task(read_file(ood.pop(split)), source, task), f"{split}: {source.local[0]} given"
        else:
            hint = "" if not is_ood else \
                f" (or leave {split} out: --ood-sets {','.join(s for s in others if s != split) or 'NONE'})"
            if data_dir is not None and not any((data_dir / rel).is_file() for rel in source.local):
                hint += f"; {describe_local(data_dir, ood_protocol)}"  # what it does hold
            ds, where = _load_source(source, task, data_dir, split, hint, keep_unlabelled=is_ood)
        if task.skip_textless:
            ds = _skip_textless(ds, task, where)
        check_dataset(ds, task, where, unlabelled_ok=is_ood and unlabelled_ok)
        loaded[split] = ds
    for ood_name, path in ood.items():
        if ood_name in ("train", "validation") or ood_name in task.ood:
            raise ValueError(f"OOD set name {ood_name!r} is taken (a split, or an OOD set that --ood-sets left out)"
                             f"; choose another than {', '.join(['train', 'validation', *task.ood])}")
        ds = read_file(path)
        if task.regression and "label" in ds.column_names:
            ds = _to_task(ds, Source(None, None, (), ()), task)
        check_dataset(ds, task, str(path), unlabelled_ok=unlabelled_ok)
        loaded[ood_name] = ds

    def subset(ds, n):
        return ds.shuffle(seed=0).select(range(n)) if n is not None and n < len(ds) else ds

    train, dev = loaded.pop("train"), None
    if dev_samples:
        if dev_samples >= len(train):
            raise ValueError(f"dev_samples={dev_samples} leaves nothing to train on: {name}'s training set has "
                             f"{len(train)} rows; use fewer")
        order = np.random.default_rng(dev_seed).permutation(len(train))
        dev, train = train.select(np.sort(order[:dev_samples])), train.select(np.sort(order[dev_samples:]))
    return TaskData(task, subset(train, max_train_samples),
                    subset(loaded.pop("validation"), max_eval_samples),
                    {k: subset(v, max_eval_samples) for k, v in loaded.items()},
                    {k: len(v) for k, v in loaded.items()}, dev)


def tokenize(ds, tokenizer, task: Task, max_length: int):
    """Tokenise once per (tokenizer, dataset content, max_length): later calls read the cached Arrow file."""
    key = hashlib.sha256(repr((type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer), task.text_fields,
                               max_length, ds._fingerprint)).encode()).hexdigest()[:24]
    path = cache_dir("tokenized") / f"{task.name}-{key}.arrow"
    fields = task.text_fields

    def encode(batch):
        return tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_length)

    keep = {"label"}
    return ds.map(encode, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                  cache_file_name=str(path), new_fingerprint=key, desc=f"tokenising {task.name}")
