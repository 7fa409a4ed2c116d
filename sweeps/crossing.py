"""A crossing of any factors, declared on the command line or in a design file; no code to write.

    python sweeps/crossing.py --factor clustering=constrained,kmeans --factor gate=avg_keys,centroid [sweep flags]
    python sweeps/crossing.py --design my_design.toml [sweep flags]

The same as ``emoe sweep --factor ...`` / ``emoe sweep my_design.toml`` (``emoe.sweep.ablations.crossing``).
"""

import sys

from emoe.sweep import main
from emoe.sweep.ablations import crossing

if __name__ == "__main__":
    try:
        design, rest = crossing(sys.argv[1:])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(design, rest))
