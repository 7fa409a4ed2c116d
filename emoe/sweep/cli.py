"""The sweep scripts' command line: flags (defaults shown as the chosen preset sets them), the dry run, and what a
finished sweep prints (the per-arm table under the one selection rule, the MLflow UI link). Exit codes: 0 done,
1 every trial failed, 2 bad input (one ``error:`` line, before Ray starts and before anything is logged)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

from emoe import hparams
from emoe.data import GLUE
from emoe.sweep.design import PRESETS, Ablation
from emoe.sweep.plan import SCHEDULERS, SCOPES, SEARCHES, SweepSettings
from emoe.tracking import schema
from emoe.tracking.records import SweepRecord
from emoe.usage import Parser

# Flags of the sweep itself (not trial knobs): name -> SweepSettings field.
_SWEEP_FLAGS = ("seeds", "learning_rates", "lr_range", "search", "num_samples", "scheduler", "early_stop_scope",
                "grace_period", "reduction_factor", "address", "num_gpus", "gpus_per_trial", "cpus_per_trial",
                "max_concurrent", "max_failures", "storage_path", "tracking_uri", "experiment", "tasks",
                "checkpoint_every", "primary_metric", "primary_blocks", "baseline", "alpha", "planned_looks",
                "verbose")


def _numbers(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            name = "integers" if kind is int else "numbers"
            raise argparse.ArgumentTypeError(f"expected comma-separated {name}, got {text!r}") from None

    return parse


def _optional_int(text: str) -> int | None:
    if text.lower() in ("none", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or none, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _shown(value) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, tuple) \
        else str(value)


def build_parser(design: Ablation, preset: str | None = None) -> argparse.ArgumentParser:
    """The flags of a sweep script; help shows the defaults ``preset`` sets. Swept knobs have no listed flag."""
    d = SweepSettings.from_preset(preset)
    seeds = d.seeds or hparams.KNOBS["seed"].grid
    lrs = d.learning_rates or hparams.KNOBS["learning_rate"].grid
    lr_range = d.lr_range or hparams.KNOBS["learning_rate"].log_range
    p = Parser(prog=Path(sys.argv[0]).name,
                description=f"EMoE ablation '{design.name}': arms {', '.join(design.arms)}; each crossed with seeds "
                            "and learning rates, run as a Ray Tune search, logged to MLflow."
                            + (f" Defaults shown are preset {preset}'s." if preset else ""))
    g = p.add_argument_group("sweep")
    g.add_argument("--preset", choices=list(PRESETS), help="demo: packaged MiniLM and data, a few minutes on a CPU; "
                   "paper: the official EMoE command (bert-base-cased, data from the Hub); glue-small: a multi-task "
                   "sweep on the packaged MiniLM and data, about an hour on a CPU; vision-demo: a tiny ViT on "
                   "rotated digits, leave-one-domain-out, offline; paper-vit-s, paper-vit-b: the official vision "
                   "commands (DeiT on DomainBed). Explicit flags override it; "
                   "--preset NAME --help shows its defaults")
    g.add_argument("--seeds", type=_numbers(int), help=f"comma-separated seeds (default: {_shown(seeds)})")
    g.add_argument("--learning-rates", type=_numbers(float), help=f"comma-separated grid (default: {_shown(lrs)})")
    g.add_argument("--search", choices=SEARCHES,
                   help=f"grid, or optuna: a log-uniform learning rate (--lr-range), --num-samples per arm "
                        f"(default: {d.search})")
    g.add_argument("--num-samples", type=int,
                   help="optuna: trials per arm and task (default: seeds x learning rates)")
    g.add_argument("--lr-range", type=_numbers(float),
                   help=f"optuna: LOW,HIGH of the log-uniform learning rate (default: {_shown(tuple(lr_range))})")
    g.add_argument("--scheduler", choices=SCHEDULERS, help=f"early stopping on {schema.ID_SCORE} (default: {d.scheduler})")
    g.add_argument("--tasks", type=_names, help="ID tasks crossed with the arms, comma-separated, or glue for "
                   f"GLUE-X's eight ({', '.join(GLUE)}), boss for BOSS's three, an image dataset (pacs, vlcs, "
                   "office_home, terra_incognita, rotated_digits) for each of its held-out domains, domainbed for "
                   "the paper's four; overrides --task (default: the one --task)")
    g.add_argument("--early-stop-scope", choices=SCOPES,
                   help="arm: a trial competes only with the learning rates of its own arm and seed; global: with "
                        f"every trial (default: {d.early_stop_scope})")
    g.add_argument("--grace-period", type=float,
                   help="ASHA: epochs before a trial can be stopped (default: half of --epochs)")
    g.add_argument("--reduction-factor", type=float, help=f"ASHA reduction factor (default: {d.reduction_factor:g})")
    g.add_argument("--dry-run", action="store_true",
                   help="print the settings, the trials and a time estimate; run nothing")
    g.add_argument("--verbose", action="store_true", default=None,
                   help="Tune's own status tables as well (default: one line per ended trial and a status line)")
    r = p.add_argument_group("cluster")
    r.add_argument("--address", help="Ray cluster address HOST:PORT (default: start a local Ray)")
    r.add_argument("--num-gpus", type=float, help="local Ray only: GPUs to declare (default: detected); logical "
                   "GPUs work for testing")
    r.add_argument("--gpus-per-trial", type=float,
                   help="GPU share per trial, fractions allowed (default: 1 if the cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-trial", type=float,
                   help=f"CPUs per trial, also its torch threads (default: {d.cpus_per_trial:g})")
    r.add_argument("--max-concurrent", type=int, help="cap on trials running at once (default: as resources allow)")
    r.add_argument("--max-failures", type=int, help=f"retries of a failed trial (default: {d.max_failures})")
    r.add_argument("--checkpoint-every", type=_optional_int, metavar="N", default=argparse.SUPPRESS,
                   help="evaluations between trial checkpoints on the storage path (model, optimiser, RNG and data "
                        "position): a retried or resumed trial continues from its latest; none = no checkpoints "
                        f"(default: {d.checkpoint_every})")
    r.add_argument("--storage-path", help="Ray results; a shared path on a multi-node cluster "
                   f"(default: {d.storage_path})")
    r.add_argument("--resume", nargs="?", const="latest", metavar="DIR",
                   help="continue an interrupted sweep with its own settings (default: the latest of this experiment)")
    r.add_argument("--extend", nargs="?", const="latest", metavar="DIR",
                   help="top up a finished sweep (default: the latest of this experiment) with the cells this "
                        "command's grid adds (seeds, learning rates, arms, tasks) or whose trials failed, under its "
                        "MLflow parent run; every other setting must match; running it again runs nothing")
    t = p.add_argument_group("tracking")
    t.add_argument("--tracking-uri", help=f"MLflow store (default: {d.tracking_uri}; http://host:port for a server)")
    t.add_argument("--experiment", help=f"MLflow experiment (default: {schema.experiment_name(design.name)})")
    a = p.add_argument_group("primary analysis (declared now, stored with the sweep; the report leads with it and "
                             "labels every other analysis exploratory)")
    a.add_argument("--primary-metric", help=f"the metric it compares (default: {d.primary_metric}); e.g. "
                   f"{schema.ID_SCORE}, {schema.OOD_SCORE}.<set>")
    a.add_argument("--primary-blocks", help="tasks (each task, seeds averaged) or seeds (each task x seed) "
                   "(default: tasks with several tasks, seeds with one)")
    a.add_argument("--baseline", help="the arm every other arm is compared with (default: dense)")
    a.add_argument("--alpha", type=float, help=f"its significance level (default: {d.alpha:g})")
    a.add_argument("--planned-looks", type=int,
                   help="how many times the results will be looked at (this run and each --extend); the primary "
                        f"family is tested at alpha / looks at each (default: {d.planned_looks})")
    w = p.add_argument_group("power planning (the dry run prints the power of the grid about to run)")
    w.add_argument("--plan-effect", type=float, default=0.01,
                   help="the difference to detect, in the primary metric's units (default: 0.01, one point)")
    w.add_argument("--plan-sd", metavar="WITHIN[,BETWEEN]",
                   help="stated SDs of an arm's paired difference to the baseline: across seeds within a task, and "
                        "between tasks' true differences (e.g. 0.008,0.004)")
    w.add_argument("--pilot", metavar="DIR",
                   help="a pilot sweep's records directory: each arm's SDs measured there (with 2+ seeds per task)")
    w.add_argument("--target-width", type=float, metavar="W",
                   help="with --extend: add seeds until each arm's simultaneous interval against the baseline is "
                        "expected narrower than W (from the SDs the sweep has measured so far), at most "
                        "--max-seeds; the top-up is one more look, which the declared --planned-looks must cover")
    w.add_argument("--max-seeds", type=int, default=10, help="the cap of --target-width (default: 10 seeds)")
    k = p.add_argument_group("trial (every other knob of emoe.hparams)")
    owned = {"seed", "learning_rate"}
    hparams.add_arguments(k, [n for n in hparams.KNOBS if n not in owned | design.swept], defaults_from=d.trial)
    for name in sorted(design.swept & set(hparams.KNOBS)):  # accepted only to be refused with a clear message
        hparams.add_argument(k, name, help=argparse.SUPPRESS)
    return p


def parse_args(design: Ablation, argv: list[str]) -> argparse.Namespace:
    pre = Parser(add_help=False)
    pre.add_argument("--preset", choices=list(PRESETS))
    known, _ = pre.parse_known_args(argv)
    return build_parser(design, known.preset).parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """Flags over the preset over the declared defaults."""
    # NOTE: --checkpoint-every none is a value (no checkpoints), so that flag is absent, not None, when not given
    given = {name: getattr(args, name) for name in _SWEEP_FLAGS
             if (hasattr(args, name) if name == "checkpoint_every" else getattr(args, name) is not None)}
    return SweepSettings.from_preset(args.preset, trial=hparams.overrides_from_args(args), **given)


def latest_sweep(storage: Path, experiment: str) -> Path:
    candidates = sorted(p for p in storage.glob(f"{experiment}-*") if SweepRecord.exists(p))
    if not candidates:
        raise ValueError(f"nothing to resume or extend: no sweep of experiment {experiment!r} under {storage}")
    return candidates[-1]


def planning_lines(plan, args) -> list[str]:
    """The power of the grid about to run (``emoe.analysis.planning.plan_lines``), from ``--pilot`` or
    ``--plan-sd``; a hint when neither is given."""
    from emoe.analysis import planning
    from emoe.sweep.plan import primary

    within = between = pilot = None
    if getattr(args, "plan_sd", None):
        parts = [float(x) for x in str(args.plan_sd).split(",")]
        if len(parts) > 2 or any(x < 0 for x in parts):
            raise ValueError(f"--plan-sd {args.plan_sd}: WITHIN or WITHIN,BETWEEN, non-negative SDs")
        within, between = parts[0], parts[1] if len(parts) > 1 else None
    if getattr(args, "pilot", None):
        pilot = pilot_table(Path(args.pilot), plan)
    if within is None and pilot is None:
        return ["power plan: give --pilot DIR (a pilot sweep's records) or --plan-sd WITHIN[,BETWEEN] for the power "
                "of this grid and the seeds it needs"]
    return planning.plan_lines(list(plan.design.arms), len(plan.tasks), len(plan.seeds), primary(plan.settings),
                               within, between, pilot, args.plan_effect)


def pilot_table(directory: Path, plan) -> "pd.DataFrame":
    """``planning.pilot_variances`` of a sweep's records, on the plan's primary metric and baseline."""
    from emoe.analysis import planning, results
    from emoe.sweep.plan import primary

    if not SweepRecord.exists(directory):
        raise ValueError(f"--pilot {directory}: no sweep records there (a sweep's directory on its storage path)")
    trials, _ = results.load_records(directory)
    declared = primary(plan.settings)
    metric = declared.metric or schema.OOD_SCORE
    if metric not in trials:
        raise ValueError(f"--pilot {directory}: its trials have no {metric}, the primary metric")
    return planning.pilot_variances(trials, declared.baseline, metric)


def dry_run(plan, workloads, done: set | None = None, planning: list[str] | None = None) -> str:
    """The dry run's text; ``done``: the cells an extended sweep holds as done (only the rest are listed)."""
    from emoe.sweep.estimate import estimate
    from emoe.sweep.plan import local_nodes, trainable_parameters

    s, b = plan.settings, plan.base
    shown = {**b, "noise_tuning": b["noise_tuning"] if b["noise_tuning"] is not None else  # the method's own
             hparams.trial_config({"method": b["method"]})["noise_tuning"]}
    nodes = local_nodes(s.num_gpus)
    gpus = "auto (1 if the cluster has GPUs)" if s.gpus_per_trial is None else f"{s.gpus_per_trial:g}"
    search = (f"{len(plan.learning_rates)} learning rates" if s.search == "grid"
              else f"optuna lr in [{plan.lr_range[0]:g}, {plan.lr_range[1]:g}]")
    from emoe.data import get_task

    image = bool(get_task(plan.tasks[0]).image)
    data = b["data_dir"] or ("the rotated digits (written to the cache)" if image else "the Hub")
    params = next(iter(workloads.values())).params
    tasks = f"{len(plan.tasks)} tasks x " if len(plan.tasks) > 1 else ""
    head = [
        f"ablation {plan.design.name}: {tasks}{len(plan.design.arms)} arms x {len(plan.seeds)} seeds x {search} = "
        f"{plan.n_trials} trials" + (f" (preset {s.preset})" if s.preset else ""),
        f"shared: model {b['model']} ({params / 1e6:.1f}M block parameters), data {data}, batch {b['batch_size']}, "
        + ("" if image else f"max length {b['max_length']}, ")
        + (f"{b['max_steps']} steps, " if b["max_steps"] else "")
        + f"evaluation every {b['eval_steps'] or 'epoch'}" + (" steps" if b["eval_steps"] else "")
        + f", optimizer {b['optimizer']}, lr_schedule {b['lr_schedule']}",
        *(f"task {t}: {w.epochs:.3g} epoch(s), {w.train_examples} training examples, {w.eval_examples} evaluation "
          + (f"examples (ID validation + OOD {', '.join(w.ood_sets) or 'none'}), " if not image else
             f"examples (training domains' validation + held-out domain {', '.join(w.ood_sets)}, in and out splits), ")
          + f"{plan.n_trials // len(plan.tasks)} trials" for t, w in workloads.items()),
        "method: " + ", ".join(f"{k} {shown[k]}" for k in ("method", "regime", "lora_r", "body_lr_ratio",
                                                           "noise_tuning", "expert_repeat")
                               if k not in plan.design.swept)
        + f" ({'the arms set the regime' if 'regime' in plan.design.swept else regime_line(b)})",
        "emoe: " + ", ".join(f"{k} {b[k]}" for k in ("layers", "num_experts", "top_k", "clustering", "gate",
                                                     "cluster_seed", "capacity_factor", "gate_noise", "expert_dropout",
                                                     "aux_loss_weight", "expert_selection", "expert_bias",
                                                     "mlp_output_dropout", "eval_method")
                             if k not in plan.design.swept) + " (arms override their own knobs)",
        "trainable parameters (of all): " + ", ".join(f"{arm} {n / 1e6:.2f}M / {total / 1e6:.1f}M"
                                                      for arm, (n, total) in trainable_parameters(plan).items()),
        "protocol: " + ", ".join(f"{k} {b[k]}" for k in ("keep_best", "patience", "weight_decay", "warmup_ratio",
                                                         "max_grad_norm", "batch_size", "grad_accum_steps",
                                                         "eval_batch_size", "precision")),
        vision_line(plan) if image else ood_line(b),
        f"resources per trial: cpu={s.cpus_per_trial:g} gpu={gpus}; max concurrent: {s.max_concurrent or 'auto'}",
        disk_line(plan, next(iter(workloads.values())).total_params),
        f"scheduler: {s.scheduler} (scope {s.early_stop_scope}, on {schema.ID_SCORE}); MLflow: {s.tracking_uri} "
        f"experiment {plan.experiment}",
        estimate(plan, workloads, nodes[0]["CPU"], nodes[0]["GPU"]),
        *(planning or []), None]
    w = max([16] + [len(str(arm)) for arm in plan.design.arms])  # the arm column fits the longest name
    head[-1] = f"{'task':<8} {'arm':<{w}} {'seed':>4} {'learning_rate':>13}  arm knobs"
    cells = plan.grid() if s.search == "grid" else [(t, arm, seed, float("nan")) for t in plan.tasks
                                                    for arm in plan.design.arms for seed in plan.seeds]
    if done is not None:
        cells = [c for c in cells if (c[0], c[1], int(c[2]), float(c[3])) not in done]
        head.insert(1, f"--extend: {len(cells)} of these {plan.n_trials} cells would run (the others have a "
                       f"finished trial), about {len(cells) / max(1, plan.n_trials):.0%} of the time below")
    rows = [f"{task:<8} {arm:<{w}} {seed:>4} {lr:>13.3g}  {plan.design.arms[arm]}" for task, arm, seed, lr in cells]
    return "\n".join(head + rows)


def regime_line(b: dict) -> str:
    """What the shared regime trains, in words (arms may set their own)."""
    from emoe.regimes import LORA_ALPHA, LORA_DROPOUT, OFFICIAL_BODY_LR_RATIO

    regime = b["regime"]
    if regime == "full":
        return "every parameter trains"
    ratio = b["body_lr_ratio"] or OFFICIAL_BODY_LR_RATIO[regime]
    what = {"lora": "LoRA and the head (and a converted block's FFN)",
            "lora_block": "LoRA, the head, blocks " + ",".join(map(str, b["layers"])) + " and what lies outside the "
                          "blocks but the embeddings",
            "lora_gates": "LoRA, the head, the converted blocks' learnable gates and what lies outside the blocks "
                          "but the embeddings"}[regime]
    return (f"LoRA r {b['lora_r']}, alpha {LORA_ALPHA}, dropout {LORA_DROPOUT}; trains {what}; LoRA and the head at "
            f"the learning rate, the rest at {ratio:g} x")


def top_up_seeds(design, settings, extend: Path, args) -> tuple[int, ...]:
    """The seeds that make every arm's simultaneous interval against the baseline expected narrower than
    ``--target-width`` (``planning.width_needed`` per arm from the SDs measured so far, the largest need, capped by
    ``--max-seeds``): the sweep's seeds, then new ones. The top-up is a look at the results: refused unless the
    sweep's declared planned looks cover it, so the family's error rate holds."""
    import math

    from emoe.analysis import planning
    from emoe.sweep.plan import make_plan, primary

    record = SweepRecord.load(extend)
    declared = record.primary() or {}
    looks = len(record.looks)
    planned = int(declared.get("planned_looks", 1) or 1)
    if looks + 1 > planned:
        raise ValueError(f"--target-width would be look {looks + 1} at the results, but the sweep planned {planned} "
                         "look(s): its error rate would not hold; launch the sweep with --planned-looks")
    plan = make_plan(design, settings)
    table = pilot_table(extend, plan)
    width, cap = args.target_width, args.max_seeds
    if width <= 0 or cap < 1:
        raise ValueError(f"--target-width {width} must be > 0 and --max-seeds {cap} at least 1")
    p = primary(settings)
    m = max(1, len(plan.design.arms) - 1)
    blocks = p.blocks or ("tasks" if len(plan.tasks) > 1 else "seeds")
    need = 1
    for row in table.itertuples(index=False):
        within, between = float(row.within_sd), float(row.between_sd) if math.isfinite(row.between_sd) else 0.0
        if not math.isfinite(within):
            continue
        if blocks == "seeds" and len(plan.tasks) == 1:
            need = max(need, planning.width_needed(within, width, m, looks=planned))
        else:
            s = next((s for s in range(1, cap + 1) if planning.expected_width(
                planning.block_sd(within, between, s), len(plan.tasks), m, looks=planned) <= width), cap)
            need = max(need, s)
    have = list(plan.seeds)
    extra = [s for s in range(max(have) + 1, max(have) + 1 + max(0, min(need, cap) - len(have)))]
    return tuple(have + extra)


def extended_cells(extend: Path) -> set | None:
    """The cells the sweep in ``extend`` (and its extensions) holds as done, from its records (None for trials from
    before the records: only MLflow knows their cells)."""
    from emoe.tracking.records import done_cells

    record = SweepRecord.load(extend)
    return done_cells(extend.parent / record.origin if record.origin else extend)


def vision_line(plan) -> str:
    """How an image sweep splits, selects and scores (DomainBed's protocol, ``emoe.vision``), and each dataset's
    official learning rate and weight decay."""
    from emoe import vision
    from emoe.data import get_task

    datasets = dict.fromkeys(get_task(t).image for t in plan.tasks)
    official = "; ".join(f"{d}: learning rate {vision.DATASETS[d].learning_rate:g}, weight decay "
                         f"{vision.DATASETS[d].weight_decay:g}" for d in vision.DOMAINBED)
    return (f"DomainBed: leave-one-domain-out over {', '.join(datasets)} (tasks dataset:held-out domain, the "
            f"analysis's blocks); each domain split 80/20 by seed_hash(seed, domain); {schema.ID_SCORE} = the "
            f"training-domain validation accuracy (mean over training domains), ood_score.<domain> = the held-out "
            f"domain's in split, {schema.ORACLE_SCORE} = its out split; augmentation "
            f"{'on' if plan.base['data_augmentation'] else 'off'} (photo datasets only). Official (hparams_registry, "
            f"GMOE): {official}")


def ood_line(base: dict[str, Any]) -> str:
    """How the OOD sets are scored (``emoe.protocols``), as the dry run prints it."""
    from emoe.protocols import get_protocol

    p = get_protocol(base["ood_protocol"])
    metrics = "accuracy" if p.accuracy_only else "the ID task's"
    return (f"OOD: ood_protocol {p.name} (metrics: {metrics}; "
            f"splits: {'one per set' if p.one_split else 'GLUE-X concatenations'}; ood_score: "
            f"{'size-weighted mean' if p.size_weighted else 'plain mean'} of the sets; max length "
            f"{base['ood_max_length'] or p.max_length}; batch {p.batch_size or 'the evaluation batch'}; "
            "unlabelled rows scored wrong)")


def disk_line(plan, total_params: int) -> str:
    """What the sweep leaves on the storage path: kept models (float16, 2 bytes a parameter) and, while a trial
    runs, its checkpoint (the model and AdamW's two moments: 12 bytes a parameter)."""
    s, b = plan.settings, plan.base
    kept = 2 * total_params / 2 ** 20
    parts = [f"kept model {kept:.0f} MB per trial, {kept * plan.n_trials / 1024:.1f} GB for the sweep"
             if b["keep_model"] == "best" else "no kept models (--keep-model none)"]
    parts.append(f"checkpoint {12 * total_params / 2 ** 20:.0f} MB per running trial (every {s.checkpoint_every} "
                 "evaluation(s))" if s.checkpoint_every else "no checkpoints (--checkpoint-every none)")
    return f"disk ({s.storage_path}): " + "; ".join(parts)


def closing_table(trials, unended=()) -> str:
    """Per arm, the trials that ``emoe.analysis.selection.select`` chooses: learning rate, seeds, ID and OOD
    mean +- std (and how many of the arm's trials were early-stopped, and, after an interruption, how many of its
    cells were cut off: ``unended``, their (task, arm) pairs)."""
    from collections import Counter

    from emoe.analysis import selection

    cut = Counter(unended)
    if (trials.empty or schema.ID_SCORE not in trials) and not cut:
        return "no trial reported a result"
    chosen = selection.select(trials) if not trials.empty and schema.ID_SCORE in trials else trials.iloc[0:0]
    extra = f" {'cut off':>7}" if cut else ""
    groups = [] if trials.empty else [key for key, _ in trials.groupby(["task", "arm"], sort=False)]
    w = max([16] + [len(str(arm)) for _, arm in groups + list(cut)])  # the arm column fits the longest name
    lines = [f"{'task':<8} {'arm':<{w}} {'best lr':>9} {'seeds':>5} {'early-stopped':>13}{extra} "
             f"{schema.ID_SCORE:>17} {schema.OOD_SCORE:>17}"]
    for key in groups + [k for k in cut if k not in groups]:
        task, arm = key
        group = trials[(trials["task"] == task) & (trials["arm"] == arm)] if not trials.empty else trials
        stopped = int((group["outcome"] == "early_stopped").sum()) if not group.empty else 0
        cells = f" {cut.get(key, 0):>7}" if cut else ""
        sel = chosen[(chosen["arm"] == arm) & (chosen["task"] == task)] if not chosen.empty else chosen
        if sel.empty:
            lines.append(f"{task:<8} {arm:<{w}} {'-':>9} {0:>5} {stopped:>13}{cells} {'n/a':>17} {'n/a':>17}")
            continue

        def fmt(col):
            vals = sel[col].dropna() if col in sel else []
            if not len(vals):
                return "n/a"
            return f"{vals.mean():.4f}+-{vals.std(ddof=1):.4f}" if len(vals) > 1 else f"{vals.mean():.4f} (1 seed)"

        lines.append(f"{task:<8} {arm:<{w}} {sel['learning_rate'].iloc[0]:>9.2g} {len(sel):>5} {stopped:>13}{cells} "
                     f"{fmt(schema.ID_SCORE):>17} {fmt(schema.OOD_SCORE):>17}")
    return "\n".join(lines)


def record_look(uri: str, experiment_id: str, parent_run_id: str, directory: Path) -> None:
    """The closing table showed results: a look at them, counted by the sweep's finished trials (an extension's
    included), kept in the sweep's record (``looks``) and its parent run (``emoe.tracking.record_look``), announced
    when it is one more than its primary analysis planned."""
    from emoe.tracking import client, record_look as record
    from emoe.tracking.records import trial_rows

    try:
        origin = SweepRecord.load(directory).origin
        home = directory.parent / origin if origin else directory
        finished = sum(r["outcome"] in ("completed", "early_stopped") for r in trial_rows(home))
        kept = SweepRecord.load(home)
        if finished and (not kept.looks or kept.looks[-1] != finished):
            kept.looks.append(finished)
            kept.save(home)
    except (OSError, ValueError) as e:  # the results are printed; the count is bookkeeping
        logging.getLogger(__name__).warning("could not record this look in the sweep's record (%s)", e)
    try:
        mlflow = client(uri)
        children = mlflow.search_runs([experiment_id], filter_string=f"tags.`{schema.PARENT}` = '{parent_run_id}'",
                                      max_results=50_000)
        finished = sum(r.data.tags.get(schema.OUTCOME) in ("completed", "early_stopped") for r in children)
        looks = record(mlflow, parent_run_id, finished)
        planned = int(float(mlflow.get_run(parent_run_id).data.params.get(
            f"{schema.PRIMARY_PREFIX}planned_looks", 1)))
    except Exception as e:  # the results are printed; the count is bookkeeping
        logging.getLogger(__name__).warning("could not record this look at the results in MLflow (%s)", e)
        return
    if looks > planned:
        print(f"look {looks} at this sweep's results, {planned} planned: its report will be exploratory "
              "(declare --planned-looks at launch to keep later looks confirmatory)")


def publish(uri: str, outcome, frame, table: str) -> None:
    """The results on the sweep's parent run (per-arm scores as metrics, the closing table) and the report
    (``emoe analyse``: written to ``reports/<experiment>/`` and attached to the parent run); a failure here is a
    warning, never the sweep's."""
    from emoe.analysis import selection
    from emoe.tracking import client, runs

    log = logging.getLogger(__name__)
    if frame.empty or schema.ID_SCORE not in frame:
        return
    try:
        runs.log_sweep_results(client(uri), outcome.parent_run_id, selection.select(frame), table)
    except Exception as e:
        log.warning("could not log the results on the parent run (%s); emoe analyse attaches them later", e)
    from emoe.analysis import cli as analysis

    if len(outcome.plan.design.arms) < 2:
        print(f"report: none (one arm, nothing to compare; its trials are in MLflow experiment "
              f"{outcome.plan.experiment})")
        return
    if not outcome.complete:  # its report would count the cut-off cells as failures: it waits for --resume
        print(f"report: none yet (the sweep did not end; emoe analyse --experiment {outcome.plan.experiment} reads a "
              "partial sweep, counting unended cells as failed)")
        return
    out = Path("reports") / outcome.plan.experiment
    printed = io.StringIO()  # the closing table said it on the console; the report holds the rest
    try:
        with contextlib.redirect_stdout(printed):
            code = analysis.main(["--experiment", outcome.plan.experiment, "--tracking-uri", uri,
                                  "--parent", outcome.parent_run_id, "--out", str(out)])
    except Exception as e:  # noqa: BLE001  the sweep's results are printed and logged already
        code = f"{type(e).__name__}: {e}"
    if code == 0:
        print(f"report: {out / 'report.html'} (also among the parent run's artifacts)")
    else:
        log.warning("the report was not written (%s); run emoe analyse --experiment %s", code,
                    outcome.plan.experiment)


def mlflow_lines(uri: str, experiment: str, experiment_id: str, parent_run_id: str) -> list[str]:
    """How to open the sweep's runs: the UI command for a local store, and the link to the runs table."""
    if uri.startswith("sqlite"):
        exe = Path(sys.executable).with_name("mlflow")
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("..") else str(exe)
        ui = "http://127.0.0.1:5000"
        return [f"MLflow: {exe} ui --backend-store-uri {uri}   (experiment {experiment}, parent run {parent_run_id})",
                f"then open the results (every arm's scores): {schema.run_url(ui, experiment_id, parent_run_id)}",
                f"and the trial runs, an arm's together: {schema.runs_url(ui, experiment_id)}"]
    return [f"MLflow: the results (every arm's scores): {schema.run_url(uri, experiment_id, parent_run_id)}   "
            f"(experiment {experiment})", f"the trial runs, an arm's together: {schema.runs_url(uri, experiment_id)}"]


def main(design: Ablation, argv: list[str] | None = None) -> int:
    """The whole sweep from a command line. Returns the exit code."""
    from emoe.sweep.runner import prepare, results_frame, run_sweep
    from emoe.sweep.trainable import quiet_libraries

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    resume = extend = None
    try:
        args = parse_args(design, argv)
        if design.name == "official" and args.preset:  # one preset's own command: its own experiment
            design = dataclasses.replace(design, name=f"official-{args.preset}")
        if args.resume and args.extend:
            raise ValueError("--resume and --extend both given: resume an interrupted sweep, or extend a finished one")
        if args.extend:
            storage = Path(args.storage_path or SweepSettings.storage_path).resolve()
            experiment = args.experiment or schema.experiment_name(design.name)
            extend = latest_sweep(storage, experiment) if args.extend == "latest" else Path(args.extend).resolve()
            SweepRecord.load(extend).check_scoring(extend, "--extend")
        if args.resume:
            storage = Path(args.storage_path or SweepSettings.storage_path).resolve()
            experiment = args.experiment or schema.experiment_name(design.name)
            resume = latest_sweep(storage, experiment) if args.resume == "latest" else Path(args.resume).resolve()
            record = SweepRecord.load(resume)  # the interrupted sweep's own design and settings
            record.check_scoring(resume, "--resume")
            design = Ablation(record.design, record.arms, record.factor)
            settings, command = SweepSettings.from_dict(record.settings), record.argv
        else:
            settings, command = settings_from_args(args), [sys.argv[0], *argv]
        if args.target_width is not None:
            if not extend:
                raise ValueError("--target-width tops up a finished sweep: give it with --extend")
            settings = dataclasses.replace(settings, seeds=top_up_seeds(design, settings, extend, args))
        if args.dry_run:
            plan, workloads = prepare(design, settings)
            print(dry_run(plan, workloads, done=extended_cells(extend) if extend else None,
                          planning=planning_lines(plan, args)))
            return 0
        outcome = run_sweep(design, settings, resume=resume, argv=command, extend=extend)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not outcome.ran:
        print(f"nothing to run: every cell of this grid already has a finished trial (parent run "
              f"{outcome.parent_run_id})")
    frame = results_frame(outcome)
    wanted = outcome.plan.n_trials if outcome.plan.settings.search == "optuna" else len(outcome.plan.grid())
    print(f"\nper arm: the learning rate with the best mean {schema.ID_SCORE} over seeds (the rule: "
          f"emoe.analysis.selection); {len(frame)} of {wanted} cells ended")
    table = closing_table(frame, outcome.unended)
    print(table)
    record_look(settings.tracking_uri, outcome.experiment_id, outcome.parent_run_id, outcome.directory)
    publish(settings.tracking_uri, outcome, frame, table)
    if outcome.failed:
        print(f"{outcome.failed} trial(s) failed; their MLflow runs hold the error")
    print()
    print("\n".join(mlflow_lines(settings.tracking_uri, outcome.plan.experiment, outcome.experiment_id,
                                 outcome.parent_run_id)))
    if not outcome.complete:
        why = "interrupted" if outcome.interrupted else "incomplete"
        print(f"sweep {why}: {wanted - len(frame)} cell(s) not ended; continue with: {sys.argv[0]} "
              f"--resume {outcome.directory}")
    if outcome.interrupted:
        return 130
    if outcome.exit_code:
        print("every trial failed (see the errors above and in MLflow)", file=sys.stderr)
    return outcome.exit_code
