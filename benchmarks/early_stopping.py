"""What early stopping saves on a grid with rivals to stop, and whether it changes the conclusions.

    python benchmarks/early_stopping.py [--tracking-uri sqlite:///bench_asha.db] [--data-dir demo]

The grid (``GRID``): the clustering ablation's 6 arms x 2 seeds x 3 learning rates on the packaged MiniLM and SST-2
slice, the paper's per-epoch protocol (4 epochs, an evaluation after each, the best epoch kept). It runs once
without early stopping (skipped when the tracking URI already holds it; about an hour on 2 cores), logging every
evaluation. Then early-stopping rules are replayed on those learning curves: a trial stops where the rule says so
and keeps the scores of its last evaluation (as a stopped trial of a real sweep does). Replayed:

- the sweep's own ASHA schedulers (``emoe.sweep.search.scheduler``: per arm and seed, and global per task),
  fed the results in two orders: as logged (this machine ran one trial at a time, learning rates of an arm one
  after another) and side by side (every trial at once, epoch by epoch: a cluster with a slot per trial);
- synchronous successive halving per arm and seed (promotion-based: at each rung every rate of the arm and seed
  has been evaluated, and only the best ``1/reduction_factor`` of them go on), which does not depend on the order.

Printed per rule: the share of the full grid's trial-epochs spent, the trials stopped, how many arms keep the
learning rate the full grid chooses (``emoe.analysis.selection.select``, the analysis's own rule), and whether the
arms' ranking (mean best-epoch ID score and OOD score at the chosen rate) is the full grid's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "emoe-bench-early-stopping"
GRID = ["--preset", "demo", "--learning-rates", "3e-5,1e-4,3e-4", "--seeds", "0,1", "--epochs", "4",
        "--eval-steps", "none", "--keep-best", "true", "--max-train-samples", "600", "--ood-sets", "imdb,yelp",
        "--keep-model", "none", "--checkpoint-every", "none", "--scheduler", "none"]
EPOCHS = 4.0


def full_grid(uri: str, data_dir: str, storage: str) -> list:
    from emoe import tracking

    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    client = tracking.client(uri) if path is None or path.exists() else None
    exp = client.get_experiment_by_name(EXPERIMENT) if client else None
    if exp is None:
        print("running the full grid without early stopping (about an hour on 2 cores)...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "sweeps" / "clustering.py"), *GRID, "--data-dir", data_dir,
                        "--experiment", EXPERIMENT, "--tracking-uri", uri, "--storage-path", storage], check=True)
        client = tracking.client(uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
    trials = []
    for r in client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'trial'"):
        failed = r.data.tags.get(tracking.OUTCOME) != "completed"  # diverged (or never ended): failed in every rule
        history = {name: {m.step: m for m in client.get_metric_history(r.info.run_id, name)}
                   for name in (tracking.ID_SCORE, tracking.OOD_SCORE, tracking.EPOCH)}
        steps = sorted(set(history[tracking.ID_SCORE]) & set(history[tracking.EPOCH]))
        curve = [types.SimpleNamespace(time=history[tracking.ID_SCORE][s].timestamp,
                                       epoch=history[tracking.EPOCH][s].value,
                                       id_score=history[tracking.ID_SCORE][s].value,
                                       ood_score=history[tracking.OOD_SCORE][s].value) for s in steps]
        trials.append(types.SimpleNamespace(trial_id=r.info.run_id, curve=curve, failed=failed, config={
            "task": r.data.params.get("task", "sst2"), "arm": r.data.tags[tracking.ARM],
            "seed": int(r.data.params["seed"]), "learning_rate": float(r.data.params["learning_rate"])}))
    return trials


def asha(trials: list, scope: str, order: str) -> dict[str, int]:
    """The sweep's ASHA replayed: trial id -> evaluations it ran (its last one is where it stopped)."""
    from ray.tune.schedulers import TrialScheduler

    from emoe import tracking
    from emoe.sweep import SweepSettings, make_plan
    from emoe.sweep.search import scheduler as make_scheduler

    sys.path.insert(0, str(ROOT / "sweeps"))
    from clustering import ABLATION

    plan = make_plan(ABLATION, SweepSettings.from_preset("demo", trial={"epochs": int(EPOCHS), "eval_steps": None},
                                                         early_stop_scope=scope))
    scheduler = make_scheduler(plan)
    scheduler.set_search_properties(tracking.ID_SCORE, "max")
    ran = {t.trial_id: len(t.curve) for t in trials if t.failed}  # failed: as they ran, in every rule
    trials = [t for t in trials if not t.failed]
    for t in trials:
        scheduler.on_trial_add(None, t)
    if order == "logged":
        events = sorted((p.time, i, k) for i, t in enumerate(trials) for k, p in enumerate(t.curve))
    else:  # side by side: every trial's k-th evaluation before any trial's (k+1)-th
        events = sorted((k, i, k) for i, t in enumerate(trials) for k, p in enumerate(t.curve))
    ran, stopped = {**ran, **{t.trial_id: 0 for t in trials}}, set()
    for _, i, k in events:
        t = trials[i]
        if t.trial_id in stopped:
            continue
        p = t.curve[k]
        ran[t.trial_id] = k + 1
        action = scheduler.on_trial_result(None, t, {tracking.EPOCH: p.epoch, tracking.ID_SCORE: p.id_score})
        if action == TrialScheduler.STOP and p.epoch < EPOCHS - 1e-9:
            stopped.add(t.trial_id)
    return ran


def successive_halving(trials: list, grace: float = 1.0, rf: float = 2.0) -> dict[str, int]:
    """Synchronous successive halving per (task, arm, seed): at epochs grace, grace*rf, ... (< the last epoch) the
    best ``max(1, n // rf)`` of the ``n`` surviving rates go on (ties: the smaller rate)."""
    groups: dict[tuple, list] = {}
    ran = {t.trial_id: len(t.curve) for t in trials if t.failed}
    for t in (t for t in trials if not t.failed):
        groups.setdefault((t.config["task"], t.config["arm"], t.config["seed"]), []).append(t)
    for group in groups.values():
        alive, rung = sorted(group, key=lambda t: t.config["learning_rate"]), grace
        while rung < EPOCHS - 1e-9 and len(alive) > 1:
            at = {t.trial_id: next(k for k, p in enumerate(t.curve) if p.epoch >= rung - 1e-9) for t in alive}
            ranked = sorted(alive, key=lambda t: -t.curve[at[t.trial_id]].id_score)  # stable: smaller rate first
            keep = max(1, int(len(alive) // rf))
            for t in ranked[keep:]:
                ran[t.trial_id] = at[t.trial_id] + 1
            alive, rung = ranked[:keep], rung * rf
        for t in alive:
            ran[t.trial_id] = len(t.curve)
    return ran


def outcome(trials: list, ran: dict[str, int]):
    """The trials as the analysis reads them after the rule: scores of each trial's last evaluation."""
    import pandas as pd

    from emoe import tracking

    rows = []
    for t in trials:
        if t.failed or not t.curve:
            rows.append({**t.config, "outcome": "failed", tracking.ID_SCORE: float("nan"),
                         tracking.OOD_SCORE: float("nan"), "epochs": t.curve[-1].epoch if t.curve else 0.0})
            continue
        p = t.curve[ran[t.trial_id] - 1]
        rows.append({**t.config, "outcome": "completed" if ran[t.trial_id] == len(t.curve) else "early_stopped",
                     tracking.ID_SCORE: p.id_score, tracking.OOD_SCORE: p.ood_score, "epochs": p.epoch})
    return pd.DataFrame(rows)


def conclusions(frame):
    """(arm -> chosen learning rate, arms ranked by mean ID score at it, arms ranked by mean OOD score)."""
    from emoe import tracking
    from emoe.analysis.selection import select

    chosen = select(frame)
    rates = chosen.groupby("arm")["learning_rate"].first().to_dict()
    means = chosen.groupby("arm")[[tracking.ID_SCORE, tracking.OOD_SCORE]].mean()
    return (rates, list(means[tracking.ID_SCORE].sort_values(ascending=False, kind="stable").index),
            list(means[tracking.OOD_SCORE].sort_values(ascending=False, kind="stable").index), means)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", default="sqlite:///bench_asha.db")
    p.add_argument("--storage-path", default="bench_asha_ray")
    p.add_argument("--data-dir", default="demo", help="SST-2 and its OOD sets (default: the packaged slice)")
    a = p.parse_args()
    trials = full_grid(a.tracking_uri, a.data_dir, a.storage_path)
    total = sum(len(t.curve) for t in trials)
    full = outcome(trials, {t.trial_id: len(t.curve) for t in trials})
    rates, id_rank, ood_rank, means = conclusions(full)
    failed = sum(t.failed for t in trials)
    print(f"\ngrid: {len(trials)} trials, {failed} failed ({full['arm'].nunique()} arms x {full['seed'].nunique()} seeds x "
          f"{full['learning_rate'].nunique()} learning rates), evaluations at epochs "
          f"{sorted({round(q.epoch, 2) for t in trials for q in t.curve})}: {total} trial-epochs")
    print("full grid: chosen learning rates " + ", ".join(f"{arm} {lr:g}" for arm, lr in rates.items()))
    print("  ID ranking:  " + " > ".join(f"{arm} {means.loc[arm, 'id_score']:.4f}" for arm in id_rank))
    print("  OOD ranking: " + " > ".join(f"{arm} {means.loc[arm, 'ood_score']:.4f}" for arm in ood_rank))
    total = sum(len(t.curve) for t in trials if not t.failed) or 1  # the rules differ on these only
    rules = [(f"ASHA per arm+seed, {order}", asha(trials, "arm", order)) for order in ("logged", "side by side")]
    rules += [(f"ASHA global, {order}", asha(trials, "global", order)) for order in ("logged", "side by side")]
    rules += [("successive halving per arm+seed", successive_halving(trials))]
    print(f"\n{'rule':<36} {'trial-epochs':>12} {'stopped':>8} {'same rate':>10} {'ID ranking':>11} "
          f"{'OOD ranking':>12}")
    details = []
    for name, ran in rules:
        r, i, o, _ = conclusions(outcome(trials, ran))
        same = sum(r.get(arm) == lr for arm, lr in rates.items())
        spent = sum(ran[t.trial_id] for t in trials if not t.failed)
        print(f"{name:<36} {spent / total:>12.2f} {sum(ran[t.trial_id] < len(t.curve) for t in trials):>8} "
              f"{f'{same}/{len(rates)}':>10} {'same' if i == id_rank else 'differs':>11} "
              f"{'same' if o == ood_rank else 'differs':>12}")
        moved = [f"{arm} {r.get(arm, float('nan')):g} (full grid {lr:g})" for arm, lr in rates.items()
                 if r.get(arm) != lr]
        if moved or i != id_rank or o != ood_rank:
            details.append(f"  {name}: " + "; ".join(
                (["rates " + ", ".join(moved)] if moved else []) + ([f"ID {' > '.join(i)}"] if i != id_rank else [])
                + ([f"OOD {' > '.join(o)}"] if o != ood_rank else [])))
    if details:
        print("\nwhere a rule's conclusions differ from the full grid's:\n" + "\n".join(details))


if __name__ == "__main__":
    main()
