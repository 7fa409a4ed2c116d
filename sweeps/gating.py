"""Gate ablation: how each expert's gate vector is derived (plus the dense baseline)."""

from emoe.sweep import Ablation, main

ABLATION = Ablation.over("gate", ["avg_keys", "centroid", "avg_values", "random", "learned", "learned_avg_keys"],
                         name="gating")

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
