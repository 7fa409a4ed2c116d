"""Expert-count ablation: N in {4, 8, 16, 32, 64} x k/N in {1/8, 1/4, 1/2}, valid (integer k >= 1) pairs only.

The same as `emoe sweep experts` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["experts"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
