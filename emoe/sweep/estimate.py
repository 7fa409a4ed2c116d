"""A rough estimate of a sweep's wall time, for the dry run: the trials' arithmetic (6 x parameters x training
tokens, 2 x parameters x evaluation tokens) at this machine's matmul speed (the best of several short
measurements, which a momentary load does not swing), times the waves of trials that the resources allow. Good to a
factor of about two, which it states; early stopping only makes it shorter."""

from __future__ import annotations

import math
import time

from emoe.sweep.plan import Plan, Workload

# Share of a plain matmul's speed that a whole training step reaches on a CPU (attention, activations, optimiser,
# data loading), calibrated on the demo sweep (MiniLM, 2 CPUs per trial): 48 s per trial measured.
CPU_EFFICIENCY = 0.35
SETUP_S = 6.0  # per trial: model load, conversion (cached partitions), tokenisation (cached)


def matmul_flops(threads: int, size: int = 512, repeats: int = 9, seconds: float = 0.05) -> list[float]:
    """This machine's fp32 matmul speed (FLOP/s) with ``threads`` threads, measured ``repeats`` times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        speeds = []
        for _ in range(repeats):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                a @ b
                n += 1
            speeds.append(2 * size ** 3 * n / (time.perf_counter() - start))
        return speeds
    finally:
        torch.set_num_threads(before)


def machine_speed(speeds: list[float]) -> tuple[float, float]:
    """``(speed, slowdown)``: the fastest of the repeated measurements (load only ever slows a measurement, so the
    best is the machine's own speed: a momentary load on some repeats does not move it) and how much slower the
    median was (the load now: the trials will run that much slower while it lasts)."""
    ordered = sorted(speeds)
    return ordered[-1], ordered[-1] / ordered[len(ordered) // 2]


def trial_flops(plan: Plan, w: Workload) -> float:
    cfg = plan.base
    steps_per_epoch = math.ceil(w.train_examples / cfg["batch_size"])
    evals_per_epoch = 1 + (steps_per_epoch - 1) // cfg["eval_steps"] if cfg["eval_steps"] else 1
    train = 6 * w.params * w.train_examples * w.epochs * w.train_tokens_per_example
    evaluate = 2 * w.params * w.eval_examples * w.epochs * evals_per_epoch * w.eval_tokens_per_example
    return train + evaluate


def estimate(plan: Plan, workloads: dict[str, Workload], cpus: float, gpus: float) -> str:
    """One line: the per-trial and total estimate, or why there is none (GPU trials from a driver without one).

    Args:
        cpus, gpus: what the (local) cluster has; trials run ``min(cpus / cpus_per_trial, gpus / gpus_per_trial)``
            at a time (and at most ``max_concurrent``).
    """
    s = plan.settings
    flops = sum(trial_flops(plan, w) for w in workloads.values()) / len(workloads)  # the mean trial
    gpus_per_trial = s.gpus_per_trial if s.gpus_per_trial is not None else (1.0 if gpus >= 1 else 0.0)
    if gpus_per_trial:
        return (f"estimate: {flops / 1e12:.1f} TFLOP per trial on GPUs; no time estimate (measured on CPUs only)")
    speed, slowdown = machine_speed(matmul_flops(int(s.cpus_per_trial)))
    per_trial = SETUP_S + flops / (speed * CPU_EFFICIENCY)
    at_once = max(1, min(int(cpus // s.cpus_per_trial), s.max_concurrent or plan.n_trials, plan.n_trials))
    total = math.ceil(plan.n_trials / at_once) * per_trial
    where = "this machine" if s.address is None else "this machine's CPUs (the cluster's are not known before it runs)"
    load = f"; the machine is loaded now: {slowdown:.1f}x slower while that lasts" if slowdown > 1.25 else ""
    return (f"estimate: about {_duration(per_trial)} per trial, {at_once} at a time on {where}: about "
            f"{_duration(total)} in all without early stopping, between {_duration(total / 2)} and "
            f"{_duration(total * 2)} (the per-trial model is calibrated on one sweep to within 2x; the speed is this "
            f"machine's best of 9 measurements{load}; {flops / 1e12:.1f} TFLOP per trial)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
