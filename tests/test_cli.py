"""The one command, ``emoe`` (issue 21): installed with the package, every subcommand reachable from any directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emoe import tracking
from emoe.cli import COMMANDS, main
from emoe.sweep.ablations import ABLATIONS

EMOE = Path(sys.executable).with_name("emoe")  # the console script pip installed beside the interpreter


def run(*args, cwd):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(EMOE), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_the_console_script_lists_its_commands_and_ablations(tmp_path):
    assert EMOE.is_file(), "pip install -e . installs the emoe console script"
    out = run("--help", cwd=tmp_path)
    assert out.returncode == 0
    for name in [*COMMANDS, *ABLATIONS]:
        assert name in out.stdout
    bad = run("frobnicate", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == ("error: unknown command 'frobnicate'; valid choices: "
                                                          "sweep, analyse, train, evaluate, sync")


def test_sweep_runs_a_registered_ablation_from_outside_the_checkout(tmp_path):
    """The dry run of the demo from a directory that is not the checkout: the registry is in the package."""
    out = run("sweep", "clustering", "--preset", "demo", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ablation clustering: 7 arms x 2 seeds x 1 learning rates = 14 trials (preset demo)" in out.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_sweep_refuses_an_unknown_ablation_in_one_line(capsys):
    assert main(["sweep", "clusterin"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown ablation 'clusterin'; valid choices: clustering, "
                                              "gating,")


def test_sweep_takes_a_design_file_or_factors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["emoe"])
    (tmp_path / "x.toml").write_text('name = "cx"\n[factors]\nclustering = ["constrained", "kmeans"]\n'
                                     'gate = ["avg_keys", "centroid"]\n')
    assert main(["sweep", "x.toml", "--preset", "demo", "--dry-run"]) == 0
    assert "ablation cx: 5 arms x 2 seeds" in capsys.readouterr().out  # 2 x 2 crossed, plus the dense baseline
    assert main(["sweep", "--factor", "gate=avg_keys,centroid", "--preset", "demo", "--dry-run"]) == 0
    assert "3 arms x 2 seeds" in capsys.readouterr().out


def test_sweep_scripts_are_the_registry():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweeps"))
    try:
        for name, design in ABLATIONS.items():
            module = __import__(name)
            assert module.ABLATION is design
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("command", ["analyse", "train", "evaluate", "sync"])
def test_every_subcommand_has_its_help_under_its_name(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: emoe {command}")


def test_analyse_reads_a_store_from_any_directory(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = tracking.client(uri)
    exp = tracking.get_or_create_experiment(client, "emoe-mini")
    parent = client.create_run(exp, tags={tracking.ROLE: "sweep", tracking.SWEEP: "mini", tracking.FACTOR: "x"})
    for arm in ("x", "dense"):
        for seed in (0, 1):
            run_ = tracking.TrialRun(client, exp, f"{arm}-{seed}", parent_run_id=parent.info.run_id,
                                     tags={tracking.ARM: arm, tracking.TRIAL_ID: f"{arm}{seed}"})
            run_.log_params({"task": "sst2", "seed": seed, "learning_rate": 1e-4,
                             "method": "dense" if arm == "dense" else "emoe"})
            run_.log_metrics({"id_score": 0.8 + seed / 100, "ood_score": 0.6 + seed / 50, "epoch": 1.0}, step=1)
            run_.finish("completed")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["analyse", "--experiment", "emoe-mini", "--tracking-uri", uri, "--no-log"]) == 0
    out = capsys.readouterr().out
    assert "EXPLORATORY ANALYSIS" in out and (elsewhere / "reports" / "emoe-mini" / "report.html").is_file()
