"""Side-by-side timing: candidates run interleaved (A B A B ...), so machine noise hits all of them alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def compare(candidates: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each candidate, measured in interleaved rounds after ``warmup`` rounds; the
    order alternates between rounds (A B, B A, ...) so that neither candidate always runs first."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(warmup + repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            candidates[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def ratio_line(label: str, value: float, target: float | None = None, lower_is_better: bool = True) -> str:
    if target is None:
        return f"{label}: {value:.3f}"
    ok = value <= target if lower_is_better else value >= target
    return f"{label}: {value:.3f} (target {'<=' if lower_is_better else '>='} {target}: {'met' if ok else 'NOT met'})"
