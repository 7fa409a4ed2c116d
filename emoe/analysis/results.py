"""MLflow -> one DataFrame of trial runs (one row per trial). Knows MLflow; nothing below it does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emoe.tracking import schema as tracking

def _param_columns() -> tuple[str, ...]:
    """Every trial knob (``emoe.hparams.KNOBS``): each is an MLflow param of every trial run."""
    from emoe import hparams

    return tuple(hparams.KNOBS) + ("ood",)


# Knobs that legitimately differ between pooled sweeps: more seeds, more rates, more tasks.
POOLABLE = ("seed", "learning_rate", "task")


def load_trials(tracking_uri: str, experiment: str, parent_run_id: str | None = None,
                pool: bool = False) -> tuple[pd.DataFrame, dict]:
    """The trial runs of one sweep of ``experiment`` (the latest, or ``parent_run_id``), or of all its sweeps with
    ``pool``, and the tags of that (latest) sweep run.

    Pooling is refused (``ValueError`` naming the knob) when a knob that is not a swept factor, a seed, a learning
    rate or a task differs between the sweeps for the same arm: such sweeps measure different things. Every trial
    knob is loaded as a column. ``mlflow.search_runs`` pages through the store itself, so experiments of thousands of
    runs are read whole.

    Returns:
        ``(trials, sweep)``: trials has columns ``run_id, parent_run_id, arm, outcome, status`` + every trial knob
        (seed, learning_rate as numbers) + every metric (``id_score``, ``id.<metric>``, ``ood_score``, ``ood_score.<set>``, ...);
        sweep holds ``run_id`` and the tags of the latest sweep (parent) run, or is empty.
    """
    import mlflow

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise ValueError(f"no MLflow store at {tracking_uri} (run a sweep first, or pass --tracking-uri)")
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in mlflow.search_experiments() if e.name.startswith("emoe-"))
        raise ValueError(f"no MLflow experiment {experiment!r} in {tracking_uri}; its emoe experiments: "
                         f"{', '.join(names) or 'none'}")
    runs = mlflow.search_runs([exp.experiment_id], max_results=1_000_000, output_format="pandas")
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "arm", "outcome"]), {}
    tag = lambda name: runs.get(f"tags.{name}", pd.Series([None] * len(runs), index=runs.index))  # noqa: E731
    roles = tag(tracking.ROLE)
    parents = runs[roles == "sweep"].sort_values("start_time")
    sweep = {}
    if parent_run_id is not None:
        parents = parents[parents["run_id"] == parent_run_id]
        if parents.empty:
            raise ValueError(f"no sweep run {parent_run_id!r} in experiment {experiment!r}")
    elif not pool and len(parents):
        parent_run_id = parents.iloc[-1]["run_id"]  # one sweep by default: the latest
    if len(parents):
        last = parents.iloc[-1]
        sweep = {"run_id": last["run_id"], **{c[len("tags."):]: last[c] for c in parents.columns
                                              if c.startswith("tags.") and isinstance(last[c], str)}}
        if isinstance(last.get("params.arms"), str):
            sweep["arms"] = last["params.arms"].split(",")
        declared = {f: last.get(f"params.{tracking.PRIMARY_PREFIX}{f}") for f in tracking.PRIMARY_FIELDS}
        if isinstance(declared["metric"], str):
            sweep["primary"] = declared
    trials = runs[roles == "trial"].sort_values("start_time")
    if parent_run_id is not None:
        trials = trials[tag(tracking.PARENT)[trials.index] == parent_run_id]
    out = pd.DataFrame({"run_id": trials["run_id"], "parent_run_id": tag(tracking.PARENT)[trials.index],
                        "arm": tag(tracking.ARM)[trials.index], "outcome": tag(tracking.OUTCOME)[trials.index],
                        "status": trials["status"]})
    columns = {p: trials.get(f"params.{p}") for p in _param_columns()}
    columns.update({c[len("metrics."):]: trials[c].astype(float) for c in trials.columns if c.startswith("metrics.")})
    out = pd.concat([out, pd.DataFrame(columns, index=out.index)], axis=1)  # at once: one column at a time fragments
    if pool:
        check_poolable(out, runs[roles == "sweep"])
    return _typed(out, sweep.get("arms", [])), sweep


def _typed(out: pd.DataFrame, arms: list) -> pd.DataFrame:
    """The frame as the analysis reads it, from MLflow or from the records alike: the numeric knobs as numbers, a
    trial that never ended (killed driver, no resume yet) failed, rows in the sweep's declared arm order."""
    for c in ("seed", "learning_rate", "num_experts", "top_k"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    out["outcome"] = out["outcome"].fillna("failed")
    order = {arm: i for i, arm in enumerate(arms)}
    out = out.sort_values("arm", key=lambda col: col.map(lambda a: order.get(a, len(order))), kind="stable")
    return out.reset_index(drop=True)


def load_records(directory: str | Path) -> tuple[pd.DataFrame, dict]:
    """The trials of the sweep in ``directory`` (and of its extensions) from its records alone, no MLflow: the same
    frame as ``load_trials`` (each knob as its MLflow param would read, metrics of the final or last report), and
    the sweep's tags as far as the records know them (factor, arms, primary analysis)."""
    from emoe.tracking.records import SweepRecord, trial_rows
    from emoe.tracking.runs import param_value

    directory = Path(directory)
    record = SweepRecord.load(directory)
    rows = trial_rows(directory)
    knobs = set(_param_columns())
    frame = pd.DataFrame([{k: (param_value(v) if k in knobs else v) for k, v in r.items()} for r in rows])
    for p in _param_columns():
        if p not in frame:
            frame[p] = None
    if frame.empty:
        frame = pd.DataFrame(columns=["run_id", "arm", "outcome", *_param_columns()])
    sweep = {"run_id": None, tracking.FACTOR: record.factor, tracking.SWEEP: record.design, "arms": list(record.arms),
             "looks": list(record.looks)}
    if record.primary() is not None:  # declared at launch (a sweep from before declarations has none)
        sweep["primary"] = record.primary()
    return _typed(frame, sweep["arms"]), sweep


def primary_of(sweep: dict):
    """The primary analysis a sweep declared at launch (``emoe.analysis.stats.Primary``), or None (a sweep that
    declared none: older emoe)."""
    from emoe.analysis.stats import Primary

    d = sweep.get("primary")
    if not d:
        return None
    none = lambda v: None if v in (None, "", "None", "auto") else v  # noqa: E731
    return Primary(d["metric"], none(d.get("blocks")), none(d.get("baseline")), float(d.get("alpha") or 0.05),
                   int(float(d.get("planned_looks") or 1)))


def load_curves(tracking_uri: str, run_ids, metrics=(tracking.CURRENT_ID_SCORE, tracking.ID_SCORE)) -> pd.DataFrame:
    """The learning curve of each run: one row per (run, step) with ``run_id, step, value``, from the first of
    ``metrics`` the run logged (``current_id_score``: the raw curve under keep_best; else ``id_score``)."""
    from emoe.tracking.runs import client as mlflow_client

    client = mlflow_client(tracking_uri)
    rows = []
    for run_id in run_ids:
        for metric in metrics:
            history = client.get_metric_history(run_id, metric)
            if history:
                rows += [{"run_id": run_id, "step": m.step, "value": m.value} for m in history]
                break
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def record_curves(directory: str | Path, metrics=(tracking.CURRENT_ID_SCORE, tracking.ID_SCORE)) -> pd.DataFrame:
    """``load_curves`` from the records: each trial's reports (``run_id`` = its trial id)."""
    from emoe.tracking.records import sweep_trials

    rows = []
    for files, _ in sweep_trials(directory):
        reports = files.load_reports()
        metric = next((m for m in metrics if any(m in r for r in reports)), None)
        rows += [{"run_id": files.dir.name, "step": r.get(tracking.STEP, 0), "value": r[metric]}
                 for r in reports if metric and metric in r]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def check_poolable(trials: pd.DataFrame, parents: pd.DataFrame) -> None:
    """Refuse pooling sweeps in which a knob that no sweep varies (not a factor, seed, rate or task) differs for
    the same arm."""
    if trials["parent_run_id"].nunique() < 2:
        return
    factors = set(POOLABLE)
    for value in parents.get(f"tags.{tracking.FACTOR}", pd.Series(dtype=object)).dropna():
        factors |= set(str(value).split(","))
    factors |= {"method"}  # the dense arm's knob
    for knob in _param_columns():
        if knob in factors or knob not in trials or trials[knob].isna().all():
            continue
        per = trials.groupby(["arm", "parent_run_id"])[knob].agg(lambda v: tuple(sorted(map(str, v.dropna().unique()))))
        for arm, values in per.groupby(level="arm"):
            if values.nunique() > 1:
                seen = " vs ".join(",".join(v) or "unset" for v in dict.fromkeys(values))
                raise ValueError(f"cannot pool the sweeps: knob {knob!r} differs for arm {arm!r} ({seen}) and is "
                                 "not a swept factor; analyse each sweep alone (--parent RUN_ID)")


def log_report(tracking_uri: str, run_id: str, paths: list, artifact_path: str = "analysis") -> None:
    """Attach the report files to the sweep's parent run, so they show in the MLflow UI."""
    from emoe.tracking.runs import client as mlflow_client

    client = mlflow_client(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)
