"""ID and OOD accuracy per arm, Friedman ranks and significance, from a sweep's MLflow experiment.

    python analysis/friedman.py --experiment emoe-clustering [--tracking-uri sqlite:///mlflow.db] [--out DIR]

A thin script over ``emoe.analysis`` (see ``emoe/analysis/cli.py``).
"""

import sys

from emoe.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
