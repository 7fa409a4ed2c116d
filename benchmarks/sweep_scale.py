"""Whether the driver, the MLflow logging and the analysis hold a paper-sized grid (the paper tuned 1,785 models).

    python benchmarks/sweep_scale.py [--seeds 12] [--learning-rates 7] [--reports 3] [--concurrent 8]

A 2,016-trial grid (the clustering ablation's first 6 arms, as when first measured, x 4 packaged tasks x 12 seeds x 7 learning rates, ASHA per
arm and seed as in a real sweep) runs through the real ``run_sweep``: local Ray, the MLflow callback into a fresh
SQLite store, the trial files. Each trial runs a trivial trainable instead of training (``trainable=``): it reports
``--reports`` evaluations of made-up scores with the real metric names (ID score and metrics, two OOD sets, train
loss), writing its final metrics as a real trial does. So the time is the machinery's alone. Printed:

- the driver's time per trial (wall time of the sweep over trials; with ``--concurrent`` trials at once, that is the
  driver's cost per trial, as the trials themselves cost nothing);
- the driver's resident memory at each quarter of the sweep's time (a sampling thread): flat means the driver does not
  grow with the grid (``--wave 100000``: the whole grid in one Tuner fit, to compare with the default waves);
- the time ``python analysis/friedman.py`` needs to read, select, rank and write the report of the whole sweep
  (``emoe.analysis.cli.main``, learning curves and HTML included).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sst2", "rte", "mrpc", "stsb")  # the tasks whose data ships with the package (emoe/demo_data)


def trivial_trainable(config: dict, setup) -> None:
    """Made-up scores (a function of the arm, seed, rate and task) reported ``_reports`` times, with the names and
    the final-metrics file of a real trial."""
    import hashlib

    from ray import tune

    from emoe.data import get_task
    from emoe.tracking import schema
    from emoe.tracking.records import TrialFiles

    cfg = setup.record.trial_config(config)
    files = TrialFiles.of_cell(setup.root, config["arm"], cfg)
    files.start_attempt(config["arm"], cfg)
    key = f"{config['arm']}/{cfg['seed']}/{cfg['learning_rate']}/{cfg['task']}".encode()
    noise = int(hashlib.sha256(key).hexdigest()[:8], 16) / 16 ** 8
    task = get_task(cfg["task"])
    sets = list(task.ood)[:2]
    epochs = cfg["epochs"]
    for epoch in range(1, epochs + 1):
        score = 0.5 + 0.3 * noise * epoch / epochs
        metrics = {schema.EPOCH: float(epoch), schema.STEP: epoch * 10, schema.TRAIN_LOSS: 1.0 - score / 2,
                   schema.ID_SCORE: score, schema.CURRENT_ID_SCORE: score,
                   **{schema.id_metric(m): score for m in task.metrics},
                   **{schema.ood_score_metric(s): score - 0.1 * (i + 1) for i, s in enumerate(sets)},
                   **{schema.ood_metric(s, m): score - 0.1 * (i + 1) for i, s in enumerate(sets) for m in task.metrics},
                   schema.OOD_SCORE: score - 0.15}
        files.append_report(metrics)  # as a real trial: every metric to its records, Tune what it schedules on
        if epoch == epochs:
            files.save_final(metrics)
        tune.report(schema.scheduled(metrics))


def resident_mb() -> float:
    """This process's resident memory (Linux: /proc; elsewhere its peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler(threading.Thread):
    """The driver's resident memory every ``every`` seconds."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.samples, self.done = every, [], threading.Event()

    def run(self):
        while not self.done.wait(self.every):
            self.samples.append((time.perf_counter(), resident_mb()))


def main() -> None:
    sys.path.insert(0, str(ROOT / "sweeps"))
    from clustering import ABLATION

    from emoe import tracking
    from emoe.sweep import Ablation
    from emoe.analysis import cli as analysis_cli
    from emoe.sweep import SweepSettings, run_sweep

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=12, help="seeds (default 12: 2,016 trials with the defaults)")
    p.add_argument("--learning-rates", type=int, default=7)
    p.add_argument("--reports", type=int, default=3, help="evaluations per trial (its epochs)")
    p.add_argument("--concurrent", type=int, default=8, help="trials at once (CPUs per trial: 2 / this)")
    p.add_argument("--keep", help="keep the store and Ray results in this folder (default: a temporary one)")
    p.add_argument("--wave", type=int, help="cells per Tuner fit (default: emoe.sweep.runner.WAVE; a number above "
                                           "the grid's size: one fit, as before waves)")
    a = p.parse_args()
    if a.wave:
        from emoe.sweep import runner

        runner.WAVE = a.wave
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(a.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{where}/mlflow.db"
        cpus = min(os.cpu_count() or 2, 2)
        settings = SweepSettings(
            trial={"model": "minilm", "data_dir": "demo", "epochs": a.reports, "max_train_samples": 8,
                   "max_eval_samples": 8, "ood_sets": ("imdb", "yelp", "mrpc", "qqp", "rte", "sick")},
            tasks=TASKS, seeds=tuple(range(a.seeds)),
            learning_rates=tuple(1e-5 * 1.5 ** i for i in range(a.learning_rates)),
            cpus_per_trial=cpus / a.concurrent, max_concurrent=a.concurrent, checkpoint_every=None,
            storage_path=str(where / "ray"), tracking_uri=uri, experiment="emoe-bench-scale")
        import ray

        start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")
        ray_start = time.perf_counter() - start
        sampler = MemorySampler()
        sampler.start()
        start = time.perf_counter()
        # the six arms the figures in the README were measured with (contiguous joined the ablation later)
        design = Ablation(ABLATION.name, {k: v for k, v in ABLATION.arms.items() if k != "contiguous"},
                          ABLATION.factor)
        outcome = run_sweep(design, settings, trainable=trivial_trainable)
        wall = time.perf_counter() - start
        sampler.done.set()
        ray.shutdown()
        n = len(outcome.trials)
        children = tracking.client(uri).search_runs(
            [outcome.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'trial'", max_results=50_000)
        assert len(children) == n and all(r.info.status == "FINISHED" and tracking.OUTCOME in r.data.tags
                                          for r in children), "not every trial has its finished MLflow run"
        ends = sorted(r.info.end_time for r in children)
        steady = (ends[-1] - ends[len(ends) // 10]) / 1000 / max(1, len(ends) - 1 - len(ends) // 10)
        start = time.perf_counter()
        code = analysis_cli.main(["--experiment", "emoe-bench-scale", "--tracking-uri", uri,
                                  "--out", str(where / "report")])
        analysis = time.perf_counter() - start
    assert code == 0 and outcome.complete, "the sweep or its analysis failed"
    ended = {t.outcome for t in outcome.trials}
    memory = sampler.samples
    quarters = [memory[min(len(memory) - 1, int(q * (len(memory) - 1)))][1] for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    print(f"\n{n} trials ({len(design.arms)} arms x {len(TASKS)} tasks x {a.seeds} seeds x {a.learning_rates} learning rates), "
          f"{a.reports} reports each, {a.concurrent} at once, outcomes {sorted(ended)}:")
    print(f"  sweep wall time {wall:.0f} s ({wall / n * 1000:.0f} ms per trial), plus Ray's start {ray_start:.0f} s once; "
          f"after the first tenth of the trials, one trial ended every {steady * 1000:.0f} ms (the machinery's cost "
          "per trial: driver, callback, Ray and its workers sharing the CPUs; the trials themselves cost nothing)")
    print("  driver memory (RSS, MB) at 0, 1/4, 1/2, 3/4 and the end of the sweep's time: "
          + ", ".join(f"{m:.0f}" for m in quarters)
          + f"; growth from 1/4 to the end {quarters[-1] - quarters[1]:+.0f} MB "
          f"({(quarters[-1] - quarters[1]) / (0.75 * n) * 1000:.0f} kB per trial)")
    print(f"  analysis of the sweep (read {n} runs, select, rank, test, write the report with curves): "
          f"{analysis:.1f} s")


if __name__ == "__main__":
    main()
