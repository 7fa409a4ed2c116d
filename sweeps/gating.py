"""Gate ablation: how each expert's gate vector is derived (plus the dense baseline)."""

from emoe.sweep import Ablation, main

ABLATION = Ablation.over("gate", ["avg_keys", "centroid", "avg_values", "random", "learned"], name="gating")

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
