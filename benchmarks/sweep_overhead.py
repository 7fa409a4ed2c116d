"""Item 4: what the sweep machinery costs. The same trials run (a) directly, one after another in one process with
the data loaded once, and (b) as a Tune sweep (local Ray, one trial at a time, MLflow logging, Ray's records, the
trial's own files); the figure is the extra seconds per trial.

    python benchmarks/sweep_overhead.py [--data-dir demo] [--threads 2]

The clustering ablation on the packaged MiniLM with small data (caches warm: partitions and tokenisation are
computed by a first untimed direct pass). Ray's start is reported apart: it is paid once per sweep, not per trial.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(ROOT / "sweeps"))
    import ray
    from clustering import ABLATION

    from emoe import hparams
    from emoe.sweep import SweepSettings, make_plan, run_sweep
    from emoe.sweep.trainable import quiet_libraries
    from emoe.train import load_trial_data, train_and_evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="demo", help="SST-2 and its OOD sets (default: the packaged slice)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    quiet_libraries()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        settings = SweepSettings(
            trial={"model": "minilm", "data_dir": a.data_dir, "max_train_samples": 256, "max_eval_samples": 100,
                   "max_length": 64, "batch_size": 16, "eval_steps": None, "epochs": 1},
            seeds=(0,), learning_rates=(1e-4,), scheduler="none", max_concurrent=1, cpus_per_trial=a.threads,
            storage_path=f"{tmp}/ray", tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        plan = make_plan(ABLATION, settings)
        trials = [hparams.trial_config(plan.trial(arm, s, lr, task)) for task, arm, s, lr in plan.grid()]
        data = load_trial_data(trials[0])
        for t in trials:  # warm every cache (partitions, tokenisation, file system)
            train_and_evaluate(t, data=data)
        start = time.perf_counter()
        for t in trials:
            train_and_evaluate(t, data=data)
        direct = time.perf_counter() - start

        start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")
        ray_start = time.perf_counter() - start
        start = time.perf_counter()
        outcome = run_sweep(ABLATION, settings)
        tuned = time.perf_counter() - start
        ray.shutdown()
        assert outcome.exit_code == 0 and outcome.complete, "the sweep did not complete"
    n = len(trials)
    print(f"\n{n} trials (MiniLM, 256 sentences, 100 per evaluation set, length 64), {a.threads} threads:")
    print(f"  direct, one process: {direct:.1f} s ({direct / n:.1f} s per trial)")
    print(f"  Tune sweep:          {tuned:.1f} s ({tuned / n:.1f} s per trial), plus Ray start {ray_start:.1f} s once")
    extra = (tuned - direct) / n
    print(f"  extra per trial: {extra:.2f} s (target <= 3: {'met' if extra <= 3 else 'NOT met'}); "
          f"Tune / direct time ratio {tuned / direct:.2f}")


if __name__ == "__main__":
    main()
