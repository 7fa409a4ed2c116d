"""Clustering ablation: how the FFN's neurons are split into experts (plus the dense baseline)."""

from emoe.sweep import Ablation, main

ABLATION = Ablation.over("clustering", ["constrained", "kmeans", "hierarchical", "spectral", "random", "contiguous"])

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
