"""Where emoe keeps what it can recompute (partitions, tokenised data): ``$EMOE_CACHE_DIR`` or ``~/.cache/emoe``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_ENV = "EMOE_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "emoe")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_once(path: Path, write) -> Path:
    """``path`` (a folder) made once by ``write(folder)``: written aside, then renamed into place, so that concurrent
    processes never read a half-written one (the one that loses the race drops its identical copy)."""
    import shutil

    if not path.is_dir():
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".writing-"))
        write(staging / path.name)
        try:
            (staging / path.name).rename(path)
        except OSError:  # another process put its copy in place first
            pass
        shutil.rmtree(staging, ignore_errors=True)
    return path


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` so that a concurrent reader sees the old file or the whole new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
