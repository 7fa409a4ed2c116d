from emoe import tracking


def test_redact_hides_credentials_named_or_credential_like(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcd")
    monkeypatch.setenv("WANDB_API_KEY", "k-1234567890")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # named like a token, but a short flag: left alone
    text = "hf_abcd k-1234567890 hunter2hunter2 false"
    assert tracking.redact(text) == "*** *** *** false"
    assert tracking.param_value(["a", "hunter2hunter2"]) == "a,***"


def test_runs_of_trials_lost_with_the_driver_are_retired_not_counted(tmp_path):
    """A trial that started after Tune's last saved state is rerun under a new id on resume: its old run goes to
    MLflow's trash with the reason, and every run Tune still knows stays."""
    from emoe import tracking

    client = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.get_or_create_experiment(client, "emoe-x")
    parent = client.create_run(exp).info.run_id
    for tid in ("t1", "t2", "t3"):
        tracking.open_trial_run(client, exp, parent, tid, "dense", tid)
    assert tracking.runs.retire_lost_trials(client, exp, parent, {"t1", "t3"}) == 1
    active = client.search_runs([exp], filter_string=f"tags.`{tracking.PARENT}` = '{parent}'")
    assert sorted(r.data.tags[tracking.TRIAL_ID] for r in active) == ["t1", "t3"]
    (gone,) = client.search_runs([exp], run_view_type=2, filter_string=f"tags.`{tracking.TRIAL_ID}` = 't2'")
    assert gone.info.lifecycle_stage == "deleted" and "lost with the driver" in gone.data.tags[tracking.RETIRED]
    assert tracking.runs.retire_lost_trials(client, exp, parent, {"t1", "t3"}) == 0  # idempotent


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
