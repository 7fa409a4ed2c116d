"""MLflow tracking: the schema (``schema``), runs (``runs``), a sweep's on-disk records (``records``), the
driver-side Tune callback (``callback``) and the backfill from Ray's records (``backfill``, ``python -m emoe.sync``).

The schema's names and the run helpers are re-exported here: ``from emoe import tracking; tracking.ID_SCORE``.
"""

from emoe.tracking.runs import (SECRET_ENV, TrialRun, check_tracking_uri, client, close_runs, create_sweep_run,
                                get_or_create_experiment, git_commit, open_trial_run, param_value, record_look, redact)
from emoe.tracking.schema import *  # noqa: F401,F403  (every name of the schema)
from emoe.tracking.schema import __all__ as _schema_names

__all__ = ["SECRET_ENV", "TrialRun", "check_tracking_uri", "client", "close_runs", "create_sweep_run",
           "get_or_create_experiment", "git_commit", "open_trial_run", "param_value", "record_look", "redact", *_schema_names]
