"""A rough estimate of a sweep's wall time, for the dry run: the trials' arithmetic (6 x parameters x training
tokens, 2 x parameters x evaluation tokens) at a speed measured on this machine, times the waves of trials that
the resources allow. Good to a factor of about two; early stopping only makes it shorter."""

from __future__ import annotations

import math
import time

from emoe.sweep.plan import Plan, Workload

# Share of a plain matmul's speed that a whole training step reaches on a CPU (attention, activations, optimiser,
# data loading), calibrated on the demo sweep (MiniLM, 2 CPUs per trial): 48 s per trial measured.
CPU_EFFICIENCY = 0.35
SETUP_S = 6.0  # per trial: model load, conversion (cached partitions), tokenisation (cached)


def matmul_flops(threads: int, size: int = 512, seconds: float = 0.3) -> float:
    """This machine's fp32 matmul speed (FLOP/s) with ``threads`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        return 2 * size ** 3 * n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


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
    per_trial = SETUP_S + flops / (matmul_flops(int(s.cpus_per_trial)) * CPU_EFFICIENCY)
    at_once = max(1, min(int(cpus // s.cpus_per_trial), s.max_concurrent or plan.n_trials, plan.n_trials))
    total = math.ceil(plan.n_trials / at_once) * per_trial
    where = "this machine" if s.address is None else "this machine's CPUs (the cluster's are not known before it runs)"
    return (f"estimate: about {_duration(per_trial)} per trial, {at_once} at a time on {where}: about "
            f"{_duration(total)} in all without early stopping ({flops / 1e12:.1f} TFLOP per trial; rough, +-2x)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
