"""The Hugging Face Hub from here: can it be reached, and what does its local cache hold.

Offline, ``transformers`` and ``datasets`` retry the Hub for half a minute before they fall back on the cache or fail
(and ``huggingface_hub`` asks it for more than the files: even a ``local_files_only`` load fetches its agent registry).
``unreachable`` answers in at most a couple of seconds (the libraries' own ``HF_HUB_OFFLINE``, else one TCP
connection to the Hub's endpoint); loaders run inside ``cache_only``, the libraries' own offline mode, so a cached
model or dataset loads at once and a missing one is refused at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

CONNECT_TIMEOUT_S = 2.0


@functools.cache
def unreachable() -> str | None:
    """Why the Hub cannot be reached (``"HF_HUB_OFFLINE is set"``, or the failed connection), or None when it can.
    Asked once per process."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES:
        return "HF_HUB_OFFLINE is set"  # NOTE: also read from the environment: it may be set after the import
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(host):  # through a proxy, the proxy is what must answer
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname, p.port or 8080
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"no connection to {host}:{port}: {e.strerror or type(e).__name__}"
    return None


def is_local(name_or_path: str | Path) -> bool:
    """Whether a model name is a local directory (which the Hub never sees)."""
    return Path(name_or_path).expanduser().is_dir()


def looks_like_path(name: str) -> bool:
    """A model or data name that can only be a local path: ``./x``, ``../x``, ``/x``, ``~/x``, or anything that is no
    valid Hub repo id (``org/name`` at most; huggingface_hub's own rule)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("./", "../", "/", "~")) or name in (".", "..") or (os.altsep and os.altsep in name) \
            or (os.sep != "/" and os.sep in name):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def model_cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model ``repo_id`` (its ``config.json``)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


@contextlib.contextmanager
def cache_only(name_or_path: str | Path | None = None):
    """The Hub's libraries in their own offline mode for the block when the Hub is unreachable (what
    ``HF_HUB_OFFLINE=1`` sets at their import): ``huggingface_hub`` then makes no request (``transformers`` reads it
    as ``local_files_only=True``), and ``datasets`` reads its cache; a cached model or dataset loads at once, a
    missing one is refused at once. A no-op while the Hub is reachable, or for ``name_or_path`` a local directory
    (the Hub is then not even asked)."""
    if (name_or_path is not None and is_local(name_or_path)) or unreachable() is None:
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
