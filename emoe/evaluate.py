"""Re-evaluate a sweep's kept models on new OOD sets, without retraining; the scores land in the same trial runs.

    python -m emoe.evaluate --experiment emoe-clustering --ood reviews=reviews.csv [--parent RUN_ID]
    python -m emoe.evaluate --experiment emoe-clustering --ood-sets flipkart --data-dir DIR

Every finished (completed or early-stopped) trial run of the sweep (the latest, or ``--parent``) whose kept model
(``--keep-model best``, tag ``emoe.model``) is readable is evaluated on each named set, as its training evaluated
OOD sets (its ``ood_protocol``: metrics, splits, max length, batch; its evaluation order), and gets
``ood_score.<set>`` and ``ood.<set>.<metric>`` logged at its last step. A run that already holds a set's score is
skipped, so running it twice adds nothing; so is a run of an older emoe, whose sets were scored otherwise. The
analysis then reads the new sets as any other OOD set (``--metric ood_score.<set>``); ``ood_score``, the
aggregate of the sets evaluated in training, is left as it was.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from emoe import hparams, tracking
from emoe.usage import Parser, prog

log = logging.getLogger(__name__)


def trial_config_of(params: dict[str, str]) -> dict:
    """A trial run's flat config from its MLflow params (``emoe.hparams.config_from_params``: each knob parsed by
    its own type, the inverse of how it was logged)."""
    return hparams.config_from_params(params)


def evaluate_runs(tracking_uri: str, experiment: str, ood: dict[str, str], ood_sets: list[str] | None = None,
                  data_dir: str | None = None, parent_run_id: str | None = None,
                  max_eval_samples: int | None = None) -> dict[str, int]:
    """Evaluate every kept model of the sweep on the sets; returns counts (``evaluated``, ``skipped``, ``no_model``)."""
    import torch

    from emoe.analysis.results import load_trials
    from emoe.convert import load_converted, resolve_model
    from emoe.data import get_task, load_task
    from emoe.train import _autocast, evaluate, evaluation_loaders, score_metrics

    names = list(ood) + list(ood_sets or [])
    if not names:
        raise ValueError("name the sets to evaluate: --ood NAME=FILE (repeatable) or --ood-sets NAME,...")
    trials, _ = load_trials(tracking_uri, experiment, parent_run_id)
    client = tracking.client(tracking_uri)
    counts = {"evaluated": 0, "skipped": 0, "no_model": 0, "older": 0}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # early-stopped trials too: the analysis uses them, and each kept its best model so far when it was stopped
    for run_id in trials.loc[trials["outcome"].isin(("completed", "early_stopped")), "run_id"]:
        run = client.get_run(run_id)
        model_dir = run.data.tags.get(tracking.MODEL)
        if not model_dir or not Path(model_dir).is_dir():
            counts["no_model"] += 1
            continue
        # a run of an older emoe scored its OOD sets otherwise (a plain mean of the ID metrics at its max length):
        # sets added now under today's protocol would not be comparable with its others
        if "ood_protocol" not in run.data.params or run.data.params.get(tracking.SCORING_VERSION_PARAM) == "1":
            counts["older"] += 1
            continue
        todo = [n for n in names if tracking.ood_score_metric(n) not in run.data.metrics]
        if not todo:
            counts["skipped"] += 1
            continue
        cfg = trial_config_of(run.data.params)
        if get_task(cfg["task"]).image:  # its sets are its held-out domain, evaluated in the trial
            raise ValueError(f"task {cfg['task']} is an image task: its OOD set is its held-out domain, scored in the "
                             "trial; re-evaluation on new sets is for text tasks")
        builtin = [n for n in todo if n not in ood]
        data = load_task(cfg["task"], data_dir if data_dir is not None else cfg["data_dir"],
                         {n: p for n, p in ood.items() if n in todo}, max_train_samples=1,
                         max_eval_samples=max_eval_samples or cfg["max_eval_samples"], ood_sets=builtin,
                         ood_protocol=cfg["ood_protocol"])
        from transformers import AutoTokenizer

        from emoe.hub import cache_only

        path = resolve_model(cfg["model"])
        with cache_only(path):
            tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = load_converted(model_dir).to(device)
        loaders, _ = evaluation_loaders({"id": data.validation, **{n: data.ood[n] for n in todo}}, tokenizer,
                                        data.task, cfg, model.config)
        autocast, _ = _autocast(device, cfg["precision"])
        per_set, _ = evaluate(model, loaders, device, autocast, data.task, ood_protocol=cfg["ood_protocol"])
        wanted = {tracking.ood_score_metric(n) for n in todo}
        scores = {k: v for k, v in score_metrics(per_set, data.sizes(), cfg["ood_protocol"]).items()
                  if k in wanted or any(k.startswith(f"ood.{n}.") for n in todo)}
        step = int(run.data.metrics.get(tracking.STEP, 0))
        tracking.TrialRun(client, run.info.experiment_id, "", run_id=run_id).log_metrics(scores, step)
        log.info("%s: %s", run.data.tags.get(tracking.ARM), " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
        counts["evaluated"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    from emoe.analysis.cli import add_sweep_arguments
    from emoe.train import parse_ood

    p = Parser(prog=prog("python -m emoe.evaluate"), description=__doc__.splitlines()[0])
    add_sweep_arguments(p)
    p.add_argument("--ood", action="append", metavar="NAME=FILE", help="a new OOD set (csv, tsv, json lines, "
                   "parquet with the task's fields); a built-in set's name takes that set's mapping; repeatable")
    p.add_argument("--ood-sets", help="built-in OOD sets of the task to evaluate, comma-separated")
    p.add_argument("--data-dir", help="where the built-in sets are (default: the trial's own --data-dir)")
    p.add_argument("--max-eval-samples", type=int, help="cap on each set (default: the trial's own)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        tracking.check_tracking_uri(args.tracking_uri)
        counts = evaluate_runs(args.tracking_uri, args.experiment, parse_ood(args.ood),
                               [s for s in (args.ood_sets or "").split(",") if s], args.data_dir, args.parent,
                               args.max_eval_samples)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"evaluated {counts['evaluated']} kept model(s); {counts['skipped']} already had every set; "
          f"{counts['no_model']} finished trial(s) without a kept model"
          + (f"; {counts['older']} trial(s) of an older emoe skipped (their OOD sets were scored otherwise)"
             if counts["older"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
