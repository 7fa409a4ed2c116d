"""``python -m emoe.sync``: backfill MLflow from Ray's records (see ``emoe.tracking.backfill``)."""

import sys

from emoe.tracking.backfill import main

if __name__ == "__main__":
    sys.exit(main())
