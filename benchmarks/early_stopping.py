"""What early stopping saves on a grid with rivals to stop, and whether it changes the conclusions.

    python benchmarks/early_stopping.py [--tracking-uri sqlite:///bench_asha.db] [--data-dir demo]

The grid (``GRID``): the clustering ablation's 6 arms x 2 seeds x 3 learning rates on the packaged MiniLM and SST-2
slice, the paper's per-epoch protocol (4 epochs, an evaluation after each, the best epoch kept). It runs once
without early stopping (skipped when the tracking URI already holds it; about an hour on 2 cores), logging every
evaluation. Then early-stopping rules are replayed on those learning curves: a trial stops where the rule says so
and keeps the scores of its last evaluation (as a stopped trial of a real sweep does). Replayed:

- the sweep's own ASHA schedulers (``emoe.sweep.search.scheduler``: per arm and seed, and global per task, with a
  grace period of 1 epoch, a quarter of the epochs, the former default, and 2, half of them, the default since this
  benchmark), fed the results as logged (this machine ran one trial at a time, in Tune's grid order: a simulated
  single slot gives the same) and on a simulated cluster of 3 or 12 trial slots (every
  evaluation one time unit, a stopped trial's slot to the next trial at once), the trials started in Tune's grid
  order (arms vary fastest, then rates) or with the rates of each arm and seed next to each other;
- synchronous successive halving per arm and seed (promotion-based: at each rung every rate of the arm and seed
  has been evaluated, and only the best ``1/reduction_factor`` of them go on), which does not depend on the order.

Printed per rule: the share of the full grid's trial-epochs spent, the trials stopped, how many arms keep the
learning rate the full grid chooses (``emoe.analysis.selection.select``, the analysis's own rule), and whether the
arms' ranking (mean best-epoch ID score and OOD score at the chosen rate) is the full grid's, with Kendall's tau
against it.
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


ORDERS = {
    # Tune's grid order (BasicVariantGenerator: the first config key, alphabetically, varies fastest)
    "grid order": lambda c: (c["task"], c["seed"], c["learning_rate"], c["arm"]),
    # the learning rates of one arm and seed next to each other
    "rates together": lambda c: (c["task"], c["seed"], c["arm"], c["learning_rate"]),
}


class CannotOvertake:
    """Stop a learning rate once it cannot overtake its arm and seed's best finished rate: its best ID score so far
    plus the largest gain from that epoch to the end seen in any finished trial of the sweep (an empirical bound)
    is below that best. Until a trial of the sweep has finished, nothing is stopped."""

    def __init__(self):
        self.best_final: dict[tuple, float] = {}  # (task, arm, seed) -> best final ID score of its finished rates
        self.gain: dict[float, float] = {}  # epoch -> largest (final - best so far at that epoch) seen
        self.history: dict[str, list[tuple[float, float]]] = {}

    def on_trial_add(self, controller, trial):
        pass

    def on_trial_result(self, controller, trial, result):
        from ray.tune.schedulers import TrialScheduler

        from emoe import tracking

        epoch, score = result[tracking.EPOCH], result[tracking.ID_SCORE]
        seen = self.history.setdefault(trial.trial_id, [])
        best = max([score] + [v for _, v in seen])
        seen.append((epoch, best))
        key = (trial.config["task"], trial.config["arm"], trial.config["seed"])
        if epoch >= EPOCHS - 1e-9:  # finished: it bounds the others
            self.best_final[key] = max(self.best_final.get(key, best), best)
            for e, v in seen:
                self.gain[e] = max(self.gain.get(e, 0.0), best - v)
            return TrialScheduler.CONTINUE
        if key in self.best_final and epoch in self.gain and best + self.gain[epoch] < self.best_final[key]:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def asha(trials: list, scope: str, slots: int | None = None, order: str = "grid order",
         grace: float | None = None, rule=None) -> dict[str, int]:
    """The sweep's ASHA replayed: trial id -> evaluations it ran (its last one is where it stopped).

    ``slots`` None: the results in the order they were logged (as this machine ran the grid). Else a simulated
    cluster with that many trial slots: trials start in ``ORDERS[order]`` as slots free up, every evaluation takes
    one time unit, and a stopped trial frees its slot at once. ``grace``: ``--grace-period`` (default half of
    the epochs)."""
    import heapq

    from ray.tune.schedulers import TrialScheduler

    from emoe import tracking
    from emoe.sweep import SweepSettings, make_plan
    from emoe.sweep.search import scheduler as make_scheduler

    from clustering import ABLATION  # sweeps/ is on the path (main)

    plan = make_plan(ABLATION, SweepSettings.from_preset("demo", trial={"epochs": int(EPOCHS), "eval_steps": None},
                                                         early_stop_scope=scope, grace_period=grace))
    scheduler = rule or make_scheduler(plan)
    if rule is None:
        scheduler.set_search_properties(tracking.ID_SCORE, "max")
    ran = {t.trial_id: len(t.curve) for t in trials if t.failed}  # failed: as they ran, in every rule
    trials = [t for t in trials if not t.failed]
    for t in trials:
        scheduler.on_trial_add(None, t)
    ran.update({t.trial_id: 0 for t in trials})

    def result(t, k) -> bool:
        """Feed evaluation k of trial t; True when the trial goes on."""
        p = t.curve[k]
        ran[t.trial_id] = k + 1
        action = scheduler.on_trial_result(None, t, {tracking.EPOCH: p.epoch, tracking.ID_SCORE: p.id_score})
        return action != TrialScheduler.STOP and k + 1 < len(t.curve)

    if slots is None:
        stopped = set()
        for _, i, k in sorted((p.time, i, k) for i, t in enumerate(trials) for k, p in enumerate(t.curve)):
            if trials[i].trial_id not in stopped and not result(trials[i], k):
                stopped.add(trials[i].trial_id)
        return ran
    queue = sorted(range(len(trials)), key=lambda i: ORDERS[order](trials[i].config), reverse=True)
    events: list[tuple[int, int, int]] = []  # (time, trial index, evaluation index)
    for _ in range(min(slots, len(queue))):
        heapq.heappush(events, (1, queue[-1], 0))
        queue.pop()
    while events:
        now, i, k = heapq.heappop(events)
        if result(trials[i], k):
            heapq.heappush(events, (now + 1, i, k + 1))
        elif queue:  # the slot goes to the next trial
            heapq.heappush(events, (now + 1, queue.pop(), 0))
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


def tau(ranking: list[str], reference: list[str]) -> float:
    """Kendall's tau between two rankings of the same arms (1: the same order)."""
    from scipy.stats import kendalltau

    return float(kendalltau([ranking.index(a) for a in reference], list(range(len(reference)))).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", default="sqlite:///bench_asha.db")
    p.add_argument("--storage-path", default="bench_asha_ray")
    p.add_argument("--data-dir", default="demo", help="SST-2 and its OOD sets (default: the packaged slice)")
    a = p.parse_args()
    sys.path.insert(0, str(ROOT / "sweeps"))
    trials = full_grid(a.tracking_uri, a.data_dir, a.storage_path)
    full = outcome(trials, {t.trial_id: len(t.curve) for t in trials})
    rates, id_rank, ood_rank, means = conclusions(full)
    failed = sum(t.failed for t in trials)
    print(f"\ngrid: {len(trials)} trials, {failed} failed ({full['arm'].nunique()} arms x {full['seed'].nunique()} seeds x "
          f"{full['learning_rate'].nunique()} learning rates), evaluations at epochs "
          f"{sorted({round(q.epoch, 2) for t in trials for q in t.curve})}: "
          f"{sum(len(t.curve) for t in trials)} trial-epochs")
    print("full grid: chosen learning rates " + ", ".join(f"{arm} {lr:g}" for arm, lr in rates.items()))
    print("  ID ranking:  " + " > ".join(f"{arm} {means.loc[arm, 'id_score']:.4f}" for arm in id_rank))
    print("  OOD ranking: " + " > ".join(f"{arm} {means.loc[arm, 'ood_score']:.4f}" for arm in ood_rank))
    total = sum(len(t.curve) for t in trials if not t.failed) or 1  # the rules differ on these only
    rules = []
    for grace, label in ((1.0, "grace 1 (a quarter)"), (2.0, "grace 2 (default)")):
        rules += [(f"ASHA per arm+seed, {label}, as run here", asha(trials, "arm", grace=grace))]
        rules += [(f"ASHA per arm+seed, {label}, {slots} slots, {order}", asha(trials, "arm", slots, order, grace))
                  for order in ORDERS for slots in (3, 12)]
    for grace, label in ((1.0, "grace 1"), (2.0, "grace 2")):
        rules += [(f"ASHA global, {label}, as run here", asha(trials, "global", grace=grace)),
                  (f"ASHA global, {label}, 12 slots, grid order", asha(trials, "global", 12, grace=grace))]
    rules += [("successive halving per arm+seed, rungs 1, 2", successive_halving(trials))]
    rules += [("cannot overtake, as run here", asha(trials, "arm", rule=CannotOvertake())),
              ("cannot overtake, 12 slots, rates together", asha(trials, "arm", 12, "rates together",
                                                                  rule=CannotOvertake()))]
    print(f"\n{'rule':<64} {'trial-epochs':>12} {'stopped':>8} {'same rate':>10} {'ID ranking':>11} "
          f"{'OOD ranking':>12} {'tau ID':>7} {'tau OOD':>8}")
    details = []
    for name, ran in rules:
        r, i, o, _ = conclusions(outcome(trials, ran))
        same = sum(r.get(arm) == lr for arm, lr in rates.items())
        spent = sum(ran[t.trial_id] for t in trials if not t.failed)
        print(f"{name:<64} {spent / total:>12.2f} {sum(ran[t.trial_id] < len(t.curve) for t in trials):>8} "
              f"{f'{same}/{len(rates)}':>10} {'same' if i == id_rank else 'differs':>11} "
              f"{'same' if o == ood_rank else 'differs':>12} {tau(i, id_rank):>7.2f} {tau(o, ood_rank):>8.2f}")
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
