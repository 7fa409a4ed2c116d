"""Dense-to-MoE constructions: EMoE's key clustering, MoEfication's co-activation graph split, CMoE's split (with and
without its shared experts), the random split; every one routed by avg-k, plus the dense baseline.

The same as `emoe sweep constructions` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["constructions"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
