"""Clustering ablation: how the FFN's neurons are split into experts (plus the dense baseline).

The same as `emoe sweep clustering` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["clustering"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
