"""Init-type ablation: pre-trained vs random weights, each dense and EMoE (the dense arms are the baselines).

The same as `emoe sweep pretraining` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["pretraining"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
