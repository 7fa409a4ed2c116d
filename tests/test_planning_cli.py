"""The sweep command's planning: the dry run prints the power of the grid about to run (from stated SDs or a pilot
sweep), and --extend --target-width tops a sweep up with the seeds its intervals need, as one more planned look."""

import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from emoe.analysis import planning
from emoe.cli import main


def test_the_dry_run_prints_the_power_of_its_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["emoe"])
    assert main(["sweep", "clustering", "--preset", "demo", "--dry-run", "--plan-sd", "0.004",
                 "--seeds", "0,1,2,3,4,5,6,7,8,9"]) == 0
    out = capsys.readouterr().out
    assert "power plan: 6 arm(s) vs dense over 10 block(s)" in out
    expected = planning.power(0.01, 0.004, 10, comparisons=6)  # the same seeded simulation
    assert f"kmeans vs dense: SD of a block's difference 0.004 (stated; within 0.004, between 0); power " \
           f"{expected:.0%}" in out
    friedman = planning.friedman_power([0.01] + [0.0] * 6, 0.004, 10, draws=2000)  # one arm a point from six
    assert f"Friedman over the 10 block(s) (exploratory): power {friedman:.0%} to flag one arm" in out
    assert main(["sweep", "clustering", "--preset", "demo", "--dry-run"]) == 0
    assert "give --pilot DIR" in capsys.readouterr().out
    assert main(["sweep", "clustering", "--preset", "demo", "--dry-run", "--plan-sd", "-1"]) == 2
    assert "--plan-sd -1: WITHIN or WITHIN,BETWEEN, non-negative SDs" in capsys.readouterr().err
    assert main(["sweep", "clustering", "--preset", "demo", "--dry-run", "--target-width", "0.01"]) == 2
    assert "--target-width tops up a finished sweep: give it with --extend" in capsys.readouterr().err


def fake_sweep(monkeypatch, looks: int, planned: int, within: float):
    """A finished one-task sweep that looked ``looks`` times, planned ``planned``, its arms' SDs ``within``."""
    from emoe.sweep import cli

    record = types.SimpleNamespace(primary=lambda: {"planned_looks": planned}, looks=[10] * looks)
    monkeypatch.setattr(cli.SweepRecord, "load", staticmethod(lambda d: record))
    table = pd.DataFrame({"arm": ["constrained", "kmeans"], "within_sd": [within, within / 2],
                          "between_sd": [float("nan")] * 2})
    monkeypatch.setattr(cli, "pilot_table", lambda d, plan: table)


def top_up(width: float, cap: int = 10):
    from emoe.sweep import cli
    from emoe.sweep.ablations import ABLATIONS
    from emoe.sweep.plan import SweepSettings

    design = ABLATIONS["clustering"]
    design = type(design)(design.name, {k: design.arms[k] for k in ("constrained", "kmeans", "dense")},
                          design.factor)
    settings = SweepSettings.from_preset("demo")
    return cli.top_up_seeds(design, settings, Path("x"), types.SimpleNamespace(target_width=width, max_seeds=cap))


def test_target_width_adds_the_seeds_the_widest_arm_needs(monkeypatch):
    fake_sweep(monkeypatch, looks=1, planned=2, within=0.01)
    seeds = top_up(0.02)
    need = planning.width_needed(0.01, 0.02, 2, looks=2)  # the noisier arm decides; 2 comparisons, 2 looks
    assert seeds == tuple(range(need)) and need > 2  # the demo's seeds 0, 1, then new ones
    assert planning.expected_width(0.01, len(seeds), 2, looks=2) <= 0.02
    assert top_up(0.0001, cap=5) == (0, 1, 2, 3, 4)  # capped


def test_target_width_is_refused_past_the_planned_looks(monkeypatch):
    fake_sweep(monkeypatch, looks=2, planned=2, within=0.01)
    with pytest.raises(ValueError, match="would be look 3 at the results, but the sweep planned 2 look\\(s\\): "
                                         "its error rate would not hold"):
        top_up(0.02)
