"""Clustering ablation: how the FFN's neurons are split into experts (plus the dense baseline)."""

import emoe.sweep as sweep

ABLATION = sweep.Ablation.over("clustering", ["constrained", "kmeans", "hierarchical", "spectral", "random"])

if __name__ == "__main__":
    sweep.main(ABLATION)
