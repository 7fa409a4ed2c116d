"""Gate ablation: how each expert's gate vector is derived (plus the dense baseline).

The same as `emoe sweep gating` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["gating"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
