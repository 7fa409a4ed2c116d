"""A crossing of any factors, declared on the command line or in a design file; no code to write.

    python sweeps/crossing.py --factor clustering=constrained,kmeans --factor gate=avg_keys,centroid [sweep flags]
    python sweeps/crossing.py --design my_design.toml [sweep flags]

One arm per combination of the factors' values (named by its values joined with ``+``, e.g. ``kmeans+centroid``),
plus the dense baseline arm (``--no-baseline`` leaves it out). Tasks are crossed with ``--tasks``, seeds and learning
rates as in every sweep. A design file is TOML::

    name = "clustering-x-gate"          # optional: the experiment is emoe-<name>
    baseline = true                     # optional
    [factors]
    clustering = ["constrained", "kmeans"]
    gate = ["avg_keys", "centroid"]
    layers = [[10], [-2, -1]]

An invalid combination (e.g. top_k above num_experts) is refused before Ray starts, naming the arm and its knobs.
Resume with ``--resume DIR`` (the sweep's own design is read from DIR).
"""

import argparse
import sys

from emoe.sweep import Ablation, main
from emoe.sweep.design import check_factors, crossing_from_file, parse_factor


def design_from_args(argv: list[str]) -> tuple[Ablation, list[str]]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--factor", action="append", default=[])
    p.add_argument("--design")
    p.add_argument("--name")
    p.add_argument("--no-baseline", action="store_true")
    known, rest = p.parse_known_args(argv)
    if known.design and known.factor:
        raise ValueError("--design and --factor both given; declare the factors in one place")
    name, baseline = known.name, not known.no_baseline
    if known.design:
        factors, file_name, file_baseline = crossing_from_file(known.design)
        name, baseline = name or file_name, baseline and file_baseline
    else:
        factors = dict(parse_factor(f) for f in known.factor)
        if len(factors) != len(known.factor):
            raise ValueError("--factor names a knob twice; give each knob's values in one --factor")
    if not factors:
        if "--resume" in rest:  # the sweep's own design is read from its directory
            return Ablation(name or "crossing", {"dense": {"method": "dense"}}, ""), rest
        if "-h" in rest or "--help" in rest:
            print(__doc__)
            return Ablation(name or "crossing", {"dense": {"method": "dense"}}, ""), rest
        raise ValueError("declare the crossing: --factor KNOB=V1,V2 (repeatable) or --design FILE.toml")
    return Ablation.cross(check_factors(factors), name=name, baseline=baseline), rest


if __name__ == "__main__":
    try:
        design, rest = design_from_args(sys.argv[1:])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(design, rest))
