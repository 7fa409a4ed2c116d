"""Model selection, defined once: every table that picks a learning rate (the sweep's closing table, the report)
calls ``select``. ID metrics only; OOD metrics never select anything."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emoe.tracking import schema

USED_OUTCOMES = ("completed", "early_stopped")
# The named selection rules (DomainBed's names): oracle chooses the learning rate (and, with keep_best, the epoch) on
# the ID validation set it reports, as the official EMoE code does; clean chooses both on a development split carved
# from the training set (dev_score) and reports the validation set as a test set. Image sweeps (emoe.vision) take
# DomainBed's rules instead: training_domain (its default: id_score is the training domains' validation accuracy) and
# test_domain (its oracle: the last evaluation, the learning rate chosen on the held-out domain's out split) and
# leave_one_domain_out (the evaluation and rate with the best mean accuracy of the pair runs' second domains).
RULES = ("oracle", "clean", "training_domain", "test_domain", "leave_one_domain_out")
TEXT_RULES, IMAGE_RULES = ("oracle", "clean"), ("training_domain", "test_domain", "leave_one_domain_out")
DECIMALS = 10  # values are rounded to this many decimals before they are compared, ranked or tested
RULE = (f"per arm and task, the learning rate with the best mean {schema.ID_SCORE} over seeds (ID only; means rounded "
        f"to {DECIMALS} decimals, the smaller rate among equals) among the rates with the fewest failed seeds: a rate "
        "where a seed failed (diverged) ranks below every rate with fewer failures, whatever its score; a failed "
        "trial whose cell was run again and finished does not count; repeated cells are averaged first; completed "
        "trials count, early-stopped ones with the ID score they reached when stopped (ASHA stops a trial for "
        "trailing its bracket, so it cannot win by stopping)")


def collapse_duplicates(df: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """One row per (task, arm, seed, learning rate) among used trials: repeats (a rerun without ``--resume``, grid
    ``--num-samples``) are averaged into one cell, never counted as more seeds."""
    keys = ["task", "arm", "seed", "learning_rate"]
    used = df["outcome"].isin(USED_OUTCOMES)
    dup = df[used].duplicated(keys, keep=False)
    if not dup.any():
        return df
    groups = df[used][dup].groupby(keys, sort=False)
    warnings.append(f"{int(dup.sum())} trials repeat {groups.ngroups} (task, arm, seed, learning rate) cell(s): "
                    "each cell's repeats averaged into one (not counted as seeds)")
    numeric = [c for c in df.columns if c not in keys and pd.api.types.is_numeric_dtype(df[c])]
    first = df[used].groupby(keys, sort=False).first()
    means = df[used].groupby(keys, sort=False)[numeric].mean()
    first[numeric] = means
    first["outcome"] = df[used].groupby(keys, sort=False)["outcome"].agg(
        lambda o: "completed" if (o == "completed").any() else o.iloc[0])
    return pd.concat([first.reset_index(), df[~used]], ignore_index=True)


def clean_view(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials as the clean rule sees them: every score at the evaluation with the best ``dev_score``
    (``clean.<metric>``, logged with keep_best; without it the reported evaluation is the last, and its scores are
    used as they are). ``ValueError`` (one line) when no finished trial logged a ``dev_score``."""
    return _view(trials, schema.DEV_SCORE, schema.CLEAN_PREFIX,
                 f"the clean selection rule needs {schema.DEV_SCORE} (a development split carved from the training "
                 "set): run the sweep with --dev-samples N; valid rules here: oracle")


def _view(trials: pd.DataFrame, needed: str, prefix: str, missing: str) -> pd.DataFrame:
    """The trials with every score replaced by its ``<prefix><score>`` copy where one was logged (another
    evaluation's); ``ValueError(missing)`` when no finished trial logged ``needed``."""
    used = trials["outcome"].isin(USED_OUTCOMES) if "outcome" in trials else pd.Series(True, index=trials.index)
    if needed not in trials or trials.loc[used, needed].isna().all():
        raise ValueError(missing)
    out = trials.copy()
    for column in [c for c in trials.columns if c.startswith(prefix)]:
        score = column[len(prefix):]
        have = out[column].notna()
        if score not in out:
            out[score] = np.nan
        out.loc[have, score] = out.loc[have, column]
    return out


def image_sweep(trials: pd.DataFrame) -> bool:
    """Whether the trials are of image tasks (``dataset:domain``, ``emoe.vision``)."""
    from emoe.data import TASKS

    tasks = trials["task"].dropna().unique() if "task" in trials else []
    return len(tasks) > 0 and all(t in TASKS and TASKS[t].image for t in tasks)


def default_rule(trials: pd.DataFrame) -> str:
    return "training_domain" if image_sweep(trials) else "oracle"


def check_rule(trials: pd.DataFrame, rule: str) -> None:
    """``ValueError`` (one line) for a rule that does not fit the trials' kind: DomainBed's rules for image tasks,
    the oracle and clean rules for text tasks."""
    image = image_sweep(trials)
    valid = IMAGE_RULES if image else TEXT_RULES
    if rule not in valid:
        kind = "image tasks (DomainBed's)" if image else "text tasks"
        raise ValueError(f"selection rule {rule!r} does not apply to {kind}; valid rules: {', '.join(valid)}")


def criterion(rule: str) -> str:
    """The score a rule chooses the learning rate on."""
    return {"clean": schema.DEV_SCORE, "test_domain": schema.ORACLE_SCORE,
            "leave_one_domain_out": schema.LOO_SCORE}.get(rule, schema.ID_SCORE)


def support_runs(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, pair runs)``: the runs with two held-out domains (``emoe.vision.is_pair``) serve the
    leave-one-domain-out selection only, never as blocks."""
    from emoe.vision import is_pair

    pair = trials["task"].map(lambda t: isinstance(t, str) and is_pair(t)) if "task" in trials else \
        pd.Series(False, index=trials.index)
    return trials[~pair], trials[pair]


def loo_view(trials: pd.DataFrame, pairs: pd.DataFrame, curves: pd.DataFrame,
             warnings: list[str] | None = None) -> pd.DataFrame:
    """The trials as DomainBed's ``LeaveOneOutSelectionMethod`` sees them. For the trial that holds out domain t
    (with its arm, seed and learning rate), each evaluation step s has the validation accuracy
    ``mean over v != t of loo_score(s)`` of the pair runs ``t+v`` of the same arm, seed and rate (a step without
    every pair is skipped), and the test accuracy ``ood_score(s)`` of the trial itself; the step with the best
    validation (the first among equals) gives the trial's ``loo_score`` and its ``ood_score`` (and
    ``ood_score.<t>``). ``curves``: ``run_id, step, metric, value`` with each run's ``ood_score`` and ``loo_score``
    per evaluation (``last.<metric>`` under keep_best). A trial without its pairs gets no ``loo_score``."""
    from emoe.vision import DATASETS, PAIR, SEPARATOR, held_out

    if pairs.empty:
        raise ValueError("the leave_one_domain_out rule needs DomainBed's runs with two held-out domains: add "
                         "<dataset>:pairs to --tasks (e.g. --tasks pacs,pacs:pairs); valid rules here: "
                         "training_domain, test_domain")
    warnings = [] if warnings is None else warnings
    series = {(run, metric): group.groupby("step")["value"].mean()
              for (run, metric), group in curves.groupby(["run_id", "metric"])}
    keys = ["arm", "seed", "learning_rate"]
    by_cell = {(row["task"], *(row[k] for k in keys)): row["run_id"] for _, row in pairs.iterrows()}
    out = trials.copy()
    out[schema.LOO_SCORE] = np.nan
    lacking = 0
    for index, row in trials.iterrows():
        dataset, test, _ = held_out(row["task"])
        test_curve = series.get((row["run_id"], schema.OOD_SCORE))
        runs = [by_cell.get((f"{dataset}{SEPARATOR}{test}{PAIR}{v}", *(row[k] for k in keys)))
                for v in DATASETS[dataset].domains if v != test]
        vals = [series.get((run, schema.LOO_SCORE)) for run in runs]
        if test_curve is None or any(v is None for v in vals):
            lacking += 1
            continue
        validation = pd.concat(vals, axis=1).dropna().mean(axis=1)  # steps every pair run reached
        steps = [s for s in validation.index if s in test_curve.index]
        if not steps:
            lacking += 1
            continue
        best = max(steps, key=lambda s: (round(validation[s], DECIMALS), -s))  # the earliest among equals
        out.loc[index, schema.LOO_SCORE] = validation[best]
        for column in (schema.OOD_SCORE, schema.ood_score_metric(test)):
            out.loc[index, column] = test_curve[best]
    if lacking:
        warnings.append(f"{lacking} trial(s) lack a pair run or an evaluation step all their pair runs share: no "
                        f"{schema.LOO_SCORE}, so the leave-one-domain-out rule cannot choose for them")
    return out


def last_view(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials as DomainBed's oracle (test_domain) sees them: every score at the last evaluation (``last.<metric>``,
    logged with keep_best; without it the reported evaluation is the last). ``ValueError`` when no finished trial
    logged an ``oracle_score`` (the held-out domain's out split)."""
    return _view(trials, schema.ORACLE_SCORE, schema.LAST_PREFIX,
                 f"the test_domain rule needs {schema.ORACLE_SCORE} (an image task's held-out domain's out split); "
                 "valid rules here: training_domain")


def select(trials: pd.DataFrame, warnings: list[str] | None = None, criterion: str = schema.ID_SCORE) -> pd.DataFrame:
    """The trials of each (task, arm)'s chosen learning rate (``RULE``; ``criterion``: the score the rate is chosen
    on, ``id_score`` for the oracle rule, ``dev_score`` for the clean one on ``clean_view``'s trials).

    Args:
        trials: one row per trial with ``task, arm, seed, learning_rate, outcome`` and ``id_score``.
        warnings: gets a line for each gap (trials without ``id_score``, seeds missing at the chosen rate,
            early-stopped trials among the chosen).

    Returns:
        The chosen rows, in the order of ``trials``' (task, arm) groups.
    """
    warnings = [] if warnings is None else warnings
    trials = collapse_duplicates(trials, warnings)
    used = trials[trials["outcome"].isin(USED_OUTCOMES)]
    cells = ["task", "arm", "seed", "learning_rate"]
    finished = set(map(tuple, used[cells].itertuples(index=False)))
    rerun = np.array([tuple(c) in finished for c in trials[cells].itertuples(index=False)], dtype=bool)
    failed = trials[(trials["outcome"] == "failed").to_numpy() & ~rerun]
    # failed seeds per (task, arm, rate): a cell rerun to completion is not a failure
    failures = failed.drop_duplicates(cells).groupby(["task", "arm", "learning_rate"]).size()
    chosen = []
    all_seeds = sorted(used["seed"].dropna().unique())
    for (task, arm), group in used.groupby(["task", "arm"], sort=False):
        count = {lr: int(failures.get((task, arm, lr), 0)) for lr in group["learning_rate"].unique()}
        fewest = min(count.values())
        if any(count.values()):
            worse = sorted(float(lr) for lr, c in count.items() if c > fewest)
            if worse:
                group = group[group["learning_rate"].map(count) == fewest]
                warnings.append(f"{task}/{arm}: learning rate(s) {worse} had more failed (diverged) seeds than "
                                f"another rate ({fewest}); not selectable")
        scored = group.dropna(subset=[criterion]) if criterion in group else group.iloc[0:0]
        if len(scored) < len(group):
            warnings.append(f"{task}/{arm}: {len(group) - len(scored)} trial(s) without {criterion} ignored")
        if scored.empty:
            warnings.append(f"{task}/{arm}: no trial with {criterion}; arm left out")
            continue
        means = scored.groupby("learning_rate")[criterion].mean().sort_index().round(DECIMALS)
        best = means.idxmax()  # first (smallest) learning rate among equals, equal once rounded
        rows = scored[scored["learning_rate"] == best]
        missing = sorted(set(all_seeds) - set(rows["seed"]))
        if missing:
            warnings.append(f"{task}/{arm}: seed(s) {[int(s) for s in missing]} missing at the chosen learning rate "
                            f"{best:g}; averaged over seeds {[int(s) for s in sorted(rows['seed'])]}")
        stopped = int((rows["outcome"] == "early_stopped").sum())
        if stopped:
            warnings.append(f"{task}/{arm}: {stopped} early-stopped trial(s) at the chosen learning rate {best:g} "
                            "report partially trained metrics")
        chosen.append(rows)
    return pd.concat(chosen, ignore_index=True) if chosen else used.iloc[0:0]


def compare_rules(trials: pd.DataFrame, metrics: tuple[str, ...] = (schema.ID_SCORE, schema.OOD_SCORE)) -> pd.DataFrame:
    """Both rules side by side, per (task, arm): each rule's chosen learning rate and the mean of ``metrics`` over
    its chosen trials (the clean rule's at its own epoch), and ``gap.<metric>`` = oracle - clean: how much choosing on
    the reported set flatters it. Empty when no trial logged a ``dev_score``."""
    columns = ["task", "arm", "oracle_lr", "clean_lr"] + [f"{r}.{m}" for m in metrics for r in RULES] + \
        [f"gap.{m}" for m in metrics]
    try:
        clean_trials = clean_view(trials)
    except ValueError:
        return pd.DataFrame(columns=columns)
    oracle = select(trials, [])
    clean = select(clean_trials, [], criterion=schema.DEV_SCORE)
    rows = []
    for (task, arm), o in oracle.groupby(["task", "arm"], sort=False):
        c = clean[(clean["task"] == task) & (clean["arm"] == arm)]
        if c.empty:
            continue
        row = {"task": task, "arm": arm, "oracle_lr": float(o["learning_rate"].iloc[0]),
               "clean_lr": float(c["learning_rate"].iloc[0])}
        for m in metrics:
            row[f"oracle.{m}"] = float(o[m].mean()) if m in o else np.nan
            row[f"clean.{m}"] = float(c[m].mean()) if m in c else np.nan
            row[f"gap.{m}"] = round(row[f"oracle.{m}"] - row[f"clean.{m}"], DECIMALS)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def inflation(trials: pd.DataFrame, chosen: pd.DataFrame | None = None,
              curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """How much choosing on the same ID scores inflates the reported ID score: per (task, arm), each seed scored where
    the choice made without it lands (leave one seed out: a score the choice never saw), beside the selected score.
    The learning rate is chosen by ``select`` on the other seeds; with ``curves`` (``run_id, step, value``: each
    trial's raw ID curve, ``emoe.analysis.results.load_curves``), a trial that kept its best evaluation
    (``keep_best``) is also read at the evaluation step the other seeds' mean curve at that rate peaks at, so both
    choices are undone; without them the best-evaluation choice is not. With one rate and no kept best, nothing is
    chosen (inflation 0).

    Returns:
        One row per (task, arm) with ``selected`` (mean ID score of the chosen rate's seeds), ``held_out`` (mean over
        seeds of each seed's held-out score), ``inflation`` (selected - held_out), ``rates`` (learning rates
        compared), ``seeds`` (seeds scored held out) and ``epochs`` (True when the best-evaluation choice was undone
        too); empty with fewer than two seeds.
    """
    columns = ["task", "arm", "selected", "held_out", "inflation", "rates", "seeds", "epochs"]
    trials = collapse_duplicates(trials, [])
    used = trials[trials["outcome"].isin(USED_OUTCOMES)].dropna(subset=[schema.ID_SCORE])
    chosen = select(trials, []) if chosen is None else chosen
    seeds = sorted(used["seed"].dropna().unique())
    if len(seeds) < 2 or chosen.empty:
        return pd.DataFrame(columns=columns)
    cells = ["task", "arm", "seed", "learning_rate"]
    score = used.groupby(cells)[schema.ID_SCORE].mean()
    kept = used["keep_best"].astype(str).str.lower().eq("true") if "keep_best" in used else pd.Series(False, used.index)
    curve = None
    if curves is not None and len(curves) and "run_id" in used and kept.any():
        curve = (curves.merge(used[kept][cells + ["run_id"]], on="run_id")
                 .groupby(cells + ["step"])["value"].mean())
    rates = used.groupby(["task", "arm"], sort=False)["learning_rate"].nunique()
    held: dict[tuple, list[float]] = {}
    for seed in seeds:
        without = select(trials[trials["seed"] != seed], []) if rates.max() > 1 or curve is not None else \
            chosen[chosen["seed"] != seed]
        for (task, arm), group in without.groupby(["task", "arm"], sort=False):
            lr = group["learning_rate"].iloc[0]
            key = (task, arm, seed, lr)
            if key not in score.index:
                continue
            value = float(score[key])
            if curve is not None and key in curve.index.droplevel("step"):
                others = curve.loc[(task, arm)].drop(seed, level="seed", errors="ignore")
                others = others[others.index.get_level_values("learning_rate") == lr]
                if len(others):
                    mean = others.groupby(level="step").mean().round(DECIMALS)
                    step = mean.idxmax()  # the earliest step among equals
                    mine = curve.loc[key]
                    value = float(mine[step]) if step in mine.index else value
            held.setdefault((task, arm), []).append(value)
    rows = []
    for (task, arm), group in chosen.groupby(["task", "arm"], sort=False):
        if (task, arm) not in held:
            continue
        selected = float(group[schema.ID_SCORE].mean())
        out = float(np.mean(held[(task, arm)]))
        rows.append({"task": task, "arm": arm, "selected": selected, "held_out": out,
                     "inflation": round(selected - out, DECIMALS), "rates": int(rates.get((task, arm), 1)),
                     "seeds": len(held[(task, arm)]), "epochs": curve is not None})
    return pd.DataFrame(rows, columns=columns)
