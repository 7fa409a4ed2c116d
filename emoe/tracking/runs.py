"""MLflow runs: the store (checked before any cluster work), experiments, the sweep's parent run and its trials'
child runs (open, continue, close), and the redaction of secrets from everything logged."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from emoe.tracking.schema import (ARM, COMMAND, DEFAULT_TRACKING_URI, ERROR, EXPERIMENT_KIND, FACTOR, GIT_COMMIT,
                                  ID_SCORE, LOOKS, OOD_SCORE, OUTCOME, OUTCOMES, PARENT, RAY_DIR, RETIRED, ROLE,
                                  SWEEP, TASK, TRIAL_ID)


# Environment variables whose values must never reach MLflow (tokens, passwords, keys): these names, and any
# name that looks like a credential (a value of 8+ characters, so flags such as TOKENIZERS_PARALLELISM=false stay).
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_USERNAME", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN")
_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY")


def _secrets() -> list[str]:
    values = {os.environ.get(n, "") for n in SECRET_ENV if len(os.environ.get(n, "")) >= 4}
    values |= {v for n, v in os.environ.items() if _SECRET_NAME.search(n.upper()) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)  # the longest first: no secret is left half-replaced


def redact(text: str) -> str:
    for value in _secrets():
        text = text.replace(value, "***")
    return text


def param_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    elif isinstance(value, dict):
        value = json.dumps(value, sort_keys=True)
    return redact(str(value))[:6000]


def check_tracking_uri(uri: str) -> None:
    """Fail fast (``ValueError``, one line) on a store that cannot be used, before any cluster work starts."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if path is None or not str(path):
            raise ValueError(f"tracking URI {uri!r}: expected sqlite:///relative/path.db or sqlite:////abs/path.db")
        if not path.resolve().parent.is_dir():
            raise ValueError(f"tracking URI {uri!r}: directory {path.resolve().parent} does not exist")
    elif parsed.scheme in ("http", "https"):
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as e:
            raise ValueError(f"tracking URI {uri!r} is unreachable ({e.strerror or e}); start the server or "
                             f"use the local default {DEFAULT_TRACKING_URI}") from None
    elif parsed.scheme in ("", "file"):
        raise ValueError(f"tracking URI {uri!r}: MLflow 3 deprecates the file store; use {DEFAULT_TRACKING_URI} "
                         "or an http(s):// server")
    elif parsed.scheme not in ("databricks", "postgresql", "mysql", "mssql"):
        raise ValueError(f"tracking URI {uri!r}: unsupported scheme {parsed.scheme!r}; use sqlite:///path.db, "
                         "http(s)://host:port or a database URI")


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps its artifacts: beside the database
    (``<db dir>/mlartifacts/<experiment>``), so the store is one self-contained folder. MLflow's own default is
    ``./mlruns`` under whatever directory the process that creates the experiment runs in. ``None`` (the server's or
    database's default) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / experiment).as_uri()


def get_or_create_experiment(mlflow_client, name: str) -> str:
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None:
        try:
            return mlflow_client.create_experiment(
                name, artifact_location=artifact_location(mlflow_client.tracking_uri, name), tags=EXPERIMENT_KIND)
        except Exception:  # created concurrently by another process
            exp = mlflow_client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(exp.experiment_id)
    if exp.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
        for k, v in EXPERIMENT_KIND.items():
            mlflow_client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def git_commit() -> str:
    """The commit of the emoe checkout that runs (``unknown`` outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class TrialRun:
    """One MLflow run of a trial: params up front, metrics as they are reported, an outcome at the end."""

    def __init__(self, mlflow_client, experiment_id: str, name: str, tags: dict[str, str] | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None):
        self.client = mlflow_client
        all_tags = {ROLE: "trial", **(tags or {})}
        if parent_run_id:
            all_tags[PARENT] = parent_run_id
        if run_id is None:
            run = mlflow_client.create_run(experiment_id, run_name=name, tags=all_tags)
            run_id = run.info.run_id
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, param_value(v)) for k, v in sorted(params.items()) if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = timestamp_ms or int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if isinstance(v, (int, float))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_dict(self, obj: Any, name: str) -> None:
        self.client.log_text(self.run_id, redact(json.dumps(obj, indent=2, sort_keys=True, default=str)), name)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, redact(str(value))[:5000])

    def finish(self, outcome: str, error: str | None = None, name: str | None = None) -> None:
        assert outcome in OUTCOMES, outcome
        if name:
            self.client.update_run(self.run_id, name=name)
        self.client.set_tag(self.run_id, OUTCOME, outcome)
        if error:
            self.client.set_tag(self.run_id, ERROR, redact(error)[:5000])
            self.client.log_text(self.run_id, redact(error), "error.txt")
        self.client.set_terminated(self.run_id, status="FAILED" if outcome == "failed" else "FINISHED")


def create_sweep_run(mlflow_client, experiment_id: str, name: str, design: str, factor: str, argv: list[str],
                     ray_dir: str, params: dict[str, Any]) -> str:
    """The parent run of one sweep invocation (tags: role, design, factor, commit, command, Ray directory; params:
    the grid and the shared trial config). Returns its run id."""
    run = mlflow_client.create_run(experiment_id, run_name=name, tags={
        ROLE: "sweep", SWEEP: design, FACTOR: factor, GIT_COMMIT: git_commit(), COMMAND: redact(shlex.join(argv)),
        RAY_DIR: ray_dir})
    TrialRun(mlflow_client, experiment_id, "", run_id=run.info.run_id).log_params(params)
    return run.info.run_id


def record_look(mlflow_client, parent_run_id: str, finished: int, write: bool = True) -> int:
    """Count a look at a sweep's results with ``finished`` trials (the ``emoe.looks`` tag): a new number of finished
    trials is a new look, the same one again is not. Returns how many looks there have been, this one included;
    ``write`` False counts without recording (a report asked not to log)."""
    text = mlflow_client.get_run(parent_run_id).data.tags.get(LOOKS, "")
    seen = [int(x) for x in text.split(",") if x.strip()]
    if finished <= 0:
        return max(1, len(seen))
    if seen and seen[-1] == finished:
        return len(seen)
    if write:
        mlflow_client.set_tag(parent_run_id, LOOKS, ",".join(map(str, seen + [finished])))
    return len(seen) + 1


def open_trial_run(mlflow_client, experiment_id: str, parent_run_id: str, trial_id: str, arm: str | None,
                   name: str, task: str | None = None) -> TrialRun:
    """The child run of ``trial_id`` under ``parent_run_id``: the existing one (a resumed or retried trial continues
    its run), else a new one."""
    found = mlflow_client.search_runs([experiment_id], filter_string=(
        f"tags.`{TRIAL_ID}` = '{trial_id}' and tags.`{PARENT}` = '{parent_run_id}'"), max_results=1)
    if found:
        return TrialRun(mlflow_client, experiment_id, name, run_id=found[0].info.run_id)
    return TrialRun(mlflow_client, experiment_id, name, parent_run_id=parent_run_id,
                    tags={ARM: str(arm), TRIAL_ID: trial_id, **({TASK: task} if task else {})})


def close_runs(mlflow_client, experiment_id: str, parent_run_id: str, all_done: bool) -> None:
    """Leave no run RUNNING: unfinished child runs become KILLED (a resume continues them); the parent FINISHED
    when every trial ended, else KILLED."""
    children = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_run_id}'",
                                         max_results=50000)
    for run in children:
        if run.info.status in ("RUNNING", "SCHEDULED"):
            mlflow_client.set_terminated(run.info.run_id, status="KILLED")
    mlflow_client.set_terminated(parent_run_id, status="FINISHED" if all_done else "KILLED")


def retire_trial_run(mlflow_client, experiment_id: str, parent_run_id: str, trial_id: str) -> None:
    """Move the child run of a cell that no trial will continue to MLflow's trash, tagged with why (``mlflow gc``
    purges it; ``restore_run`` brings it back)."""
    for run in mlflow_client.search_runs([experiment_id], filter_string=(
            f"tags.`{TRIAL_ID}` = '{trial_id}' and tags.`{PARENT}` = '{parent_run_id}'")):
        mlflow_client.set_tag(run.info.run_id, RETIRED, "lost with the driver before Tune saved its state")
        if run.info.status in ("RUNNING", "SCHEDULED"):
            mlflow_client.set_terminated(run.info.run_id, status="KILLED")
        mlflow_client.delete_run(run.info.run_id)


def log_sweep_results(mlflow_client, parent_run_id: str, chosen, table: str) -> None:
    """The sweep's results on its parent run, so the runs table shows them on the parent's row: per arm (and task,
    with several), the selected trials' mean, standard deviation and count of each score, as metrics
    ``<arm>.<score>``, ``<arm>.<score>.std``, ``<arm>.seeds`` (``<task>.<arm>...`` with several tasks), and the
    closing table as the artifact ``results.txt``; and the same table in Markdown as the run's description
    (``mlflow.note.content``), which the MLflow UI renders on the run's overview page, so the parent run's link
    (``schema.run_url``) opens on every arm's scores. ``chosen``: the rows ``emoe.analysis.selection.select``
    chose."""
    from mlflow.entities import Metric

    if chosen is None or chosen.empty:
        return
    now, metrics = int(time.time() * 1000), []
    several = chosen["task"].nunique() > 1
    for (task, arm), group in chosen.groupby(["task", "arm"], sort=False):
        prefix = f"{task}.{arm}" if several else str(arm)
        metrics.append(Metric(f"{prefix}.seeds", float(len(group)), now, 0))
        for score in (ID_SCORE, OOD_SCORE):
            values = group[score].dropna() if score in group else []
            if len(values):
                metrics.append(Metric(f"{prefix}.{score}", float(values.mean()), now, 0))
                if len(values) > 1:
                    metrics.append(Metric(f"{prefix}.{score}.std", float(values.std(ddof=1)), now, 0))
    for i in range(0, len(metrics), 500):
        mlflow_client.log_batch(parent_run_id, metrics=metrics[i:i + 500])
    mlflow_client.log_text(parent_run_id, table + "\n", "results.txt")
    mlflow_client.set_tag(parent_run_id, NOTE, results_markdown(chosen))


NOTE = "mlflow.note.content"  # a run's description: Markdown, rendered on its overview page


def results_markdown(chosen) -> str:
    """The results as a Markdown table with one column per arm (what the MLflow UI shows of a run's description
    before its "Show more" is three or four rows, so the arms go across): each score's mean +- std over the chosen
    seeds (with several tasks, first the mean over tasks of each task's mean, then each task's row), and the seeds
    and learning rate; then a line on what was chosen and how."""
    def cell(values) -> str:
        values = values.dropna()
        if not len(values):
            return "n/a"
        return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"

    arms = list(dict.fromkeys(chosen["arm"]))
    tasks = list(dict.fromkeys(chosen["task"]))
    lines = ["| | " + " | ".join(map(str, arms)) + " |", "|---" * (len(arms) + 1) + "|"]
    scores = [s for s in (ID_SCORE, OOD_SCORE) if s in chosen]
    if len(tasks) > 1:
        means = chosen.groupby(["task", "arm"], sort=False)[scores].mean()
        for score in scores:
            row = [f"{means[score].xs(arm, level='arm').mean():.4f}" if arm in means.index.get_level_values("arm")
                   else "n/a" for arm in arms]
            lines.append(f"| **{score}** (mean over {len(tasks)} tasks) | " + " | ".join(row) + " |")
    for task in tasks:
        rows = chosen[chosen["task"] == task]
        for score in scores:
            row = [cell(rows.loc[rows["arm"] == arm, score]) for arm in arms]
            lines.append(f"| {task} {score} | " + " | ".join(row) + " |")
        setting = [(f"{len(g)} seed(s), lr {g['learning_rate'].iloc[0]:.2g}" if len(g) else "n/a")
                   for g in (rows[rows["arm"] == arm] for arm in arms)]
        lines.append(f"| {task} seeds, lr | " + " | ".join(setting) + " |")
    lines += ["", f"Per arm, the learning rate with the best mean {ID_SCORE} over seeds; mean ± std over its seeds. "
              "The report: `analysis/report.html` among the artifacts."]
    return "\n".join(lines) + "\n"
