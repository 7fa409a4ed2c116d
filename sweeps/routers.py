"""Routers on EMoE's experts: avg-k (the paper), EMoE-learn's cosine router, MoEfication's MLP predictor, CMoE's analytic
router; plus the dense
baseline.

The same as `emoe sweep routers` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["routers"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
