"""Sources of variance: the paper's EMoE with its clustering seed crossed with the data order's seed; the training
seed and the learning rate come from the grid (--seeds, --learning-rates), and the report splits each arm's spread
among the four (a crossed random-effects model).

The same as `emoe sweep variance` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["variance"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
