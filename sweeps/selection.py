"""Expert-selection analysis (the paper's Fig. 3): the top-k experts, the k lowest-scoring ones, all but the top k.

The same as `emoe sweep selection` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["selection"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
