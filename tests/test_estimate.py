"""The dry run's time estimate: a measurement that a momentary load does not swing, and a stated uncertainty."""

from emoe.sweep.estimate import machine_speed


def test_a_momentary_load_on_most_repeats_does_not_move_the_speed():
    """Load only ever slows a measurement: six of nine repeats six times slower (a burst of load) leave the speed
    at the machine's own, and the slowdown says how loaded it is now."""
    quiet = [1.00e10, 0.98e10, 0.99e10]
    loaded = [x / 6 for x in (1.0e10, 0.99e10, 0.97e10, 1.0e10, 0.98e10, 0.99e10)]
    speed, slowdown = machine_speed(quiet + loaded)
    assert speed == 1.00e10
    assert 5.5 < slowdown < 6.5
    assert machine_speed(quiet) == (1.00e10, 1.00e10 / 0.99e10)


def test_the_dry_run_states_the_estimate_s_range(monkeypatch, tmp_path, capsys):
    from emoe.sweep.ablations import ABLATIONS
    from emoe.sweep.cli import main as sweep_main

    monkeypatch.chdir(tmp_path)
    assert sweep_main(ABLATIONS["pretraining"], ["--preset", "demo", "--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("estimate:"))
    assert " between " in line and "within 2x" in line and "best of 9" in line
