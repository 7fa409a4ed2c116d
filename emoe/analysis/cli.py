"""ID and OOD scores per arm, Friedman ranks and significance, from a sweep's MLflow experiment.

    python analysis/friedman.py --experiment emoe-clustering [--tracking-uri sqlite:///mlflow.db] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emoe import tracking
from emoe.analysis import report, results, selection, stats
from emoe.tracking.records import SweepRecord
from emoe.usage import Parser, prog


def add_sweep_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The flags that name a sweep in an MLflow store: ``--experiment``, ``--tracking-uri``, ``--parent``."""
    p.add_argument("--experiment", required=required, help="MLflow experiment of a sweep, e.g. emoe-clustering")
    p.add_argument("--tracking-uri", default=tracking.DEFAULT_TRACKING_URI,
                   help=f"MLflow store (default: {tracking.DEFAULT_TRACKING_URI})")
    p.add_argument("--parent", help="the sweep (its parent run id; default: the experiment's latest sweep)")


def loo_curves(args, used):
    """Every used run's ``ood_score`` and ``loo_score`` per evaluation (the latest evaluation's, ``last.<metric>``,
    under keep_best), as the leave-one-domain-out rule reads them: a DataFrame ``run_id, step, metric, value``."""
    import pandas as pd

    parts = []
    for metric in (tracking.OOD_SCORE, tracking.LOO_SCORE):
        names = (tracking.last_metric(metric), metric)
        part = results.record_curves(args.records, names) if args.records else \
            results.load_curves(args.tracking_uri, used["run_id"], names)
        parts.append(part.assign(metric=metric))
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog=prog("python analysis/friedman.py"), description=__doc__.splitlines()[0])
    add_sweep_arguments(p, required=False)
    p.add_argument("--records", metavar="DIR",
                   help="read the sweep from its records (its directory on the storage path, e.g. "
                        "ray_results/emoe-clustering-20261129-101500) instead of MLflow: the same tables")
    p.add_argument("--pool", action="store_true",
                   help="analyse every sweep of the experiment together; refused when a knob that is not a swept "
                        "factor (or seed, learning rate, task) differs between them")
    p.add_argument("--factor", help="the swept factor, for the title (default: the sweep's emoe.factor tag)")
    p.add_argument("--metric", help=f"metric to rank on (default: the sweep's declared primary metric, else "
                                    f"{tracking.OOD_SCORE}); e.g. {tracking.ID_SCORE}")
    p.add_argument("--blocks", choices=stats.BLOCKINGS,
                   help="tasks: each task, seeds averaged (GLUE-X's rank; the default with several tasks); seeds: "
                        "each task x seed (the default with one task: a task's OOD sets are scored by the same "
                        "models, so they are never blocks)")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--higher-is-better", dest="higher", action="store_true", default=None,
                   help="the metric's direction, for a metric whose direction is not known from its name")
    d.add_argument("--lower-is-better", dest="higher", action="store_false")
    p.add_argument("--baseline", help="baseline arm (default: the declared one, else dense)")
    p.add_argument("--selection", choices=selection.RULES,
                   help="the model-selection rule. Text tasks: oracle (the default: learning rate and epoch chosen on "
                        "the ID validation set that is reported, as the official code; DomainBed's name) or clean "
                        "(chosen on the development split of a sweep run with --dev-samples; the validation set "
                        "becomes a test set); every report shows both and their gap when the sweep has a development "
                        "split. Image tasks (DomainBed's): training_domain (the default), test_domain (its oracle: "
                        "the last evaluation, chosen on the held-out domain's out split) or leave_one_domain_out "
                        "(the sweep ran --tasks DATASET:pairs too)")
    p.add_argument("--rope", type=float, default=0.01,
                   help="half-width of the region of practical equivalence of the Bayesian signed-rank test, in "
                        "the metric's units (default: 0.01)")
    p.add_argument("--alpha", type=float, help="significance level (default: the declared one, else 0.05)")
    p.add_argument("--out", help="output folder (default: reports/<experiment>/)")
    p.add_argument("--no-log", action="store_true", help="do not attach the files to the sweep's MLflow run")
    args = p.parse_args(argv)
    try:
        if not args.experiment and not args.records:
            raise ValueError("name the sweep: --experiment NAME (MLflow) or --records DIR (its records)")
        if args.records:
            trials, sweep = results.load_records(args.records)
            args.experiment = args.experiment or SweepRecord.load(args.records).experiment
        else:
            tracking.check_tracking_uri(args.tracking_uri)
            trials, sweep = results.load_trials(args.tracking_uri, args.experiment, args.parent, pool=args.pool)
        stats.check_finished(trials, f"sweep records {args.records}" if args.records
                             else f"experiment {args.experiment}")
        primary = results.primary_of(sweep) if not args.pool else None
        finished = int(trials["outcome"].isin(("completed", "early_stopped")).sum()) if len(trials) else 0
        counted = bool(sweep.get("run_id")) and not args.pool  # pooled sweeps: no one sweep's look
        looks = tracking.record_look(tracking.client(args.tracking_uri), sweep["run_id"], finished,
                                     write=False) if counted else records_looks(sweep, finished)
        # every used trial's raw ID curve: the figure draws the chosen ones; with --keep-best, the selection's
        # inflation reads held-out seeds at the evaluation the other seeds peak at
        used = trials[trials["outcome"].isin(("completed", "early_stopped"))] if len(trials) else trials
        kept = "keep_best" in used and used["keep_best"].astype(str).str.lower().eq("true").any()
        curves = (results.load_curves(args.tracking_uri, used["run_id"]) if not args.records
                  else results.record_curves(args.records)) if kept and "run_id" in used else None
        rule = args.selection or selection.default_rule(trials)
        analysis = stats.analyse(trials, metric=args.metric, blocks=args.blocks, baseline=args.baseline,
                                 alpha=args.alpha, higher=args.higher, rope=args.rope, primary=primary, looks=looks,
                                 curves=curves, arms=sweep.get("arms"), rule=rule,
                                 loo_curves=loo_curves(args, used) if rule == "leave_one_domain_out" else None,
                                 exploratory="several sweeps pooled (--pool): each declared its own primary analysis"
                                 if args.pool else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    factor = args.factor or sweep.get(tracking.FACTOR, "arm")
    title = f"{args.experiment}: {factor} ablation"
    print(title)
    print(report.console(analysis))
    if counted and not args.no_log:  # shown: a look (recorded only now, so a refused request is none)
        tracking.record_look(tracking.client(args.tracking_uri), sweep["run_id"], finished)
    out = Path(args.out or Path("reports") / args.experiment)
    if curves is None and "run_id" in analysis.chosen:  # the figure's curves: the chosen trials only
        curves = results.record_curves(args.records) if args.records else \
            results.load_curves(args.tracking_uri, analysis.chosen["run_id"])
    paths = report.write_files(analysis, out, title, curves)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    if sweep.get("run_id") and not args.no_log:
        results.log_report(args.tracking_uri, sweep["run_id"], paths)
        print(f"logged to MLflow run {sweep['run_id']} (artifacts/analysis)")
    return 0


def records_looks(sweep: dict, finished: int) -> int:
    """The looks the records know (``SweepRecord.looks``), this report one more if it sees new results."""
    seen = sweep.get("looks") or []
    return max(1, len(seen) if seen and seen[-1] == finished else len(seen) + 1)
