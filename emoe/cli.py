"""``emoe``: the one command, installed with the package.

    emoe sweep clustering --preset demo          # an ablation of the registry (emoe.sweep.ablations), any directory
    emoe sweep --factor gate=avg_keys,centroid   # a crossing of any factors; or emoe sweep my_design.toml
    emoe analyse --experiment emoe-clustering    # the report: tables, tests, figures
    emoe train --task sst2 ...                   # one trial
    emoe evaluate --experiment ... --ood-sets .. # kept models on more sets, no retraining
    emoe sync --storage-path ray_results         # rebuild MLflow from the sweep's records

Each subcommand has its own ``--help``.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "sweep": "run an ablation (a name from the registry, a design file, or --factor KNOB=V1,V2 crossings)",
    "analyse": "the report of a sweep: ID and OOD tables, the primary analysis, ranks and tests, figures",
    "train": "fine-tune and evaluate one trial",
    "evaluate": "evaluate a sweep's kept models on more OOD sets, without retraining",
    "sync": "write (or rebuild) a sweep's MLflow runs from its records",
}


def usage() -> str:
    from emoe.sweep.ablations import ABLATIONS

    width = max(map(len, COMMANDS))
    return "\n".join(["usage: emoe <command> [flags]   (emoe <command> --help for its flags)", "", "commands:"]
                     + [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
                     + ["", f"ablations (emoe sweep <name>): {', '.join(ABLATIONS)}"])


def sweep(argv: list[str]) -> int:
    from emoe.sweep import main as sweep_main
    from emoe.sweep.ablations import ABLATIONS, crossing

    name = argv[0] if argv and not argv[0].startswith("-") else None
    rest = argv[1:] if name else argv
    try:
        if name in ABLATIONS:
            design = ABLATIONS[name]
        elif name and name.endswith(".toml"):
            design, rest = crossing(rest, design_file=name)
        elif name:
            raise ValueError(f"unknown ablation {name!r}; valid choices: {', '.join(ABLATIONS)}, a design file "
                             "(.toml), or --factor KNOB=V1,V2")
        elif any(a in ("-h", "--help") for a in rest) and not any(a.startswith("--factor") or a == "--design"
                                                                   for a in rest):
            print(usage())
            return 0
        else:
            design, rest = crossing(rest)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.argv[0] = f"emoe sweep {name or ''}".rstrip()
    return sweep_main(design, rest)


def main(argv: list[str] | None = None) -> int:
    name = sys.argv[0]
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    finally:
        sys.argv[0] = name  # the subcommand's name was for its usage lines only


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; valid choices: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "sweep":
        return sweep(rest)
    sys.argv[0] = f"emoe {command}"
    if command == "analyse":
        from emoe.analysis.cli import main as run
    elif command == "train":
        from emoe.train import main as run
    elif command == "evaluate":
        from emoe.evaluate import main as run
    else:
        from emoe.tracking.backfill import main as run
    return run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
