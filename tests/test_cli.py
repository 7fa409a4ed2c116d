"""The one command, ``emoe`` (issue 21): installed with the package, every subcommand reachable from any directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import exit_code

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


# --- issue 22, the command line's edges ---

def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("argv, flag", [
    (["sweep", "clustering", "--preset", "demo", "--num-expert", "8", "--dry-run"], "--num-expert"),
    (["sweep", "clustering", "--pre", "demo", "--dry-run"], "--pre"),
    (["train", "--num-expert", "8"], "--num-expert"),
    (["evaluate", "--experiment", "emoe-x", "--max-eval", "5"], "--max-eval"),
])
def test_no_flag_is_abbreviated(argv, flag, tmp_path, monkeypatch, capsys):
    """``--num-expert 8`` was read as ``--num-experts 8``: now it is refused, naming the flag."""
    monkeypatch.chdir(tmp_path)
    assert exit_code(lambda: main(argv)) == 2
    assert f"unrecognized arguments: {flag}" in one_line_error(capsys)


def test_crossings_and_commands_are_not_abbreviated(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert exit_code(lambda: main(["sweep", "--fac", "gate=avg_keys,centroid", "--preset", "demo", "--dry-run"])) == 2
    assert "declare the crossing" in one_line_error(capsys)
    assert main(["swe", "clustering"]) == 2
    assert one_line_error(capsys).startswith("error: unknown command 'swe'; valid choices: sweep, analyse,")


@pytest.mark.parametrize("argv", [["analyse", "--experim", "emoe-x"], ["sync", "--storage", "nothing"]])
def test_analyse_and_sync_refuse_abbreviations(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = exit_code(lambda: main([*argv, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]))
    assert code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("flags, value", [([], None), (["--keep-best"], True), (["--no-keep-best"], False),
                                          (["--keep-best", "true"], True), (["--keep-best", "false"], False),
                                          (["--keep-best=no"], False)])
def test_a_bool_knob_is_a_flag_pair(flags, value):
    """Every bool knob: ``--name`` / ``--no-name`` (argparse's BooleanOptionalAction), and ``--name true|false``
    as before; in train's flags and a sweep's."""
    from emoe import hparams
    from emoe.sweep.cli import build_parser, settings_from_args
    from emoe.train import build_parser as train_parser

    bools = [k.name for k in hparams.KNOBS.values() if k.type is hparams._bool]
    assert bools == ["data_augmentation", "keep_best"]
    args = train_parser().parse_args(flags)
    assert hparams.overrides_from_args(args).get("keep_best") == value
    settings = settings_from_args(build_parser(ABLATIONS["clustering"]).parse_args(flags))
    assert settings.trial.get("keep_best") == value
    if value is not None:
        assert hparams.trial_config(hparams.overrides_from_args(args))["keep_best"] is value


@pytest.mark.parametrize("flags, message", [(["--keep-best", "maybe"], "expected true or false, got 'maybe'"),
                                            (["--no-keep-best=true"], "--no-keep-best takes no value")])
def test_a_bool_flag_refuses_other_values(flags, message, capsys):
    from emoe.train import build_parser as train_parser

    assert exit_code(lambda: train_parser().parse_args(flags)) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("flags, message", [
    (["--learning-rates", "-1e-4"], "error: --learning-rates must be positive numbers, got [-0.0001]"),
    (["--learning-rates=-1e-4"], "error: --learning-rates must be positive numbers, got [-0.0001]"),
    (["--learning-rates", "-1e-4,2e-5"], "error: --learning-rates must be positive numbers, got [-0.0001, 2e-05]"),
    (["--seeds", "0,-1"], "error: --seeds must be distinct integers in [0, 4294967295], got [0, -1]"),
    (["--gate-noise", "-1e-3"], "error: gate_noise=-0.001 must be >= 0"),
    (["--warmup-ratio", "1.5"], "error: warmup_ratio=1.5 must be in [0, 1]"),
    (["--weight-decay", "-.5"], "error: weight_decay=-0.5 must be >= 0"),
    (["--layers", "-2,-9"], "block index -9 out of range for a model with 6 blocks"),
    (["--reduction-factor", "1"], "error: --reduction-factor=1.0 must be > 1"),
    (["--grace-period", "-1"], "error: --grace-period=-1.0 must be > 0"),
    (["--num-gpus", "-1"], "error: --num-gpus=-1.0 must be >= 0"),
])
def test_values_may_look_negative_and_ranges_fail_before_ray(flags, message, tmp_path, monkeypatch, capsys):
    """A negative number is a value, not a flag (argparse took ``-1e-4`` for one: "expected one argument"); it
    reaches the checks, which refuse it in one line, exit 2, before Ray starts or anything is written."""
    import ray

    monkeypatch.chdir(tmp_path)
    assert exit_code(lambda: main(["sweep", "clustering", "--preset", "demo", *flags, "--dry-run"])) == 2
    assert message in one_line_error(capsys)
    assert not ray.is_initialized() and not list(tmp_path.iterdir())


def test_negative_values_parse_in_every_command():
    from emoe.train import build_parser as train_parser

    args = train_parser().parse_args(["--layers", "-2,-1", "--gate-noise", "-1e-3", "--seed", "-1"])
    assert (args.layers, args.gate_noise, args.seed) == ("-2,-1", "-1e-3", "-1")


def test_a_missing_model_path_is_no_such_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "clustering", "--preset", "demo", "--model", "./no/such/model", "--dry-run"]) == 2
    assert one_line_error(capsys) == "error: --model ./no/such/model: no such directory"


@pytest.mark.parametrize("offline", [True, False])
def test_offline_a_hub_model_is_refused_at_once(offline, tmp_path, monkeypatch, capsys, no_network):
    """The paper preset's bert-base-cased, offline: one line, no retries (transformers tried for 28 s). Without
    HF_HUB_OFFLINE, one connection attempt finds the Hub unreachable; the loaders try none."""
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "clustering", "--preset", "paper", "--dry-run"]) == 2
    why = "HF_HUB_OFFLINE is set" if offline else "no connection to huggingface.co:443: Network is unreachable"
    assert one_line_error(capsys) == (f"error: --model bert-base-cased: not in the local Hugging Face cache and the "
                                      f"Hub is unreachable ({why}); use a local path or 'minilm'")
    assert len(no_network) == (0 if offline else 1)


def test_the_demo_data_says_what_it_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "clustering", "--preset", "demo", "--tasks", "cola", "--dry-run"]) == 2
    err = one_line_error(capsys)
    assert "demo_data/cola/train.jsonl; the demo data (--data-dir demo) holds task(s) sst2 (OOD sets: imdb, yelp, " \
           "amazon, flipkart), mrpc (OOD sets: qqp, rte), stsb (OOD sets: sick), rte (OOD sets: mrpc, qqp, " \
           "scitail)" in err
