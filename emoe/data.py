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

from emoe.cache import cache_dir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Source:
    hub: str  # Hub dataset id
    config: str | None  # Hub config name
    split: str  # Hub split
    local: str  # path under data_dir, e.g. "sst2/train.jsonl"
    rename: tuple[tuple[str, str], ...] = ()  # Hub field -> task field


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    train: Source
    validation: Source
    ood: dict[str, Source]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def fields(self) -> tuple[str, ...]:
        return (*self.text_fields, "label")


_SENTIMENT = ("negative", "positive")
_NLI = ("entailment", "neutral", "contradiction")
_SICK = Source("RobZamp/sick", None, "test", "sick/test.jsonl",
               rename=(("sentence_A", "premise"), ("sentence_B", "hypothesis")))

# GLUE-X pairings: an ID task and its OOD test sets. Dict order is table order.
TASKS: dict[str, Task] = {
    "sst2": Task(
        "sst2", ("sentence",), _SENTIMENT,
        train=Source("nyu-mll/glue", "sst2", "train", "sst2/train.jsonl"),
        validation=Source("nyu-mll/glue", "sst2", "validation", "sst2/validation.jsonl"),
        ood={
            "imdb": Source("stanfordnlp/imdb", None, "test", "imdb/test.jsonl", rename=(("text", "sentence"),)),
            "yelp": Source("fancyzhx/yelp_polarity", None, "test", "yelp/test.jsonl", rename=(("text", "sentence"),)),
            "amazon": Source("fancyzhx/amazon_polarity", None, "test", "amazon/test.jsonl",
                             rename=(("content", "sentence"),)),
        }),
    "mnli": Task(
        "mnli", ("premise", "hypothesis"), _NLI,
        train=Source("nyu-mll/glue", "mnli", "train", "mnli/train.jsonl"),
        validation=Source("nyu-mll/glue", "mnli", "validation_matched", "mnli/validation_matched.jsonl"),
        ood={
            "snli": Source("stanfordnlp/snli", None, "test", "snli/test.jsonl"),
            "sick": _SICK,
            "mnli_mismatched": Source("nyu-mll/glue", "mnli", "validation_mismatched",
                                      "mnli/validation_mismatched.jsonl"),
        }),
    "snli": Task(
        "snli", ("premise", "hypothesis"), _NLI,
        train=Source("stanfordnlp/snli", None, "train", "snli/train.jsonl"),
        validation=Source("stanfordnlp/snli", None, "validation", "snli/validation.jsonl"),
        ood={"sick": _SICK}),
}

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
        raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(TASKS)}")
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


def _load_source(source: Source, data_dir: str | Path | None):
    import datasets

    if data_dir is not None:
        return read_file(Path(data_dir) / source.local), str(Path(data_dir) / source.local)
    where = f"{source.hub}" + (f"/{source.config}" if source.config else "") + f" [{source.split}]"
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry messages; the one line below says what failed
    try:
        ds = datasets.load_dataset(source.hub, source.config, split=source.split)
    except Exception as e:  # ConnectionError, FileNotFoundError, DatasetNotFoundError... depending on the cause
        raise ValueError(f"{where} cannot be loaded from the Hub ({str(e).strip().splitlines()[0][:160]}); "
                         f"{_POINT_AT_FILES}") from e
    finally:
        hub_log.setLevel(level)
    for old, new in source.rename:
        if old in ds.column_names and new not in ds.column_names:
            ds = ds.rename_column(old, new)
    if "label" in ds.column_names:  # SNLI marks pairs without a gold label with -1
        ds = ds.filter(lambda b: [l >= 0 for l in b["label"]], batched=True)
    return ds, where


def check_dataset(ds, task: Task, where: str) -> None:
    """Fail, naming the file, on a missing field, an empty split or a label outside the task's label set."""
    missing = [f for f in task.fields if f not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} (task {task.name} needs {', '.join(task.fields)}; "
                         f"found {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise ValueError(f"{where}: empty split (task {task.name})")
    labels = ds.unique("label")
    bad = sorted({l for l in labels if not (isinstance(l, int) and 0 <= l < task.num_labels)}, key=str)
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


def load_task(name: str, data_dir: str | Path | None = None, ood: dict[str, str] | None = None,
              max_train_samples: int | None = None, max_eval_samples: int | None = None) -> TaskData:
    """Load and check a task's train and validation splits and every OOD set (built in, then ``ood``'s files).

    ``max_train_samples`` keeps a fixed random subset (seed 0, the same for every trial, so arms train on the same
    data); ``max_eval_samples`` caps each evaluation set the same way (None: all of it).
    """
    task = get_task(name)
    data_dir = resolve_data_dir(data_dir)
    loaded = {}
    for split, source in [("train", task.train), ("validation", task.validation), *task.ood.items()]:
        ds, where = _load_source(source, data_dir)
        check_dataset(ds, task, where)
        loaded[split] = ds
    for ood_name, path in (ood or {}).items():
        if ood_name in loaded:
            raise ValueError(f"OOD set name {ood_name!r} is taken; choose another than {', '.join(loaded)}")
        ds = read_file(path)
        check_dataset(ds, task, str(path))
        loaded[ood_name] = ds

    def subset(ds, n):
        return ds.shuffle(seed=0).select(range(n)) if n is not None and n < len(ds) else ds

    return TaskData(task, subset(loaded.pop("train"), max_train_samples),
                    subset(loaded.pop("validation"), max_eval_samples),
                    {k: subset(v, max_eval_samples) for k, v in loaded.items()})


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
