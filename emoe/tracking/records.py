"""What a sweep keeps beside Ray's own records in its experiment directory, read by the resume, the driver-side
MLflow callback and the backfill: the sweep record (``emoe_sweep.json``: its design, settings and MLflow parent run)
and each trial's files (``emoe_trials/<trial_id>/``: final metrics, partitions).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

SWEEP_RECORD = "emoe_sweep.json"
TRIALS_DIR = "emoe_trials"
# How this version of emoe scores and builds a trial; a sweep records the one it started with. 1: OOD sets scored
# with the ID task's metrics, a plain mean, at the trial's max length, partitions from float64 keys with serial
# restarts; 2: the OOD protocols (emoe.protocols) and the official partition.
SCORING_VERSION = 2


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


class TrialFiles:
    """``<experiment dir>/emoe_trials/<trial_id>/``: the files one trial writes on the shared storage."""

    def __init__(self, root: str | Path, trial_id: str):
        self.dir = Path(root) / TRIALS_DIR / trial_id

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
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.final.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics))
        os.replace(tmp, self.final)

    def load_final(self) -> dict[str, Any] | None:
        return json.loads(self.final.read_text()) if self.final.is_file() else None

    def save_partitions(self, partitions: dict[int, Any]) -> None:
        import numpy as np

        if partitions:
            self.dir.mkdir(parents=True, exist_ok=True)
            np.savez(self.partitions, **{f"block{b}": labels for b, labels in partitions.items()})
