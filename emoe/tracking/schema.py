"""The MLflow schema in one place: every tag, param and metric name, run names, the UI link, and the predicate that
says a trial finished. Sweeps, backfill, the one-trial CLI and the analysis all read their names from here."""

from __future__ import annotations

import urllib.parse
from typing import Any

__all__ = ["DEFAULT_TRACKING_URI", "ROLE", "PARENT", "SWEEP", "FACTOR", "GIT_COMMIT", "COMMAND", "RAY_DIR",
           "BACKFILLED", "EXTENDED", "ARM", "TRIAL_ID", "RETIRED", "MODEL", "OUTCOME", "ERROR", "RESTARTS", "RESTART_ERROR", "PLACEMENT", "OUTCOMES",
           "EXPERIMENT_KIND", "TRAIN_LOSS", "ID_SCORE", "OOD_SCORE", "EPOCH", "STEP", "LOAD_ENTROPY", "ACTIVE_NEURONS",
           "FFN_FLOPS", "EXPERT_STABILITY", "block_metric", "METRIC_PREFIXES",
           "BEST_STEP", "CURRENT_ID_SCORE", "PATIENCE_STOP", "DEV_SCORE", "CLEAN_PREFIX", "ORACLE_SCORE", "LOO_SCORE", "LAST_PREFIX", "last_metric", "WALL_TIME", "ACCELERATOR_TIME",
           "TRAINABLE_PARAMS", "dev_metric", "clean_metric", "TASK", "RESUMED", "RESUMED_FROM", "SWEEP_PARAMS",
           "SCORING_VERSION_PARAM", "sweep_params", "LOOKS", "PRIMARY_FIELDS", "PRIMARY_PREFIX", "DIRECTIONS",
           "direction", "SCHEDULED", "scheduled",
           "id_metric", "ood_metric", "ood_score_metric", "ood_score_set", "load_entropy_metric", "trial_metrics", "finished", "outcome", "experiment_name",
           "trial_run_name", "rate_text", "runs_url", "run_url"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Tags of every run.
ROLE = "emoe.role"  # sweep (the parent run of one invocation) | trial (a child run)
PARENT = "mlflow.parentRunId"
# Tags of a sweep's parent run.
SWEEP, FACTOR = "emoe.sweep", "emoe.factor"  # the design's name and its swept factor(s)
GIT_COMMIT, COMMAND, RAY_DIR = "emoe.git_commit", "emoe.command", "emoe.ray_dir"
BACKFILLED = "emoe.backfilled"
EXTENDED = "emoe.extended"  # the directory of the latest extension (--extend) of a sweep
# The looks at a sweep's results: the number of finished trials each time results were shown (the sweep's closing
# table, a report), comma-separated; the same number again is the same look.
LOOKS = "emoe.looks"
# Params of a sweep's parent run: its one primary analysis, declared at launch (emoe.analysis.stats.Primary), as
# primary.metric, primary.blocks, primary.baseline, primary.alpha, primary.planned_looks.
PRIMARY_PREFIX = "primary."
PRIMARY_FIELDS = ("metric", "blocks", "baseline", "alpha", "planned_looks")
# Tags of a trial run.
ARM, TRIAL_ID, OUTCOME, ERROR = "emoe.arm", "emoe.trial_id", "emoe.outcome", "emoe.error"
RESTARTS = "emoe.restarts"  # times a trial was retried after a failure (--max-failures)
RESTART_ERROR = "emoe.restarts.last_error"
PLACEMENT = "emoe.placement"  # where the trial (last) ran: node address and id, process, GPUs
MODEL = "emoe.model"  # where the trial's kept best-ID model is (emoe.convert.load_converted reads it)
RESUMED = "emoe.resumed_from"  # the step(s) of the checkpoint(s) a trial continued from after a restart
RESUMED_FROM = "resumed_from"  # a result field (not logged as a metric): the step of that attempt's checkpoint
RETIRED = "emoe.retired"  # why a trial's run was moved to the trash (its trial was lost and rerun)
OUTCOMES = ("completed", "early_stopped", "failed")
# Experiment tag: the MLflow 3 UI opens an experiment on its training runs, not on the GenAI overview.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

TASK = "emoe.task"  # a trial's ID task (also its ``task`` param)
# Params of a trial run besides its flat config (every knob): the sweep settings that decide how it ran, as
# ``sweep.<setting>`` (e.g. ``sweep.scheduler``: whether ASHA could stop it), and ``sweep.scoring_version`` (the
# emoe scoring its sweep started with: emoe.tracking.records.SCORING_VERSION).
SWEEP_PARAMS = ("preset", "scheduler", "early_stop_scope", "search")
SCORING_VERSION_PARAM = "sweep.scoring_version"


def sweep_params(settings: dict[str, Any], scoring_version: int) -> dict[str, Any]:
    """The ``sweep.<setting>`` params of a trial run, from its sweep's settings (``SweepSettings.to_dict()``)."""
    return {**{f"sweep.{k}": settings.get(k) if settings.get(k) is not None else "" for k in SWEEP_PARAMS},
            SCORING_VERSION_PARAM: scoring_version}

# Metric names shared by Tune results, MLflow and analysis (logged with step = optimiser step).
# id_score: the task's primary score (the mean of its GLUE metrics) on ID validation; id.<metric>: each metric;
# ood_score.<set>: the primary score on an OOD set; ood.<set>.<metric>; ood_score: the mean over the task's OOD sets.
TRAIN_LOSS, ID_SCORE, OOD_SCORE, EPOCH, STEP = "train_loss", "id_score", "ood_score", "epoch", "step"
LOAD_ENTROPY = "load_entropy"
# per converted block, on ID validation: the neurons a token keeps (mean), and the FFN's FLOPs per token that a sparse
# execution of the kept experts needs, the router's included
ACTIVE_NEURONS, FFN_FLOPS = "active_neurons", "ffn_flops"
# per converted block: the mean Jaccard index of each ID token's experts between this evaluation and the previous one
EXPERT_STABILITY = "expert_stability"
# With keep_best: the step of the best ID evaluation, and the latest evaluation's own ID score (the learning curve).
BEST_STEP, CURRENT_ID_SCORE = "best_step", "current_id_score"
PATIENCE_STOP = "patience_stop"  # 1 in the last report of a trial that patience stopped (the protocol's end)
# The clean selection rule's (``dev_samples`` > 0): dev_score, the task's primary score on a development split carved
# from the training set (dev.<metric>: each metric), at each evaluation; with keep_best, clean.<metric>: every score of
# the evaluation with the best dev_score (the epoch the clean rule chooses), beside the oracle's (best id_score).
DEV_SCORE, CLEAN_PREFIX = "dev_score", "clean."
# An image task's (emoe.vision): the held-out domain's out-split accuracy, what DomainBed's oracle selection reads;
# with keep_best, last.<metric>: every score of the latest evaluation (DomainBed's oracle takes the last checkpoint).
ORACLE_SCORE, LAST_PREFIX = "oracle_score", "last."
# A pair run's (two held-out domains): its second domain's in-split accuracy, what leave-one-domain-out averages.
LOO_SCORE = "loo_score"
# Compute: seconds the trial has trained and evaluated (over its attempts), its accelerator-seconds (wall time x the
# share of a GPU it holds; on a GPU only), and its trainable parameters.
WALL_TIME, ACCELERATOR_TIME, TRAINABLE_PARAMS = "wall_time", "accelerator_time", "trainable_params"
METRIC_PREFIXES = (TRAIN_LOSS, ID_SCORE, "id.", OOD_SCORE, "ood.", EPOCH, STEP, LOAD_ENTROPY, ACTIVE_NEURONS,
                   FFN_FLOPS, EXPERT_STABILITY, BEST_STEP, CURRENT_ID_SCORE, PATIENCE_STOP, DEV_SCORE, "dev.",
                   CLEAN_PREFIX, ORACLE_SCORE, LOO_SCORE, LAST_PREFIX, WALL_TIME, ACCELERATOR_TIME, TRAINABLE_PARAMS)
# What Tune is sent of each report: what it schedules on (ASHA's time and metric, the searcher's metric, the
# protocol's end). Every other metric goes to the trial's records (``reports.jsonl``), which the driver's MLflow
# callback and ``emoe sync`` read: Tune keeps running statistics of every number a trial reports, for every trial.
SCHEDULED = (ID_SCORE, EPOCH, STEP, PATIENCE_STOP)


def scheduled(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of a report that Tune is sent (``SCHEDULED``)."""
    return {k: metrics[k] for k in SCHEDULED if k in metrics}


# Each metric's direction, declared with it ("max": higher is better; "min": lower is better; the rest are no
# score): every GLUE metric (accuracy, F1, Matthews, Pearson, Spearman) is higher-is-better. A name matches its own
# entry or an entry followed by "." (id_score.x, ood_score.<set>, ood.<set>.<metric>, load_entropy.block<b>).
DIRECTIONS = {ORACLE_SCORE: "max", LOO_SCORE: "max", ID_SCORE: "max", "id": "max", OOD_SCORE: "max", "ood": "max", CURRENT_ID_SCORE: "max",
              DEV_SCORE: "max", "dev": "max",
              LOAD_ENTROPY: "max", TRAIN_LOSS: "min"}


def direction(metric: str) -> str | None:
    """``"max"`` or ``"min"`` for a metric of the schema (``DIRECTIONS``), None for a name it does not declare."""
    for name, way in DIRECTIONS.items():
        if metric == name or metric.startswith(name + "."):
            return way
    return None


def id_metric(metric: str) -> str:
    return f"id.{metric}"


def dev_metric(metric: str) -> str:
    return f"dev.{metric}"


def last_metric(metric: str) -> str:
    """A score of the latest evaluation, beside the kept (best) one: ``last.<metric>``."""
    return f"{LAST_PREFIX}{metric}"


def clean_metric(metric: str) -> str:
    """A score at the evaluation the clean rule chooses (best ``dev_score``): ``clean.<metric>``."""
    return f"{CLEAN_PREFIX}{metric}"


def ood_score_metric(name: str) -> str:
    return f"{OOD_SCORE}.{name}"


def ood_metric(name: str, metric: str) -> str:
    return f"ood.{name}.{metric}"


def ood_score_set(column: str) -> str | None:
    """The OOD set of an ``ood_score.<set>`` column (None for any other name)."""
    return column[len(OOD_SCORE) + 1:] if column.startswith(OOD_SCORE + ".") else None


def load_entropy_metric(block: int) -> str:
    return f"{LOAD_ENTROPY}.block{block}"


def block_metric(name: str, block: int) -> str:
    """A per-block diagnostic's name: ``<name>.block<b>`` (load_entropy, active_neurons, ffn_flops)."""
    return f"{name}.block{block}"


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The schema's metrics in a Tune result (Tune's own fields and non-numbers left out)."""
    return {k: v for k, v in result.items()
            if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def finished(metrics: dict[str, Any] | None, epochs: float, max_steps: int | None = None) -> bool:
    """Whether the metrics are those of a trial that ran its protocol to the end: all its ``epochs`` (its
    ``max_steps``, when it trains by steps), or until its ``patience`` ran out (not stopped by a scheduler, not cut
    off)."""
    done = float(metrics.get(STEP, 0.0)) >= max_steps if metrics and max_steps else \
        bool(metrics) and float(metrics.get(EPOCH, 0.0)) >= float(epochs) - 1e-9
    return bool(metrics) and (done or bool(metrics.get(PATIENCE_STOP)))


def outcome(metrics: dict[str, Any] | None, epochs: float, error: bool = False, max_steps: int | None = None) -> str:
    """One of ``OUTCOMES`` for a trial that ended: failed, else completed if it finished, else early_stopped."""
    return "failed" if error else ("completed" if finished(metrics, epochs, max_steps) else "early_stopped")


def experiment_name(design: str) -> str:
    return f"emoe-{design}"


def rate_text(rate: float) -> str:
    """A learning rate as run names and console lines show it: scientific, without trailing zeros (``1e-03``,
    ``2.25e-05``), so that no two rates of a grid print alike."""
    mantissa, exponent = f"{float(rate):.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def trial_run_name(arm: str, config: dict[str, Any], outcome: str | None = None,
                   metrics: dict[str, float] | None = None) -> str:
    """What the MLflow UI shows in its default table and chart legends, most telling first (legends truncate):
    task, arm, seed, learning rate; at the end outcome and scores."""
    name = f"{config.get('task', '')} {arm} s{config.get('seed')} lr{rate_text(config.get('learning_rate', 0))}"
    if outcome:
        name += f" | {outcome}"
    m = metrics or {}
    if ID_SCORE in m:
        name += f" | id {m[ID_SCORE]:.4f}"
    if isinstance(m.get(OOD_SCORE), float) and m[OOD_SCORE] == m[OOD_SCORE]:
        name += f" ood {m[OOD_SCORE]:.4f}"
    return name


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of one run: for a sweep's parent run, its overview opens on the results table (its
    description) above the per-arm metrics."""
    return f"{ui.rstrip('/')}/#/experiments/{urllib.parse.quote(str(experiment_id))}/runs/{run_id}"


def runs_url(ui: str, experiment_id: str, trials: bool = True) -> str:
    """The MLflow UI page of an experiment's runs table; ``trials``: its trial runs only, flat (not folded under
    their parent runs) and sorted by name (task, arm, seed, rate: an arm's runs together, each name ending in its
    outcome and scores), through the filter and order the runs page reads from its URL.

    NOTE: MLflow 3's experiment list opens an experiment on its GenAI overview (its GenAI / model-training toggle
    lives in the browser's local storage and defaults to GenAI); this route lands on the runs table directly.
    """
    url = f"{ui.rstrip('/')}/#/experiments/{urllib.parse.quote(str(experiment_id))}/runs"
    if trials:
        url += "?" + urllib.parse.urlencode({"searchFilter": f"tags.`{ROLE}` = 'trial'",
                                             "orderByKey": "attributes.run_name", "orderByAsc": "true"},
                                            quote_via=urllib.parse.quote)
    return url
