"""What a sweep keeps beside Ray's own records in its experiment directory, read by the resume, ``--extend``, the
driver-side MLflow mirror, ``emoe sync`` and the analysis (``emoe analyse --records``): the sweep record
(``emoe_sweep.json``: its design, settings, MLflow parent run and, for an extension, the sweep it extends) and each
cell's files (``emoe_trials/<cell>/``, content-addressed by ``cell_name``: its cell and flat config, every report
(append-only), the verdict, the final metrics, partitions, predictions, checkpoint and kept model). From these
alone: which cells are done (``done_cells``), which a grid still lacks (``remaining_cells``) and every trial's row as
the analysis reads it (``trial_rows``). A sweep's extensions write their cells into the sweep's own
``emoe_trials``, so a cell is one directory however often it was started.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import os
import time
from pathlib import Path
from typing import Any

SWEEP_RECORD = "emoe_sweep.json"
TRIALS_DIR = "emoe_trials"
# How this version of emoe scores and builds a trial; a sweep records the one it started with. 1: OOD sets scored
# with the ID task's metrics, a plain mean, at the trial's max length, partitions from float64 keys with serial
# restarts; 2: the OOD protocols (emoe.protocols) and the official partition.
SCORING_VERSION = 2


def declared_primary(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The primary analysis a sweep's settings (``SweepSettings.to_dict()``) declare, as the parent run's
    ``primary.<field>`` params read (None as ``auto``); None for settings from before declarations."""
    if "primary_metric" not in settings:
        return None
    return {"metric": settings["primary_metric"], "blocks": settings.get("primary_blocks") or "auto",
            "baseline": settings.get("baseline") or "auto", "alpha": settings.get("alpha", 0.05),
            "planned_looks": settings.get("planned_looks", 1)}


@dataclasses.dataclass
class SweepRecord:
    """How to resume a sweep and where it logs: written once when the sweep starts.

    Attributes:
        design: the design's name (``emoe-<design>`` experiment by default).
        factor: the swept factor(s).
        arms: arm name -> the knobs it sets.
        settings: the sweep's settings (``emoe.sweep.plan.SweepSettings`` as a dict).
        experiment: the MLflow experiment.
        parent_run_id: the sweep's MLflow parent run.
        argv: the command line that started it (for the ``emoe.command`` tag).
    """

    design: str
    factor: str
    arms: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    experiment: str
    parent_run_id: str
    argv: list[str] = dataclasses.field(default_factory=list)
    cells: list[dict[str, Any]] | None = None  # an extension's cells (task, arm, seed, learning rate); None: the grid
    scoring_version: int = SCORING_VERSION  # the emoe scoring it started with (a record without one: 1)
    origin: str | None = None  # an extension: the directory name of the sweep it extends (their cells are shared)
    looks: list[int] = dataclasses.field(default_factory=list)  # finished trials at each look at the results

    def primary(self) -> dict[str, Any] | None:
        """The primary analysis declared at launch (``declared_primary`` of its settings)."""
        return declared_primary(self.settings)

    @staticmethod
    def exists(directory: str | Path) -> bool:
        return (Path(directory) / SWEEP_RECORD).is_file()

    @classmethod
    def load(cls, directory: str | Path) -> "SweepRecord":
        path = Path(directory) / SWEEP_RECORD
        if not path.is_file():
            raise ValueError(f"{directory}: not a sweep directory (no {SWEEP_RECORD})")
        data = json.loads(path.read_text())
        data.setdefault("scoring_version", 1)  # written before versions were recorded
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def check_scoring(self, directory: str | Path, action: str) -> None:
        """``ValueError`` (one line) when this sweep was scored otherwise than this emoe scores (``action``:
        ``--resume``, ``--extend``): continuing it would put two scorings in one table."""
        if self.scoring_version != SCORING_VERSION:
            raise ValueError(f"{action}: {directory} was started by an older emoe (scoring version "
                             f"{self.scoring_version}: OOD sets as a plain mean of the ID task's metrics at the trial's "
                             f"max length, partitions from float64 keys); this one scores with version "
                             f"{SCORING_VERSION} (--ood-protocol, the official partition), and one sweep must not mix "
                             "the two: start a new sweep (the old one stays as it is in MLflow)")

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / SWEEP_RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)

    def trial_config(self, tune_config: dict[str, Any]) -> dict[str, Any]:
        """The flat trial config of a Tune config: its knobs plus its arm's knobs (private ``_`` keys dropped)."""
        from emoe import hparams

        flat = {k: v for k, v in tune_config.items() if not k.startswith("_") and k != "arm"}
        flat.update(self.arms[tune_config["arm"]])
        return hparams.trial_config(flat)


# Knobs that change what a trial keeps, not what it measures: left out of its cell's address.
VOLATILE = ("keep_model",)


def cell_name(arm: str, config: dict[str, Any]) -> str:
    """A cell's directory name: readable (task, arm, seed, learning rate) and content-addressed (a hash of the arm
    and the flat trial config without ``VOLATILE`` knobs), so the same cell started again (a resume, a retry, an
    extension) finds its own files, and two different configs never share them. A knob added after the first
    sweeps (``emoe.hparams.LATER_KNOBS``) enters the hash only away from its default, so the cells of a sweep
    recorded before it keep their names."""
    from emoe.hparams import LATER_KNOBS

    content = json.dumps({"arm": arm, **{k: v for k, v in config.items() if k not in VOLATILE
                                         and not (k in LATER_KNOBS and v == LATER_KNOBS[k])}},
                         sort_keys=True, default=str)
    digest = hashlib.sha1(content.encode()).hexdigest()[:12]
    readable = f"{config.get('task')}-{arm}-s{config.get('seed')}-lr{float(config.get('learning_rate', 0)):g}"
    return f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', readable)}-{digest}"


def cell_epochs(cell: dict[str, Any]) -> float:
    """The epochs a cell's ``config.json`` trains for (what ``TrialFiles.outcome`` needs to tell a finished trial)."""
    return float(cell["config"].get("epochs") or 1)


def cell_budget(cell: dict[str, Any]) -> tuple[float, int | None]:
    """``(epochs, max_steps)`` of a cell's ``config.json``: the length of its protocol (a trial that trains by steps
    ends at ``max_steps``)."""
    steps = cell["config"].get("max_steps")
    return cell_epochs(cell), int(steps) if steps not in (None, "None") else None


def cell_of(cell: dict[str, Any]) -> tuple[str, str, int, float]:
    """The (task, arm, seed, learning rate) of a cell's ``config.json``."""
    c = cell["config"]
    return c["task"], cell["arm"], int(c["seed"]), float(c["learning_rate"])


class TrialFiles:
    """``<sweep dir>/emoe_trials/<cell>/``: the files of one cell (``cell_name``) on the shared storage; every
    attempt at the cell (a retry, a resume) continues them."""

    def __init__(self, root: str | Path, name: str):
        self.dir = Path(root) / TRIALS_DIR / name

    @classmethod
    def of_cell(cls, root: str | Path, arm: str, config: dict[str, Any]) -> "TrialFiles":
        return cls(root, cell_name(arm, config))

    @property
    def config(self) -> Path:
        """The trial's cell (task, arm, seed, learning rate) and flat config, written when it starts."""
        return self.dir / "config.json"

    @property
    def reports(self) -> Path:
        """Every report, one JSON line each, appended as it is made (a resumed trial may repeat a step: the last
        line of a step holds)."""
        return self.dir / "reports.jsonl"

    @property
    def ended(self) -> Path:
        """How the trial ended, as the driver saw it (``completed``, ``early_stopped`` or ``failed``, and the
        error): written by the driver's callback whether or not MLflow is reachable; removed when a new attempt
        at the cell starts."""
        return self.dir / "ended.json"

    @property
    def restarts(self) -> Path:
        """The retries after failures (``--max-failures``): their number and the last error."""
        return self.dir / "restarts.json"

    def save_restart(self, count: int, error: str) -> None:
        self._write(self.restarts, {"count": count, "error": error})

    def load_restarts(self) -> dict[str, Any] | None:
        return json.loads(self.restarts.read_text()) if self.restarts.is_file() else None

    def _write(self, path: Path, obj: Any) -> None:
        """Atomically (the driver and a worker may write the same file: each through its own temporary one)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        tmp.write_text(json.dumps(obj, default=str))
        os.replace(tmp, path)

    def save_config(self, arm: str, config: dict[str, Any]) -> None:
        self._write(self.config, {"arm": arm, "config": config, "started": round(time.time(), 3)})

    def start_attempt(self, arm: str, config: dict[str, Any], worker: bool = True) -> None:
        """A new attempt at the cell: its config written (by the driver only if the worker has not: the worker's
        is the attempt's start), an earlier attempt's verdict (a failure, an interruption seen as one) withdrawn."""
        if worker or not self.config.is_file():
            self.save_config(arm, config)
        self.ended.unlink(missing_ok=True)

    def load_config(self) -> dict[str, Any] | None:
        return json.loads(self.config.read_text()) if self.config.is_file() else None

    def append_report(self, metrics: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.reports, "a") as f:  # stamped in seconds (to the millisecond, as MLflow keeps them)
            f.write(json.dumps({"timestamp": round(time.time(), 3), **metrics}) + "\n")

    def load_reports(self, every: bool = False) -> list[dict[str, Any]]:
        """The reports, one per step (the last line of a step holds), in step order; ``every``: every line of
        every attempt, as written."""
        if not self.reports.is_file():
            return []
        rows = [json.loads(line) for line in self.reports.read_text().splitlines() if line.strip()]
        if every:
            return rows
        by_step: dict[float, dict[str, Any]] = {}
        for row in rows:
            by_step[row.get("step", len(by_step))] = row
        return [by_step[k] for k in sorted(by_step)]

    def save_ended(self, outcome: str, error: str | None = None) -> None:
        self._write(self.ended, {"outcome": outcome, "error": error})

    def conclude(self, last: dict[str, Any], epochs: float, max_steps: int | None = None) -> None:
        """The driver's verdict on an attempt that ended without failing: completed if its final metrics (else
        ``last``, the last report it saw) finished the protocol, else early-stopped; its checkpoint goes, since it
        never trains again."""
        from emoe.tracking import schema

        self.save_ended(schema.outcome(self.load_final() or last or {}, epochs, max_steps=max_steps))
        self.drop_state()

    def load_ended(self) -> dict[str, Any] | None:
        return json.loads(self.ended.read_text()) if self.ended.is_file() else None

    def outcome(self, epochs: float, max_steps: int | None = None) -> tuple[str, dict[str, Any]] | None:
        """``(outcome, metrics)`` from the files alone: the driver's verdict (``ended.json``) with the final
        metrics or, for a trial a scheduler stopped, its last report; a trial with final metrics and no verdict
        (the driver died first) completed; None for a trial that never ended (it counts as failed, as an unended
        MLflow run does)."""
        from emoe.tracking import schema

        final = self.load_final()
        if self.ended.is_file():
            outcome = json.loads(self.ended.read_text())["outcome"]
            if outcome == "failed":
                return "failed", {}
            reports = self.load_reports()
            return outcome, final if final is not None else (reports[-1] if reports else {})
        return (schema.outcome(final, epochs, max_steps=max_steps), final) if final is not None else None

    @property
    def final(self) -> Path:
        """The final metrics, saved when the trial finished (so a resume does not train it again)."""
        return self.dir / "final.json"

    @property
    def partitions(self) -> Path:
        """The expert of each neuron per converted block (``block<b>`` arrays)."""
        return self.dir / "partitions.npz"

    @property
    def predictions(self) -> Path:
        """Per-example predictions of the final (with keep_best: the kept) evaluation: one array per evaluation set
        (``id`` and each OOD set), in the set's order (class ids as int8/int16, regression scores as float32)."""
        return self.dir / "predictions.npz"

    @property
    def model(self) -> Path:
        """The kept best-ID model (``emoe.convert.save_converted``: float16), for re-evaluation."""
        return self.dir / "model"

    def artifacts(self) -> list[Path]:
        """The trial's files that go to its MLflow run as artifacts (those that exist)."""
        return [p for p in (self.partitions, self.predictions) if p.exists()]

    @property
    def state(self) -> Path:
        """The latest training state (``emoe.train``'s ``on_state``): where a restarted trial continues."""
        return self.dir / "state.pt"

    def save_state(self, state: dict[str, Any]) -> None:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "state.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.state)

    def load_state(self) -> dict[str, Any] | None:
        import torch

        return torch.load(self.state, map_location="cpu", weights_only=False) if self.state.is_file() else None

    def drop_state(self) -> None:
        self.state.unlink(missing_ok=True)

    def save_predictions(self, predictions: dict[str, Any]) -> None:
        import numpy as np

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "predictions.tmp.npz"
        np.savez_compressed(tmp, **predictions)
        os.replace(tmp, self.predictions)

    def save_final(self, metrics: dict[str, Any]) -> None:
        self._write(self.final, metrics)

    def load_final(self) -> dict[str, Any] | None:
        return json.loads(self.final.read_text()) if self.final.is_file() else None

    def save_partitions(self, partitions: dict[int, Any]) -> None:
        import numpy as np

        if partitions:
            self.dir.mkdir(parents=True, exist_ok=True)
            np.savez(self.partitions, **{f"block{b}": labels for b, labels in partitions.items()})


def sweep_family(directory: str | Path) -> list[Path]:
    """A sweep's directory and those of its extensions (siblings whose record names it as their ``origin``)."""
    directory = Path(directory)
    family = [directory]
    for sibling in sorted(directory.parent.glob("*")):
        if sibling != directory and SweepRecord.exists(sibling) and SweepRecord.load(sibling).origin == directory.name:
            family.append(sibling)
    return family


def sweep_trials(directory: str | Path):
    """Every trial's files of a sweep and its extensions: ``(files, cell)`` pairs, ``cell`` None for a trial that
    predates the trial records (no ``config.json``)."""
    for path in sweep_family(directory):
        root = Path(path) / TRIALS_DIR
        for trial_dir in sorted(root.iterdir()) if root.is_dir() else []:
            if trial_dir.name.startswith(".") or not trial_dir.is_dir():  # .retired: cells no trial continues
                continue
            files = TrialFiles(path, trial_dir.name)
            yield files, files.load_config()


def trial_rows(directory: str | Path, unfinished: str | None = "failed") -> list[dict[str, Any]]:
    """Every trial of a sweep and its extensions, from their files alone, one row each as the analysis reads them
    (``emoe.analysis.results``): ``run_id`` (the cell's directory name), ``parent_run_id`` (the sweep's directory
    name), ``arm``, ``outcome``, every knob of its flat config, and its metrics (final, or its last report). A cell
    that never ended counts as ``unfinished`` (failed, as an unended run does in MLflow); None leaves it out."""
    from emoe.tracking import schema

    rows = []
    for files, cell in sweep_trials(directory):
        if cell is None:
            continue
        config = cell["config"]
        ended = files.outcome(*cell_budget(cell))
        if ended is None and unfinished is None:
            continue
        outcome, metrics = ended or (unfinished, {})
        rows.append({"run_id": files.dir.name, "parent_run_id": Path(directory).name, "arm": cell["arm"],
                     "outcome": outcome, "status": "FINISHED" if outcome != "failed" else "FAILED", **config,
                     **schema.trial_metrics(metrics)})
    return rows


def done_cells(directory: str | Path) -> set[tuple[str, str, int, float]] | None:
    """The (task, arm, seed, learning rate) cells of a sweep and its extensions that a finished (completed or
    early-stopped) trial holds, from the files alone; None when some finished trial predates the trial records
    (no ``config.json``: its cell is known to MLflow only)."""
    done = set()
    for files, cell in sweep_trials(directory):
        if cell is None:
            if files.final.is_file():
                return None
            continue
        ended = files.outcome(*cell_budget(cell))
        if ended is not None and ended[0] != "failed":
            done.add(cell_of(cell))
    return done


def unended_cells(directory: str | Path) -> list[TrialFiles]:
    """The cells of a sweep and its extensions that were started and have no verdict: running, cut off by an
    interruption, or lost with the driver."""
    return [files for files, cell in sweep_trials(directory)
            if cell is not None and files.outcome(*cell_budget(cell)) is None]


def retire(files: TrialFiles) -> Path:
    """Move a cell that no trial will continue (an Optuna trial lost with the driver before Tune saved its state:
    the restored search suggests anew) out of the sweep's cells, into ``emoe_trials/.retired/``. Returns where."""
    target = files.dir.parent / ".retired" / files.dir.name
    target.parent.mkdir(exist_ok=True)
    os.replace(files.dir, target)
    return target
