"""Item 5: what ASHA saves on the demo grid, and whether it picks the same best arm as the full grid.

    python benchmarks/early_stopping.py [--tracking-uri sqlite:///bench_asha.db] [--data-dir demo]

The full demo grid of the clustering ablation runs once without early stopping (skipped when the tracking URI
already holds it), logging every evaluation. Then the sweep's own ASHA schedulers (both scopes: per arm and seed,
and global) are replayed on those learning curves, results arriving in the order they were logged: a trial stops
where ASHA says STOP. Printed: trial-epochs spent as a fraction of the full grid's, and the best arm (mean final
id_score over seeds, completed trials only) with and without early stopping.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "emoe-bench-asha"


def full_grid(uri: str, data_dir: str, storage: str) -> list:
    from emoe import tracking

    client = tracking.client(uri) if uri.startswith("sqlite") and Path(uri[len("sqlite:///"):]).exists() else None
    exp = client.get_experiment_by_name(EXPERIMENT) if client else None
    if exp is None:
        print("running the full demo grid without early stopping (about 10 minutes on 2 cores)...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "sweeps" / "clustering.py"), "--preset", "demo", "--data-dir",
                        data_dir, "--scheduler", "none", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                        "--storage-path", storage], check=True)
        client = tracking.client(uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'trial'")
    trials = []
    for r in runs:
        if r.data.tags.get(tracking.OUTCOME) != "completed":
            continue
        acc = {m.step: m for m in client.get_metric_history(r.info.run_id, tracking.ID_SCORE)}
        epoch = {m.step: m.value for m in client.get_metric_history(r.info.run_id, tracking.EPOCH)}
        curve = [(acc[s].timestamp, epoch[s], acc[s].value) for s in sorted(acc) if s in epoch]
        trials.append(types.SimpleNamespace(trial_id=r.info.run_id, curve=curve, config={
            "arm": r.data.tags[tracking.ARM], "seed": int(r.data.params["seed"]),
            "learning_rate": float(r.data.params["learning_rate"])}))
    return trials


def replay(trials: list, scope: str, data_dir: str, epochs: float):
    """Feed the logged results to the sweep's ASHA in logging order; returns trial id -> epochs trained, and the
    set of trials that ran to the end."""
    from clustering import ABLATION
    from ray.tune.schedulers import TrialScheduler

    from emoe.sweep import SweepSettings, make_plan
    from emoe.sweep.search import scheduler as make_scheduler

    plan = make_plan(ABLATION, SweepSettings.from_preset("demo", trial={"data_dir": data_dir}, early_stop_scope=scope))
    scheduler = make_scheduler(plan)
    scheduler.set_search_properties(tracking.ID_SCORE, "max")
    for t in trials:
        scheduler.on_trial_add(None, t)
    events = sorted((ts, i, e, acc) for i, t in enumerate(trials) for ts, e, acc in t.curve)
    spent, stopped = {t.trial_id: 0.0 for t in trials}, set()
    for _, i, e, acc in events:
        t = trials[i]
        if t.trial_id in stopped:
            continue
        spent[t.trial_id] = e
        if scheduler.on_trial_result(None, t, {"epoch": e, tracking.ID_SCORE: acc}) == TrialScheduler.STOP and e < epochs:
            stopped.add(t.trial_id)
    return spent, {t.trial_id for t in trials} - stopped


def best_arm(trials: list, keep: set) -> tuple[str, float]:
    import pandas as pd

    rows = [{"arm": t.config["arm"], "acc": t.curve[-1][2]} for t in trials if t.trial_id in keep]
    means = pd.DataFrame(rows).groupby("arm")["acc"].mean()
    return means.idxmax(), float(means.max())


def main() -> None:
    sys.path.insert(0, str(ROOT / "sweeps"))
    from emoe.sweep import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", default="sqlite:///bench_asha.db")
    p.add_argument("--storage-path", default="bench_asha_ray")
    p.add_argument("--data-dir", default="demo", help="the demo's data (default: the packaged slice)")
    a = p.parse_args()
    trials = full_grid(a.tracking_uri, a.data_dir, a.storage_path)
    epochs = float(PRESETS["demo"]["trial"]["epochs"])
    full = len(trials) * epochs
    arm, acc = best_arm(trials, {t.trial_id for t in trials})
    print(f"demo grid: {len(trials)} completed trials x {epochs:g} epoch(s), evaluations at epochs "
          f"{sorted({round(e, 3) for t in trials for _, e, _ in t.curve})}")
    print(f"  full grid: best arm {arm} (mean id_score {acc:.4f})")
    for scope in ("arm", "global"):
        spent, finished = replay(trials, scope, a.data_dir, epochs)
        b_arm, b_acc = best_arm(trials, finished)
        print(f"  ASHA scope {scope:<6}: {sum(spent.values()) / full:.2f} of the trial-epochs, "
              f"{len(trials) - len(finished)} trial(s) stopped; best arm {b_arm} (mean id_score {b_acc:.4f}), "
              f"{'the same' if b_arm == arm else 'NOT the same'} as the full grid")


if __name__ == "__main__":
    main()
