"""Gate ablation: how each expert's gate vector is derived (plus the dense baseline)."""

import emoe.sweep as sweep

ABLATION = sweep.Ablation.over("gate", ["avg_keys", "centroid", "avg_values", "random", "learned"])

if __name__ == "__main__":
    sweep.main(ABLATION)
