"""Ablation sweeps on Ray Tune, logged to MLflow.

- ``design``: the arms of a sweep (``Ablation``) and the presets;
- ``plan``: typed settings (``SweepSettings``) and every check before Ray starts;
- ``search``: the grid, arm-balanced Optuna, ASHA per arm and seed;
- ``trainable``: the worker side (one trial = one ``emoe.train.train_and_evaluate``);
- ``runner``: ``run_sweep(design, settings)``: Ray, the MLflow parent run, the Tuner's fit or restore;
- ``estimate``: the dry run's time estimate;
- ``cli``: flags, the dry run and what a sweep prints (``main(design)``, used by ``emoe sweep`` and ``sweeps/*.py``);
- ``ablations``: the ablations that ship with emoe, by name (``ABLATIONS``), and crossings of any factors.
"""

from emoe.sweep.ablations import ABLATIONS
from emoe.sweep.cli import main
from emoe.sweep.design import DENSE, PRESETS, Ablation
from emoe.sweep.plan import SweepSettings, make_plan
from emoe.sweep.runner import SweepOutcome, run_sweep

__all__ = ["ABLATIONS", "DENSE", "PRESETS", "Ablation", "SweepOutcome", "SweepSettings", "main", "make_plan", "run_sweep"]
