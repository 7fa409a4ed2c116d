import pytest

from emoe import tracking


def test_redact_hides_credentials_named_or_credential_like(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcd")
    monkeypatch.setenv("WANDB_API_KEY", "k-1234567890")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # named like a token, but a short flag: left alone
    text = "hf_abcd k-1234567890 hunter2hunter2 false"
    assert tracking.redact(text) == "*** *** *** false"
    assert tracking.param_value(["a", "hunter2hunter2"]) == "a,***"


def test_cells_lost_with_the_driver_are_retired_not_counted(tmp_path):
    """An Optuna trial that started after Tune's last saved state is lost with the driver (the restored search
    suggests anew): its cell, the one without a verdict, leaves the sweep's cells and its run goes to MLflow's
    trash with the reason; every other cell and run stays."""
    from emoe import hparams
    from emoe.tracking.records import TrialFiles, retire, trial_rows, unended_cells

    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.get_or_create_experiment(client, "emoe-x")
    parent = client.create_run(exp).info.run_id
    cells = []
    for lr in (1e-4, 2e-4, 3e-4):
        files = TrialFiles.of_cell(tmp_path, "dense", hparams.trial_config({"learning_rate": lr}))
        files.start_attempt("dense", hparams.trial_config({"learning_rate": lr}))
        tracking.open_trial_run(client, exp, parent, files.dir.name, "dense", files.dir.name)
        cells.append(files)
    for files in (cells[0], cells[2]):
        files.save_final({"id_score": 0.5, "epoch": 10.0, "step": 3})
    (lost,) = unended_cells(tmp_path)
    assert lost.dir == cells[1].dir
    tracking.runs.retire_trial_run(client, exp, parent, lost.dir.name)
    retire(lost)
    assert unended_cells(tmp_path) == [] and len(trial_rows(tmp_path)) == 2
    active = client.search_runs([exp], filter_string=f"tags.`{tracking.PARENT}` = '{parent}'")
    assert sorted(r.data.tags[tracking.TRIAL_ID] for r in active) == sorted([cells[0].dir.name, cells[2].dir.name])
    (gone,) = client.search_runs([exp], run_view_type=2,
                                 filter_string=f"tags.`{tracking.TRIAL_ID}` = '{cells[1].dir.name}'")
    assert gone.info.lifecycle_stage == "deleted" and "lost with the driver" in gone.data.tags[tracking.RETIRED]


def test_a_cell_is_one_directory_named_by_its_content():
    """Every knob that changes what a trial measures changes its cell's address; keep_model (what it keeps) does
    not, and neither does the order of the config's keys."""
    from emoe import hparams
    from emoe.tracking.records import cell_name

    base = hparams.trial_config({"learning_rate": 2e-5, "seed": 1})
    name = cell_name("kmeans", base)
    assert name.startswith("sst2-kmeans-s1-lr2e-05-")
    assert cell_name("kmeans", dict(reversed(list(base.items())))) == name
    assert cell_name("kmeans", {**base, "keep_model": "none"}) == name
    assert cell_name("random", base) != name
    for knob, value in (("top_k", 2), ("gate_noise", 0.5), ("max_train_samples", 10), ("layers", (-1,))):
        assert cell_name("kmeans", {**base, knob: value}) != name, knob


def test_a_local_store_keeps_its_artifacts_beside_its_database(tmp_path, monkeypatch):
    """MLflow's default would write ./mlruns under the current directory (a checkout, when tests run there)."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.get_or_create_experiment(client, "emoe-x")
    run = tracking.TrialRun(client, exp, "r")
    run.log_dict({"a": 1}, "emoe_config.json")
    assert (tmp_path / "mlartifacts" / "emoe-x").is_dir() and not list(elsewhere.iterdir())
    assert list((tmp_path / "mlartifacts" / "emoe-x").rglob("emoe_config.json"))


def test_every_metric_of_the_schema_declares_its_direction():
    """Issue 21: a metric's direction is declared with it (schema.DIRECTIONS), not guessed from prefixes in the
    statistics; a name the schema does not declare has none."""
    from emoe.analysis.stats import higher_is_better

    assert tracking.direction(tracking.ID_SCORE) == "max" and tracking.direction("id.mcc") == "max"
    assert tracking.direction(tracking.ood_score_metric("imdb")) == "max"
    assert tracking.direction(tracking.ood_metric("sick", "pearson")) == "max"
    assert tracking.direction(tracking.TRAIN_LOSS) == "min" and tracking.direction("train_loss_x") is None
    assert tracking.direction("idle") is None and tracking.direction(tracking.load_entropy_metric(3)) == "max"
    assert higher_is_better("ood_score.yelp") and not higher_is_better("train_loss")


def test_the_printed_link_opens_on_every_trial_run_with_arms_together(tmp_path):
    """The runs-page link's filter and order (the query the MLflow UI reads from its URL), run through MLflow's own
    search: every trial run of the experiment and no parent, flat, sorted by name so that each task's arms come
    together, each name leading with task, arm, seed and rate and ending with its outcome and scores. (No browser
    here for a screenshot: this checks the query the page runs.)"""
    import urllib.parse

    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.get_or_create_experiment(client, "emoe-x")
    parent = client.create_run(exp, tags={tracking.ROLE: "sweep"}).info.run_id
    for arm in ("random", "dense", "kmeans"):
        for seed in (1, 0):
            config = {"task": "sst2", "seed": seed, "learning_rate": 2e-5}
            run = tracking.open_trial_run(client, exp, parent, f"{arm}{seed}", arm,
                                          tracking.trial_run_name(arm, config))
            run.finish("completed", name=tracking.trial_run_name(arm, config, "completed",
                                                                 {"id_score": 0.9, "ood_score": 0.7}))
    url = tracking.runs_url("http://127.0.0.1:5000", exp)
    assert url.startswith(f"http://127.0.0.1:5000/#/experiments/{exp}/runs?")
    query = dict(urllib.parse.parse_qsl(url.split("?", 1)[1]))
    found = client.search_runs([exp], filter_string=query["searchFilter"],
                               order_by=[f"{query['orderByKey']} {'ASC' if query['orderByAsc'] == 'true' else 'DESC'}"])
    names = [r.info.run_name for r in found]
    assert len(names) == 6 and parent not in {r.info.run_id for r in found}
    assert names == sorted(names) and names[0] == "sst2 dense s0 lr2e-05 | completed | id 0.9000 ood 0.7000"
    assert [n.split()[1] for n in names] == ["dense", "dense", "kmeans", "kmeans", "random", "random"]


def test_the_parent_run_opens_on_every_arms_scores(tmp_path):
    """The sweep's results on its parent run: per arm the mean, std and seeds of each score as metrics, and the same
    as a Markdown table in the run's description, which MLflow renders on the run's page (run_url): arms and scores
    without a click (screenshots: docs/screenshots)."""
    import pandas as pd

    from emoe.tracking.runs import NOTE, log_sweep_results

    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.get_or_create_experiment(client, "emoe-x")
    parent = client.create_run(exp, tags={tracking.ROLE: "sweep"}).info.run_id
    chosen = pd.DataFrame({"task": ["sst2"] * 4, "arm": ["kmeans", "kmeans", "dense", "dense"], "seed": [0, 1, 0, 1],
                           "learning_rate": [1e-4] * 4, "id_score": [0.8, 0.9, 0.7, 0.7],
                           "ood_score": [0.6, 0.7, 0.5, float("nan")]})
    log_sweep_results(client, parent, chosen, "the closing table")
    run = client.get_run(parent)
    assert run.data.metrics["kmeans.id_score"] == pytest.approx(0.85) and run.data.metrics["dense.seeds"] == 2
    note = run.data.tags[NOTE].splitlines()
    assert note[:5] == ["| | kmeans | dense |", "|---|---|---|", "| sst2 id_score | 0.8500 ± 0.0707 | 0.7000 ± 0.0000 |",
                        "| sst2 ood_score | 0.6500 ± 0.0707 | 0.5000 |",  # one OOD value: no spread
                        "| sst2 seeds, lr | 2 seed(s), lr 0.0001 | 2 seed(s), lr 0.0001 |"]
    several = pd.concat([chosen, chosen.assign(task="rte", id_score=chosen["id_score"] - 0.1)])
    log_sweep_results(client, parent, several, "")
    note = client.get_run(parent).data.tags[NOTE].splitlines()
    assert note[2] == "| **id_score** (mean over 2 tasks) | 0.8000 | 0.6500 |"
    assert tracking.run_url("http://127.0.0.1:5000/", exp, parent) == \
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{parent}"
